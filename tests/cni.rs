//! The CNI engine against real plugins in real network namespaces (run as root).
//!
//! The Debian plugins (`bridge`, `host-local`, `macvlan`, `tuning`, `portmap` from
//! `/usr/lib/cni`) do the real work; the scripts in `tests/plugins/` play broken plugins (the
//! script is the plugin: the invoker executes it directly, as it would any binary) and a
//! `recorder` that logs exactly what a plugin receives. Every test owns its conf dir, cache dir,
//! host-local data dir, netns and host links, and removes them even when it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use podagent::cni::{Cni, CniError, Invoker, Op, Settings, Target};
use serde_json::{Value, json};
use tempfile::TempDir;
use testkit::netns::{TestNetns, run_ip, unique_name};
use testkit::prereq;

const DEBIAN_CNI: &str = "/usr/lib/cni";

/// kactus's interface name for a network (the annotation module owns the real one).
fn ifname(network: &str) -> String {
    let digest = Md5::digest(network.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("net{}", &hex[..12])
}

fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugins")
}

/// One test's private CNI world: conf, cache and IPAM dirs, and host links to delete.
struct Lab {
    tmp: TempDir,
    timeout: Duration,
    host_links: Vec<String>,
}

impl Lab {
    fn new() -> Lab {
        prereq::require_root();
        prereq::require_command("ip", "iproute2");
        prereq::require_command("jq", "jq");
        prereq::require_path(
            &Path::new(DEBIAN_CNI).join("bridge"),
            "containernetworking-plugins",
        );
        let tmp = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(tmp.path().join("net.d")).expect("conf dir");
        Lab {
            tmp,
            timeout: Duration::from_secs(20),
            host_links: Vec::new(),
        }
    }

    fn conf_dir(&self) -> PathBuf {
        self.tmp.path().join("net.d")
    }

    fn cache_dir(&self) -> PathBuf {
        self.tmp.path().join("state/cni")
    }

    fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("ipam")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn settings(&self) -> Settings {
        Settings {
            conf_dir: self.conf_dir(),
            bin_dirs: vec![plugins_dir(), DEBIAN_CNI.into()],
            vendor: None,
            timeout: self.timeout,
            env_passthrough: vec!["HOME".into(), "_CNI_LOGGING_LEVEL".into()],
            cache_dir: self.cache_dir(),
            host_root: None,
        }
    }

    fn invoker(&self) -> Invoker {
        Invoker::new(self.settings())
    }

    fn write_conf(&self, file: &str, conf: &Value) {
        std::fs::write(self.conf_dir().join(file), conf.to_string()).expect("write conf");
    }

    /// A host link name the lab deletes on drop (the bridge plugin creates bridges itself).
    fn host_link(&mut self, tag: &str) -> String {
        let name = unique_name(tag);
        self.host_links.push(name.clone());
        name
    }

    /// host-local handing out exactly one address, so a second lease is only possible after
    /// the first was released.
    fn one_address_ipam(&self, subnet: u8) -> Value {
        json!({
            "type": "host-local",
            "dataDir": self.data_dir(),
            "ranges": [[{
                "subnet": format!("198.18.{subnet}.0/24"),
                "rangeStart": format!("198.18.{subnet}.10"),
                "rangeEnd": format!("198.18.{subnet}.10"),
            }]],
        })
    }

    fn bridge_plugin(&mut self, subnet: u8) -> Value {
        json!({
            "type": "bridge",
            "bridge": self.host_link("br"),
            "isGateway": false,
            "ipMasq": false,
            "ipam": self.one_address_ipam(subnet),
        })
    }

    /// A bridge config as a single-plugin `.conf`.
    fn bridge_conf(&mut self, version: &str, name: &str, subnet: u8) -> Value {
        let mut conf = self.bridge_plugin(subnet);
        conf["cniVersion"] = json!(version);
        conf["name"] = json!(name);
        conf
    }

    /// The addresses host-local currently leases on `network`.
    fn leases(&self, network: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.data_dir().join(network)) else {
            return Vec::new();
        };
        let mut leases: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        leases.sort();
        leases
    }

    fn cache_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.cache_dir())
            .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default()
    }

    /// The JSON lines the recorder plugin wrote.
    fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.file("record.log")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("recorder line is JSON"))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for link in &self.host_links {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
    }
}

static SANDBOX: AtomicU32 = AtomicU32::new(0);

fn attachment(netns: &Path, network: &str) -> Target {
    let n = SANDBOX.fetch_add(1, Ordering::Relaxed);
    Target {
        sandbox_id: format!("{:08x}{n:08x}", std::process::id()),
        netns: netns.to_owned(),
        ifname: ifname(network),
        pod_namespace: "default".into(),
        pod_name: format!("pod-{n}"),
        pod_uid: format!("c6a6e0c4-0000-4000-8000-{n:012x}"),
        network: network.into(),
        if_mac: None,
        config: None,
        requested: None,
    }
}

/// `addr/prefix` of every address on `link` inside the namespace.
fn addresses(netns: &TestNetns, link: &str) -> Vec<String> {
    netns
        .links()
        .iter()
        .filter(|l| l["ifname"] == link)
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
        .collect()
}

fn mac(netns: &TestNetns, link: &str) -> Option<String> {
    let links = netns.links();
    let link = links.iter().find(|l| l["ifname"] == link)?;
    link["address"].as_str().map(str::to_owned)
}

fn has_link(netns: &TestNetns, link: &str) -> bool {
    netns.link_names().iter().any(|l| l == link)
}

#[tokio::test]
async fn bridge_0_3_1_attaches_detaches_and_releases_the_address() {
    let mut lab = Lab::new();
    let netns = TestNetns::new();
    let conf = lab.bridge_conf("0.3.1", "pa-br031", 201);
    lab.write_conf("10-bridge.conf", &conf);
    let cni = lab.invoker();
    let a = attachment(&netns.path(), "green");
    assert_eq!(a.ifname, "net9f27410725ab");

    let result = cni.add(&a).await.expect("ADD");
    assert_eq!(addresses(&netns, &a.ifname), ["198.18.201.10/24"]);
    assert_eq!(result.cni_version, "0.3.1");
    assert_eq!(
        result.ips_of(&a.ifname),
        ["198.18.201.10/24".parse().unwrap()]
    );
    assert_eq!(result.mac_of(&a.ifname), mac(&netns, &a.ifname).as_deref());
    assert_eq!(lab.leases("pa-br031"), ["198.18.201.10"]);

    cni.del(&a).await.expect("DEL");
    assert!(!has_link(&netns, &a.ifname), "{:?}", netns.link_names());
    assert_eq!(lab.leases("pa-br031"), Vec::<String>::new());
    cni.del(&a).await.expect("DEL again");

    // The pool has one address: a new ADD only succeeds because DEL released it.
    let b = attachment(&netns.path(), "green");
    let again = cni.add(&b).await.expect("ADD after DEL");
    assert_eq!(
        again.ips_of(&b.ifname),
        ["198.18.201.10/24".parse().unwrap()]
    );
    cni.del(&b).await.expect("final DEL");
}

#[tokio::test]
async fn bridge_1_0_0_checks_re_adds_after_drift_and_dels_on_a_deleted_netns() {
    let mut lab = Lab::new();
    let netns = TestNetns::new();
    let conf = lab.bridge_conf("1.0.0", "pa-br100", 202);
    lab.write_conf("10-bridge.conf", &conf);
    let cni = lab.invoker();
    let a = attachment(&netns.path(), "data");

    let result = cni.add(&a).await.expect("ADD");
    assert_eq!(result.cni_version, "1.0.0");
    assert_eq!(addresses(&netns, &a.ifname), ["198.18.202.10/24"]);

    // The interface deleted by hand: the next ADD first releases the stale lease (the pool
    // has a single address) and attaches it again.
    netns.ip(&["link", "del", &a.ifname]);
    let again = cni
        .add(&a)
        .await
        .expect("ADD after the interface was deleted by hand");
    assert_eq!(
        again.ips_of(&a.ifname),
        ["198.18.202.10/24".parse().unwrap()]
    );
    assert_eq!(addresses(&netns, &a.ifname), ["198.18.202.10/24"]);
    assert_eq!(lab.cache_files().len(), 1);

    drop(netns);
    cni.del(&a).await.expect("DEL with the netns gone");
    assert_eq!(lab.leases("pa-br100"), Vec::<String>::new());
    assert_eq!(lab.cache_files(), Vec::<PathBuf>::new());
    cni.del(&a).await.expect("DEL again with the netns gone");
}

#[tokio::test]
async fn add_of_an_interface_that_already_exists_is_an_error() {
    let mut lab = Lab::new();
    let netns = TestNetns::new();
    let conf = lab.bridge_conf("1.0.0", "pa-exists", 207);
    lab.write_conf("10-bridge.conf", &conf);
    let a = attachment(&netns.path(), "green");
    netns.ip(&[
        "link", "add", &a.ifname, "type", "veth", "peer", "name", "pa-peer",
    ]);

    let err = lab
        .invoker()
        .add(&a)
        .await
        .expect_err("ADD over an existing interface");
    match &err {
        CniError::Failed { run, msg, .. } => {
            assert_eq!((run.op, run.plugin.as_str()), (Op::Add, "bridge"));
            assert!(msg.contains("already exists"), "{msg}");
        }
        other => panic!("expected Failed, got {other}"),
    }
    assert_eq!(lab.leases("pa-exists"), Vec::<String>::new());
    assert_eq!(lab.cache_files(), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn conflist_bridge_tuning_portmap_sets_the_requested_mac() {
    prereq::require_command("iptables", "iptables");
    let mut lab = Lab::new();
    let netns = TestNetns::new();
    let bridge = lab.bridge_plugin(203);
    lab.write_conf(
        "10-chain.conflist",
        &json!({
            "cniVersion": "1.0.0",
            "name": "pa-chain",
            "plugins": [
                bridge,
                {"type": "tuning", "capabilities": {"mac": true}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        }),
    );
    let cni = lab.invoker();
    let mut a = attachment(&netns.path(), "red");
    a.if_mac = Some("02:42:c6:12:cb:05".into());

    let result = cni.add(&a).await.expect("ADD through the chain");
    assert_eq!(mac(&netns, &a.ifname).as_deref(), Some("02:42:c6:12:cb:05"));
    assert_eq!(result.mac_of(&a.ifname), Some("02:42:c6:12:cb:05"));
    assert_eq!(
        result.ips_of(&a.ifname),
        ["198.18.203.10/24".parse().unwrap()]
    );

    cni.del(&a).await.expect("DEL through the chain");
    assert!(!has_link(&netns, &a.ifname));
    assert_eq!(lab.leases("pa-chain"), Vec::<String>::new());
}

#[tokio::test]
async fn macvlan_on_a_veth_master_attaches_and_detaches() {
    let mut lab = Lab::new();
    let master = lab.host_link("mv");
    let peer = lab.host_link("mp");
    run_ip(&[
        "link", "add", &master, "type", "veth", "peer", "name", &peer,
    ]);
    run_ip(&["link", "set", &master, "up"]);
    let netns = TestNetns::new();
    lab.write_conf(
        "10-macvlan.conf",
        &json!({
            "cniVersion": "1.0.0",
            "name": "pa-macvlan",
            "type": "macvlan",
            "master": master,
            "mode": "bridge",
            "ipam": lab.one_address_ipam(204),
        }),
    );
    let cni = lab.invoker();
    let a = attachment(&netns.path(), "blue");

    let result = cni.add(&a).await.expect("macvlan ADD");
    assert_eq!(addresses(&netns, &a.ifname), ["198.18.204.10/24"]);
    assert_eq!(result.mac_of(&a.ifname), mac(&netns, &a.ifname).as_deref());
    cni.del(&a).await.expect("macvlan DEL");
    assert!(!has_link(&netns, &a.ifname));
    assert_eq!(lab.leases("pa-macvlan"), Vec::<String>::new());
}

#[tokio::test]
async fn del_after_restart_and_config_change_uses_what_add_used() {
    use std::os::unix::fs::PermissionsExt;
    let mut lab = Lab::new();
    let netns = TestNetns::new();
    let conf = lab.bridge_conf("1.0.0", "pa-cached", 205);
    lab.write_conf("10-bridge.conf", &conf);
    let a = attachment(&netns.path(), "green");
    lab.invoker().add(&a).await.expect("ADD");
    let cached = lab.cache_files();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let mode = std::fs::metadata(&cached[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // The node's config now names another network whose plugin always fails: a DEL through
    // it would fail and leave the interface and the lease behind.
    std::fs::remove_file(lab.conf_dir().join("10-bridge.conf")).unwrap();
    lab.write_conf(
        "00-other.conflist",
        &json!({"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "fault-fail"}]}),
    );
    let restarted = lab.invoker();
    assert_eq!(restarted.primary_config().await.unwrap().name, "other");
    restarted.del(&a).await.expect("DEL from the cache");
    assert!(!has_link(&netns, &a.ifname));
    assert_eq!(lab.leases("pa-cached"), Vec::<String>::new());
    assert_eq!(lab.cache_files(), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn failed_chain_add_is_rolled_back_and_reports_the_plugin_error() {
    let mut lab = Lab::new();
    let netns = TestNetns::new();
    let bridge = lab.bridge_plugin(206);
    lab.write_conf(
        "10-chain.conflist",
        &json!({
            "cniVersion": "1.0.0",
            "name": "pa-rollback",
            "plugins": [bridge, {"type": "fault-fail"}],
        }),
    );
    let cni = lab.invoker();
    let a = attachment(&netns.path(), "green");

    let err = cni.add(&a).await.expect_err("ADD through a failing plugin");
    match &err {
        CniError::Failed {
            run,
            code,
            msg,
            details,
            stderr,
            ..
        } => {
            assert_eq!((run.op, run.plugin.as_str()), (Op::Add, "fault-fail"));
            assert_eq!(*code, Some(7));
            assert_eq!(msg, "invalid network config");
            assert_eq!(details, "fault-fail always refuses");
            assert!(stderr.contains("refusing ADD"), "{stderr}");
        }
        other => panic!("expected Failed, got {other}"),
    }
    assert!(!err.is_retry_later());
    let text = err.to_string();
    assert!(
        text.contains("pa-rollback") && text.contains(&a.ifname),
        "{text}"
    );
    // The bridge's part was undone by the DEL that follows a failed ADD.
    assert!(!has_link(&netns, &a.ifname), "{:?}", netns.link_names());
    assert_eq!(lab.leases("pa-rollback"), Vec::<String>::new());
    assert_eq!(lab.cache_files(), Vec::<PathBuf>::new());
}

/// Writes a one-plugin config of `plugin_type` and runs ADD with it.
async fn add_with(lab: &Lab, plugin_type: &str) -> CniError {
    lab.write_conf(
        "10-fault.conf",
        &json!({
            "cniVersion": "1.0.0",
            "name": "pa-fault",
            "type": plugin_type,
            "pidFile": lab.file("pids"),
        }),
    );
    let a = attachment(Path::new("/var/run/netns/pa-none"), "green");
    lab.invoker()
        .add(&a)
        .await
        .expect_err("ADD with a broken plugin")
}

#[tokio::test]
async fn code_11_is_reported_as_retry_later() {
    let lab = Lab::new();
    let err = add_with(&lab, "fault-retry").await;
    assert!(err.is_retry_later(), "{err}");
    assert!(err.to_string().contains("try again later"), "{err}");
}

/// Pids the hang plugin recorded, one line per run (`<plugin> <child>`).
fn recorded_pids(lab: &Lab) -> Vec<i32> {
    let text = std::fs::read_to_string(lab.file("pids")).unwrap_or_default();
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Waits until none of `pids` exists, not even as a zombie; returns the survivors.
async fn wait_gone(pids: &[i32]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<String> = pids
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .collect();
        if alive.is_empty() || Instant::now() > deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn hung_plugin_and_its_child_are_killed_and_reaped_at_the_timeout() {
    let mut lab = Lab::new();
    lab.timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = add_with(&lab, "fault-hang").await;
    match &err {
        CniError::Timeout { run, after, .. } => {
            assert_eq!(run.plugin, "fault-hang");
            assert_eq!(*after, Duration::from_secs(1));
        }
        other => panic!("expected Timeout, got {other}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // ADD and the DEL that follows it each left a plugin and a child.
    let pids = recorded_pids(&lab);
    assert_eq!(pids.len(), 4, "{pids:?}");
    assert_eq!(wait_gone(&pids).await, Vec::<String>::new());
}

#[tokio::test]
async fn dropping_a_running_add_kills_the_plugin_group() {
    let lab = Lab::new();
    let add = add_with(&lab, "fault-hang");
    let outcome = tokio::time::timeout(Duration::from_secs(2), add).await;
    assert!(outcome.is_err(), "the hang plugin cannot answer");
    let pids = recorded_pids(&lab);
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert_eq!(wait_gone(&pids).await, Vec::<String>::new());
}

#[tokio::test]
async fn ten_megabytes_of_stdout_is_output_too_large() {
    let lab = Lab::new();
    let err = add_with(&lab, "fault-flood").await;
    assert!(matches!(err, CniError::OutputTooLarge { .. }), "{err}");
}

#[tokio::test]
async fn stdout_that_is_not_json_is_bad_output_with_stderr() {
    let lab = Lab::new();
    let err = add_with(&lab, "fault-garbage").await;
    match &err {
        CniError::BadOutput { reason, stderr, .. } => {
            assert!(reason.contains("this is not a CNI result"), "{reason}");
            assert_eq!(stderr, "some log");
        }
        other => panic!("expected BadOutput, got {other}"),
    }
}

#[tokio::test]
async fn exit_0_without_output_is_no_result() {
    let lab = Lab::new();
    let err = add_with(&lab, "fault-silent").await;
    assert!(matches!(err, CniError::NoResult { .. }), "{err}");
}

#[tokio::test]
async fn plugin_killed_by_a_signal_is_reported_with_the_signal() {
    let lab = Lab::new();
    let err = add_with(&lab, "fault-signal").await;
    match &err {
        CniError::Killed { signal, stderr, .. } => {
            assert_eq!(*signal, 9);
            assert!(stderr.contains("about to die"), "{stderr}");
        }
        other => panic!("expected Killed, got {other}"),
    }
}

#[tokio::test]
async fn missing_plugin_names_its_type_and_every_directory_searched() {
    let lab = Lab::new();
    let err = add_with(&lab, "pa-no-such-plugin").await;
    match &err {
        CniError::PluginNotFound { run, searched } => {
            assert_eq!(run.plugin, "pa-no-such-plugin");
            assert_eq!(
                searched,
                &[
                    PathBuf::from("/opt/pa-no-such-plugin/bin"),
                    plugins_dir(),
                    PathBuf::from(DEBIAN_CNI)
                ]
            );
        }
        other => panic!("expected PluginNotFound, got {other}"),
    }
    let text = err.to_string();
    for dir in ["/opt/pa-no-such-plugin/bin", DEBIAN_CNI] {
        assert!(text.contains(dir), "{text}");
    }
}

#[tokio::test]
async fn non_executable_plugin_is_reported_with_its_path() {
    let lab = Lab::new();
    let bin = lab.file("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("pa-noexec"), "#!/bin/sh\nexit 0\n").unwrap();
    let mut settings = lab.settings();
    settings.bin_dirs = vec![bin.clone()];
    lab.write_conf(
        "10-noexec.conf",
        &json!({"cniVersion": "1.0.0", "name": "pa-noexec", "type": "pa-noexec"}),
    );
    let a = attachment(Path::new("/var/run/netns/pa-none"), "green");
    let err = Invoker::new(settings).add(&a).await.expect_err("ADD");
    match &err {
        CniError::NotExecutable { path, .. } => assert_eq!(path, &bin.join("pa-noexec")),
        other => panic!("expected NotExecutable, got {other}"),
    }
}

#[tokio::test]
async fn a_plugin_whose_interpreter_is_missing_says_so_and_what_to_set() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    let bin = lab.file("bin");
    std::fs::create_dir(&bin).unwrap();
    let plugin = bin.join("pa-nointerp");
    std::fs::write(&plugin, "#!/pa-no-such-interpreter\n").unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut settings = lab.settings();
    settings.bin_dirs = vec![bin.clone()];
    lab.write_conf(
        "10-nointerp.conf",
        &json!({"cniVersion": "1.0.0", "name": "pa-nointerp", "type": "pa-nointerp"}),
    );
    let a = attachment(Path::new("/var/run/netns/pa-none"), "green");
    let err = Invoker::new(settings).add(&a).await.expect_err("ADD");
    match &err {
        CniError::MissingInterpreter { path, .. } => assert_eq!(path, &plugin),
        other => panic!("expected MissingInterpreter, got {other}"),
    }
    assert!(err.to_string().contains("cni.host_root"), "{err}");
}

/// `cni.host_root`, as the DaemonSets set it: the (dynamically linked) Debian bridge plugin and
/// host-local are found through the node's own `/opt/cni/bin` and run chrooted into the node's
/// root, so host-local keeps its lease in the node's `/var/lib/cni`.
#[tokio::test]
async fn plugins_run_chrooted_into_the_host_root() {
    let mut lab = Lab::new();
    let netns = TestNetns::new();
    let node_state = lab.file("node-var-lib-cni");
    std::fs::create_dir(&node_state).unwrap();
    let root = testkit::node_root::NodeRoot::build(
        &lab.file("root"),
        &[
            ("/opt/cni/bin", Path::new(DEBIAN_CNI)),
            ("/var/lib/cni", &node_state),
        ],
    );
    let mut conf = lab.bridge_conf("1.0.0", "pa-rooted", 209);
    // host-local's default dataDir, /var/lib/cni/networks: the node's.
    conf["ipam"]
        .as_object_mut()
        .expect("ipam")
        .remove("dataDir");
    lab.write_conf("10-rooted.conf", &conf);
    let mut settings = lab.settings();
    settings.bin_dirs = vec!["/opt/cni/bin".into()];
    settings.host_root = Some(root.path().to_owned());
    let cni = Invoker::new(settings);
    let a = attachment(&netns.path(), "green");

    cni.add(&a).await.expect("ADD in the node's root");
    assert_eq!(addresses(&netns, &a.ifname), ["198.18.209.10/24"]);
    let lease = node_state.join("networks/pa-rooted/198.18.209.10");
    assert!(lease.is_file(), "no lease at {}", lease.display());
    cni.del(&a).await.expect("DEL in the node's root");
    assert!(!has_link(&netns, &a.ifname), "{:?}", netns.link_names());
    assert!(
        !lease.exists(),
        "the DEL did not release {}",
        lease.display()
    );
}

fn recorder(lab: &Lab, tag: &str, extra: Value) -> Value {
    let mut plugin = json!({"type": "recorder", "tag": tag, "recordFile": lab.file("record.log")});
    if let (Value::Object(plugin), Value::Object(extra)) = (&mut plugin, extra) {
        plugin.extend(extra);
    }
    plugin
}

/// (tag, command) of every recorded call, in order.
fn calls(records: &[Value]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            (
                r["tag"].as_str().unwrap().into(),
                r["command"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[tokio::test]
async fn chain_gets_name_version_capabilities_prev_result_and_a_minimal_env() {
    let lab = Lab::new();
    lab.write_conf(
        "10-rec.conflist",
        &json!({
            "cniVersion": "1.0.0",
            "name": "pa-rec",
            "plugins": [
                recorder(&lab, "a", json!({"capabilities": {"mac": true, "portMappings": true}})),
                recorder(&lab, "b", json!({"name": "mine", "cniVersion": "0.3.0"})),
            ],
        }),
    );
    let cni = lab.invoker();
    let mut a = attachment(Path::new("/var/run/netns/pa-rec"), "green");
    a.if_mac = Some("02:00:00:00:00:07".into());

    let result = cni.add(&a).await.expect("ADD");
    assert_eq!(result.mac_of(&a.ifname), Some("02:00:00:00:00:42"));
    cni.del(&a).await.expect("DEL");

    let records = lab.records();
    let order = [("a", "ADD"), ("b", "ADD"), ("b", "DEL"), ("a", "DEL")];
    let got = calls(&records);
    assert_eq!(
        got.iter()
            .map(|(t, c)| (t.as_str(), c.as_str()))
            .collect::<Vec<_>>(),
        order
    );

    let cni_args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};\
         K8S_POD_UID={};K8S_POD_NETWORK=green;K8S_POD_IFMAC=02:00:00:00:00:07",
        a.pod_name, a.sandbox_id, a.pod_uid
    );
    let cni_path = format!("/opt/recorder/bin:{}:{DEBIAN_CNI}", plugins_dir().display());
    for record in &records {
        let (stdin, env) = (&record["stdin"], &record["env"]);
        assert_eq!(
            (stdin["name"].as_str(), stdin["cniVersion"].as_str()),
            (Some("pa-rec"), Some("1.0.0"))
        );
        assert_eq!(env["CNI_ARGS"], cni_args.as_str());
        assert_eq!(env["CNI_PATH"], cni_path.as_str());
        assert_eq!(env["CNI_CONTAINERID"], a.sandbox_id.as_str());
        assert_eq!(env["CNI_IFNAME"], a.ifname.as_str());
        assert_eq!(env["CNI_NETNS"], "/var/run/netns/pa-rec");
        assert_eq!(
            env["HOME"],
            std::env::var("HOME").unwrap_or_default().as_str()
        );
        let leaked: Vec<&String> = env
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| {
                !k.starts_with("CNI_")
                    && !["PATH", "HOME", "PWD", "SHLVL", "_"].contains(&k.as_str())
            })
            .collect();
        assert_eq!(
            leaked,
            Vec::<&String>::new(),
            "only CNI_*, PATH and pass-through vars"
        );
        let runtime_config = stdin.get("runtimeConfig");
        if record["tag"] == "a" {
            assert_eq!(runtime_config, Some(&json!({"mac": "02:00:00:00:00:07"})));
        } else {
            assert_eq!(runtime_config, None);
        }
    }
    assert_eq!(
        records[0]["stdin"].get("prevResult"),
        None,
        "first ADD has no prevResult"
    );
    let first_result = records[1]["stdin"]["prevResult"].clone();
    assert_eq!(first_result["interfaces"][0]["name"], a.ifname.as_str());
    for record in &records[2..] {
        assert_eq!(
            record["stdin"]["prevResult"], result.raw,
            "CHECK/DEL get the final result"
        );
    }
}

#[tokio::test]
async fn del_keeps_going_past_a_failing_plugin_and_reports_the_first_error() {
    let lab = Lab::new();
    lab.write_conf(
        "10-rec.conflist",
        &json!({
            "cniVersion": "1.0.0",
            "name": "pa-delfail",
            "plugins": [
                recorder(&lab, "a", json!({})),
                {"type": "fault-fail", "failOn": "DEL"},
                recorder(&lab, "b", json!({})),
            ],
        }),
    );
    let cni = lab.invoker();
    let a = attachment(Path::new("/var/run/netns/pa-rec"), "green");
    cni.add(&a).await.expect("ADD");

    let err = cni
        .del(&a)
        .await
        .expect_err("DEL through a plugin failing DEL");
    match &err {
        CniError::Failed { run, code, .. } => {
            assert_eq!(
                (run.op, run.plugin.as_str(), *code),
                (Op::Del, "fault-fail", Some(7))
            );
        }
        other => panic!("expected Failed, got {other}"),
    }
    let expected: Vec<(String, String)> = [("a", "ADD"), ("b", "ADD"), ("b", "DEL"), ("a", "DEL")]
        .iter()
        .map(|(t, c)| ((*t).into(), (*c).into()))
        .collect();
    assert_eq!(calls(&lab.records()), expected, "every plugin gets its DEL");
    assert_eq!(lab.cache_files().len(), 1, "kept for the next DEL attempt");
}

#[tokio::test]
async fn del_of_a_0_3_1_list_omits_prev_result() {
    let lab = Lab::new();
    lab.write_conf(
        "10-rec.conflist",
        &json!({"cniVersion": "0.3.1", "name": "pa-rec031", "plugins": [recorder(&lab, "a", json!({}))]}),
    );
    let cni = lab.invoker();
    let a = attachment(Path::new("/var/run/netns/pa-rec"), "green");
    cni.add(&a).await.expect("ADD");
    cni.del(&a).await.expect("DEL");
    let records = lab.records();
    assert_eq!(
        calls(&records),
        [("a".into(), "ADD".into()), ("a".into(), "DEL".into())]
    );
    assert_eq!(records[1]["stdin"].get("prevResult"), None);
}

#[tokio::test]
async fn version_and_primary_config_of_a_1_1_list() {
    let lab = Lab::new();
    lab.write_conf(
        "10-rec.conflist",
        &json!({
            "cniVersion": "1.0.0",
            "cniVersions": ["1.0.0", "1.1.0"],
            "name": "pa-rec11",
            "plugins": [recorder(&lab, "a", json!({})), recorder(&lab, "b", json!({}))],
        }),
    );
    let cni = lab.invoker();
    let summary = cni.primary_config().await.expect("primary config");
    assert_eq!(summary.cni_version, "1.1.0");
    assert_eq!(summary.plugin_types, ["recorder", "recorder"]);

    let versions = cni.version().await.expect("VERSION");
    assert_eq!(versions.len(), 1, "one VERSION call per plugin type");
    assert_eq!(versions[0].plugin, "recorder");
    assert!(versions[0].supported_versions.contains(&"1.1.0".to_owned()));
}

#[tokio::test]
async fn primary_config_is_the_first_parseable_file_in_lexical_order() {
    let lab = Lab::new();
    let dir = lab.conf_dir();
    std::fs::write(dir.join("00-broken.conf"), "{ not json").unwrap();
    std::fs::write(dir.join("05-notes.txt"), "not a config").unwrap();
    lab.write_conf(
        "10-b.conf",
        &json!({"cniVersion": "0.3.1", "name": "b", "type": "bridge"}),
    );
    lab.write_conf(
        "20-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}, {"type": "tuning"}]}),
    );
    let summary = lab.invoker().primary_config().await.expect("primary");
    assert_eq!(summary.name, "b");
    assert_eq!(summary.cni_version, "0.3.1");
    assert_eq!(summary.plugin_types, ["bridge"]);
    assert_eq!(summary.file, dir.join("10-b.conf"));
}

#[tokio::test]
async fn primary_config_is_re_read_when_the_directory_changes() {
    let lab = Lab::new();
    let dir = lab.conf_dir();
    let cni = lab.invoker();
    let err = cni.primary_config().await.expect_err("empty conf dir");
    assert!(matches!(err, CniError::NoConfig { .. }), "{err}");
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "{err}"
    );

    lab.write_conf(
        "20-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}]}),
    );
    assert_eq!(cni.primary_config().await.unwrap().name, "a");

    lab.write_conf(
        "10-b.json",
        &json!({"cniVersion": "1.0.0", "name": "b", "type": "bridge"}),
    );
    assert_eq!(cni.primary_config().await.unwrap().name, "b");

    // Edited in place (same file, same inode): still noticed.
    lab.write_conf(
        "10-b.json",
        &json!({"cniVersion": "1.0.0", "name": "b2", "type": "macvlan"}),
    );
    let summary = cni.primary_config().await.unwrap();
    assert_eq!(
        (summary.name.as_str(), summary.plugin_types[0].as_str()),
        ("b2", "macvlan")
    );

    std::fs::write(dir.join("10-b.json"), "{").unwrap();
    assert_eq!(
        cni.primary_config().await.unwrap().name,
        "a",
        "a broken file is skipped"
    );
}
