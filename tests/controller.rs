//! The hot-plug controller end to end: the real `podagent` binary against kube-sim, a private
//! containerd (or dockerd) with real pod sandboxes, and the Debian `bridge`, `host-local` and
//! `tuning` plugins as the node's primary CNI network (run as root).
//!
//! Each test has its own API server, runtime, CNI config dir, plugin dir, bridge, address range
//! and state dir. The bridge plugin is reached through `tests/controller_plugins/wrap-bridge`,
//! which logs every invocation (so a test can count CNI calls and their spacing) and can be
//! made slow or failing per pod. Outcomes are read from the pod's netns (`nsenter … ip`) and
//! from the API (Events, the status annotation), never from podagent's own logs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::host::{Containerd, Dockerd};
use testkit::kube_sim::{KubeSim, Options};
use testkit::netns::unique_name;
use testkit::prereq;

const NODE: &str = "ctl-node";
const STATUS: &str = "podagent.kaloom.com/network-status";
const GREEN: &str = "net9f27410725ab";
const BLUE: &str = "net48d6215903df";
const RED: &str = "netbda9643ac660";
const WAIT: Duration = Duration::from_secs(20);

/// Address ranges inside 198.18.128.0/17, one /24 per test in this process.
static NEXT_SUBNET: AtomicU32 = AtomicU32::new(0);

enum Runtime {
    Containerd(Containerd),
    Docker(Dockerd),
}

/// One test's world: API server, runtime, CNI config and plugins, podagent's state dir.
struct Host {
    sim: KubeSim,
    runtime: Runtime,
    dir: tempfile::TempDir,
    bridge: String,
    retry_cap: &'static str,
}

/// A running podagent; killed by PID (SIGKILL) on drop.
struct Agent {
    child: Child,
}

impl Agent {
    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits")
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(mut self) {
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait podagent") {
                assert!(status.success(), "podagent exited with {status} on SIGTERM");
                return;
            }
            assert!(Instant::now() < deadline, "podagent ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(mut self) {
        signal(self.pid(), "KILL");
        let _ = self.child.wait();
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait podagent").is_none()
    }

    /// CPU time used so far, in clock ticks (utime + stime from /proc/<pid>/stat).
    fn cpu_ticks(&self) -> u64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let after = stat.rsplit_once(')').expect("stat format").1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.pid(), "KILL");
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: i32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

impl Host {
    async fn containerd() -> Host {
        Host::new(Runtime::Containerd(Containerd::start().await)).await
    }

    async fn docker() -> Host {
        Host::new(Runtime::Docker(Dockerd::start().await)).await
    }

    async fn new(runtime: Runtime) -> Host {
        prereq::require_root();
        prereq::require_command("nsenter", "util-linux");
        prereq::require_command("ip", "iproute2");
        for plugin in ["bridge", "host-local", "tuning"] {
            prereq::require_path(
                &Path::new("/usr/lib/cni").join(plugin),
                "the Debian package containernetworking-plugins",
            );
        }
        let sim = KubeSim::start(Options::default()).await.expect("kube-sim");
        let dir = tempfile::Builder::new()
            .prefix("pa-ctl")
            .tempdir()
            .expect("temp dir");
        let bridge = unique_name("cbr");
        let n = NEXT_SUBNET.fetch_add(1, Ordering::Relaxed) + std::process::id() % 16 * 8;
        let subnet = format!("198.18.{}.0/24", 128 + n % 128);
        for sub in ["conf", "bin", "state", "ipam"] {
            fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        let wrapper =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controller_plugins/wrap-bridge");
        fs::copy(&wrapper, dir.path().join("bin/wrap-bridge")).expect("copy wrapper plugin");
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "hotplug",
            "plugins": [
                {
                    "type": "wrap-bridge",
                    "bridge": bridge,
                    "isGateway": false,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": subnet}]],
                        "dataDir": dir.path().join("ipam"),
                    },
                },
                {"type": "tuning", "capabilities": {"mac": true}},
            ],
        });
        fs::write(
            dir.path().join("conf/10-hotplug.conflist"),
            serde_json::to_vec_pretty(&conflist).expect("json"),
        )
        .expect("write conflist");
        Host {
            sim,
            runtime,
            dir,
            bridge,
            retry_cap: "4s",
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write_config(&self) -> PathBuf {
        let (kind, socket) = match &self.runtime {
            Runtime::Containerd(c) => ("containerd", c.socket().to_owned()),
            Runtime::Docker(d) => ("docker", d.socket().to_owned()),
        };
        let config = format!(
            r#"node_name = "{NODE}"
state_dir = "{state}"
log_level = "info,podagent=debug"
shutdown_grace = "20s"
[kube]
kubeconfig = "{kubeconfig}"
[runtime]
kind = "{kind}"
endpoint = "{socket}"
[cni]
conf_dir = "{conf}"
bin_dirs = ["{bin}", "/usr/lib/cni"]
plugin_timeout = "20s"
[reconcile]
concurrency = 4
retry_base = "1s"
retry_cap = "{cap}"
resync_period = "5m"
"#,
            state = self.path("state").display(),
            kubeconfig = self.sim.kubeconfig_path().display(),
            socket = socket.display(),
            conf = self.path("conf").display(),
            bin = self.path("bin").display(),
            cap = self.retry_cap,
        );
        let file = self.path("podagent.toml");
        fs::write(&file, config).expect("write config");
        file
    }

    fn start_agent(&self) -> Agent {
        let config = self.write_config();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("podagent.log"))
            .expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_podagent"))
            .args(["run", "--config"])
            .arg(&config)
            // Only PATH: no PODAGENT_* configuration, NOTIFY_SOCKET or RUST_LOG of the caller
            // may leak into the agent under test.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start podagent");
        Agent { child }
    }

    /// Creates a running pod on this node and its sandbox; returns (uid, sandbox id).
    async fn pod(&self, namespace: &str, name: &str, networks: Option<&str>) -> (String, String) {
        let mut annotations = serde_json::Map::new();
        if let Some(networks) = networks {
            annotations.insert("networks".into(), json!(networks));
        }
        let created = self
            .sim
            .create(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
                "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "busybox"}]},
                "status": {"phase": "Running", "containerStatuses": [{
                    "name": "main", "containerID": "containerd://first", "image": "busybox",
                    "imageID": "", "ready": true, "restartCount": 0
                }]},
            }))
            .expect("create pod");
        let uid = created["metadata"]["uid"].as_str().expect("uid").to_owned();
        let sandbox = self.run_sandbox(&uid, namespace, name).await;
        (uid, sandbox)
    }

    async fn run_sandbox(&self, uid: &str, namespace: &str, name: &str) -> String {
        match &self.runtime {
            Runtime::Containerd(c) => c.run_pod_sandbox(uid, name, namespace).await,
            Runtime::Docker(d) => d.run_sandbox(uid, name, namespace).await,
        }
    }

    async fn netns(&self, sandbox: &str) -> PathBuf {
        match &self.runtime {
            Runtime::Containerd(c) => c.sandbox_netns(sandbox).await,
            Runtime::Docker(d) => d.sandbox_netns(sandbox).await,
        }
    }

    fn set_networks(&self, namespace: &str, name: &str, networks: Option<&str>) {
        self.sim
            .patch_merge(
                "v1",
                "Pod",
                Some(namespace),
                name,
                json!({"metadata": {"annotations": {"networks": networks}}}),
            )
            .expect("patch networks");
    }

    fn status(&self, namespace: &str, name: &str) -> Option<Value> {
        let pod = self.sim.get("v1", "Pod", Some(namespace), name)?;
        let text = pod["metadata"]["annotations"][STATUS].as_str()?.to_owned();
        Some(serde_json::from_str(&text).expect("status annotation is JSON"))
    }

    /// Events on pod `uid` with `reason`.
    fn events(&self, namespace: &str, uid: &str, reason: &str) -> Vec<Value> {
        self.sim
            .list("events.k8s.io/v1", "Event", Some(namespace))
            .into_iter()
            .filter(|e| e["regarding"]["uid"] == uid && e["reason"] == reason)
            .collect()
    }

    /// `(command, pod, ifname)` of every plugin invocation so far.
    fn calls(&self) -> Vec<(f64, String, String, String)> {
        let text = fs::read_to_string(self.path("bin/calls.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let at = parts.next()?.parse().ok()?;
                Some((
                    at,
                    parts.next()?.to_owned(),
                    parts.next()?.to_owned(),
                    parts.next().unwrap_or_default().to_owned(),
                ))
            })
            .collect()
    }

    fn count(&self, command: &str, pod: &str) -> usize {
        self.calls()
            .iter()
            .filter(|(_, c, p, _)| c == command && p == pod)
            .count()
    }

    fn record(&self, uid: &str) -> Option<Value> {
        let text = fs::read_to_string(self.path(&format!("state/{uid}.json"))).ok()?;
        Some(serde_json::from_str(&text).expect("record is JSON"))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("podagent.log")).unwrap_or_default()
    }

    /// Polls `check` until it returns `Some`, or fails with `what` and podagent's log tail.
    async fn eventually<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(value) = check() {
                return value;
            }
            if Instant::now() > deadline {
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "timed out waiting for {what}; plugin calls: {:?}\npodagent log (newest first):\n{}",
                    self.calls(),
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// The links of a netns as `ip -j addr` shows them, through `nsenter` (works for
/// `/var/run/netns/…` and `/proc/<pid>/ns/net` alike).
fn links(netns: &Path) -> Vec<Value> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-j", "addr", "show"])
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "nsenter into {}: {}",
        netns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ip -j prints JSON")
}

fn link<'a>(links: &'a [Value], name: &str) -> Option<&'a Value> {
    links.iter().find(|l| l["ifname"] == name)
}

fn has(netns: &Path, name: &str) -> bool {
    link(&links(netns), name).is_some()
}

/// The IPv4 address of `name` in `netns`, once it has one.
fn ipv4(netns: &Path, name: &str) -> Option<String> {
    let links = links(netns);
    link(&links, name)?["addr_info"]
        .as_array()?
        .iter()
        .find(|a| a["family"] == "inet")
        .and_then(|a| a["local"].as_str())
        .map(str::to_owned)
}

fn mac(netns: &Path, name: &str) -> Option<String> {
    let links = links(netns);
    link(&links, name)?["address"].as_str().map(str::to_owned)
}

fn status_names(status: &Option<Value>) -> Vec<String> {
    status
        .as_ref()
        .and_then(Value::as_array)
        .map(|entries| {
            let mut names: Vec<String> = entries
                .iter()
                .filter_map(|e| e["name"].as_str().map(str::to_owned))
                .collect();
            names.sort();
            names
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_added_to_a_running_pod_appear_and_removed_ones_go() {
    let host = Host::containerd().await;
    let (uid, sandbox) = host.pod("default", "web", None).await;
    let netns = host.netns(&sandbox).await;
    let _agent = host.start_agent();

    host.set_networks("default", "web", Some(r#"[{"name":"green"}]"#));
    let address = host
        .eventually("green with an address", || ipv4(&netns, GREEN))
        .await;
    assert!(address.starts_with("198.18."), "{address}");
    assert!(has(&netns, "eth0"), "the pod's own interface is untouched");
    assert_eq!(
        host.netns(&sandbox).await,
        netns,
        "same sandbox: no restart"
    );
    let record = host.record(&uid).expect("record");
    assert_eq!(record["record"]["sandboxId"], sandbox);
    let added = host
        .eventually("an AddedInterface Event", || {
            host.events("default", &uid, "AddedInterface").pop()
        })
        .await;
    assert_eq!(added["type"], "Normal");
    assert_eq!(added["reportingController"], "podagent");
    assert_eq!(added["reportingInstance"], NODE);
    let note = added["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("green") && note.contains(GREEN) && note.contains(&address),
        "{note}"
    );
    let status = host
        .eventually("the status annotation", || host.status("default", "web"))
        .await;
    assert_eq!(status[0]["name"], "green");
    assert_eq!(status[0]["interface"], GREEN);
    assert_eq!(status[0]["ips"][0], address.as_str());

    host.set_networks("default", "web", None);
    host.eventually("green gone", || (!has(&netns, GREEN)).then_some(()))
        .await;
    host.eventually("a RemovedInterface Event", || {
        host.events("default", &uid, "RemovedInterface").pop()
    })
    .await;
    host.eventually("the status annotation removed", || {
        host.status("default", "web").is_none().then_some(())
    })
    .await;

    host.set_networks(
        "default",
        "web",
        Some(r#"[{"name":"red"},{"name":"blue"}]"#),
    );
    host.eventually("red and blue", || {
        (ipv4(&netns, RED).is_some() && ipv4(&netns, BLUE).is_some()).then_some(())
    })
    .await;
    host.set_networks("default", "web", Some(r#"[{"name":"blue"}]"#));
    host.eventually("red gone, blue kept", || {
        (!has(&netns, RED) && has(&netns, BLUE)).then_some(())
    })
    .await;
    host.eventually("status lists blue only", || {
        (status_names(&host.status("default", "web")) == ["blue"]).then_some(())
    })
    .await;
    assert_eq!(host.count("ADD", "web"), 3, "{:?}", host.calls());
    assert_eq!(host.count("DEL", "web"), 2, "{:?}", host.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_pod_name_in_two_namespaces_is_independent() {
    let host = Host::containerd().await;
    let (uid_a, sandbox_a) = host
        .pod("team-a", "web", Some(r#"[{"name":"green"}]"#))
        .await;
    let (uid_b, sandbox_b) = host
        .pod("team-b", "web", Some(r#"[{"name":"blue"}]"#))
        .await;
    let (netns_a, netns_b) = (host.netns(&sandbox_a).await, host.netns(&sandbox_b).await);
    let _agent = host.start_agent();

    host.eventually("green in a, blue in b", || {
        (has(&netns_a, GREEN) && has(&netns_b, BLUE)).then_some(())
    })
    .await;
    assert!(!has(&netns_a, BLUE) && !has(&netns_b, GREEN));
    assert!(host.record(&uid_a).is_some() && host.record(&uid_b).is_some());

    host.set_networks("team-a", "web", None);
    host.eventually("green gone from a", || {
        (!has(&netns_a, GREEN)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(has(&netns_b, BLUE), "b is untouched");
    assert_eq!(status_names(&host.status("team-b", "web")), ["blue"]);
    assert_eq!(host.count("DEL", "web"), 1, "{:?}", host.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_mac_is_applied_and_changing_it_replugs() {
    let host = Host::containerd().await;
    let (_, sandbox) = host
        .pod(
            "default",
            "mac",
            Some(r#"[{"name":"green","ifMac":"02:00:00:00:aa:01"}]"#),
        )
        .await;
    let netns = host.netns(&sandbox).await;
    let _agent = host.start_agent();

    host.eventually("green with the first MAC", || {
        (mac(&netns, GREEN).as_deref() == Some("02:00:00:00:aa:01")).then_some(())
    })
    .await;
    host.set_networks(
        "default",
        "mac",
        Some(r#"[{"name":"green","ifMac":"02:00:00:00:aa:02"}]"#),
    );
    host.eventually("green re-plugged with the second MAC", || {
        (mac(&netns, GREEN).as_deref() == Some("02:00:00:00:aa:02")).then_some(())
    })
    .await;
    let commands: Vec<String> = host.calls().into_iter().map(|c| c.1).collect();
    assert_eq!(commands, ["ADD", "DEL", "ADD"]);
    host.eventually("status shows the new MAC", || {
        let status = host.status("default", "mac")?;
        (status[0]["mac"] == "02:00:00:00:aa:02").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_annotations_warn_and_change_nothing_until_fixed() {
    let host = Host::containerd().await;
    let (uid, sandbox) = host
        .pod("default", "typo", Some(r#"[{"name":"green"}]"#))
        .await;
    let netns = host.netns(&sandbox).await;
    let _agent = host.start_agent();
    host.eventually("green", || has(&netns, GREEN).then_some(()))
        .await;

    let bad = [
        r#"[{"name":"green"}"#,
        r#"[{"name":"green"},{"name":"green"}]"#,
        r#"[{"name":"green","ifMac":"01:00:5e:00:00:01"}]"#,
    ];
    for (i, value) in bad.iter().enumerate() {
        host.set_networks("default", "typo", Some(value));
        host.eventually("an InvalidNetworksAnnotation Event", || {
            let events = host.events("default", &uid, "InvalidNetworksAnnotation");
            (events.len() == i + 1).then_some(())
        })
        .await;
    }
    let warnings = host.events("default", &uid, "InvalidNetworksAnnotation");
    assert!(warnings.iter().all(|e| e["type"] == "Warning"));
    let notes: Vec<&str> = warnings.iter().filter_map(|e| e["note"].as_str()).collect();
    assert!(notes.iter().any(|n| n.contains("JSON")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("multicast")), "{notes:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(has(&netns, GREEN), "an invalid annotation changes nothing");
    assert_eq!(host.calls().len(), 1, "{:?}", host.calls());

    host.set_networks("default", "typo", Some(r#"[{"name":"blue"}]"#));
    host.eventually("the fix applied", || {
        (has(&netns, BLUE) && !has(&netns, GREEN)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_converges_and_an_unchanged_restart_calls_no_plugin() {
    let host = Host::containerd().await;
    let (_, sandbox) = host
        .pod(
            "default",
            "steady",
            Some(r#"[{"name":"green"},{"name":"red"}]"#),
        )
        .await;
    let netns = host.netns(&sandbox).await;
    let agent = host.start_agent();
    host.eventually("green and red", || {
        (has(&netns, GREEN) && has(&netns, RED)).then_some(())
    })
    .await;
    agent.stop();

    host.set_networks(
        "default",
        "steady",
        Some(r#"[{"name":"green"},{"name":"blue"}]"#),
    );
    let agent = host.start_agent();
    host.eventually("red removed and blue added while podagent was down", || {
        (!has(&netns, RED) && has(&netns, BLUE) && has(&netns, GREEN)).then_some(())
    })
    .await;
    let commands: Vec<(String, String)> = host
        .calls()
        .into_iter()
        .map(|(_, c, _, i)| (c, i))
        .collect();
    assert_eq!(commands.len(), 4, "no call for green: {commands:?}");
    agent.stop();

    let before = host.calls().len();
    let agent = host.start_agent();
    // A pod created after the restart proves that the agent is past its startup reconciles.
    let (_, marker) = host
        .pod("default", "marker", Some(r#"[{"name":"green"}]"#))
        .await;
    let marker_netns = host.netns(&marker).await;
    host.eventually("the marker pod plugged", || {
        has(&marker_netns, GREEN).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let steady: Vec<_> = host.calls()[before..]
        .iter()
        .filter(|(_, _, pod, _)| pod == "steady")
        .cloned()
        .collect();
    assert!(
        steady.is_empty(),
        "restart with nothing changed called: {steady:?}"
    );
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_slow_add_leaves_exactly_one_link() {
    let host = Host::containerd().await;
    let (uid, sandbox) = host.pod("default", "crash", None).await;
    let netns = host.netns(&sandbox).await;
    fs::write(host.path("bin/slow"), "3").expect("slow switch");
    let agent = host.start_agent();
    host.set_networks("default", "crash", Some(r#"[{"name":"green"}]"#));
    host.eventually("the ADD started", || {
        (host.count("ADD", "crash") == 1).then_some(())
    })
    .await;
    let record = host.record(&uid).expect("recorded before the ADD");
    assert_eq!(record["record"]["attachments"]["green"]["phase"], "Adding");
    agent.kill();
    // The orphaned plugin finishes its ADD after podagent died.
    host.eventually("the orphaned ADD completes", || {
        ipv4(&netns, GREEN).map(drop)
    })
    .await;
    fs::remove_file(host.path("bin/slow")).expect("fast again");

    // The link alone cannot tell a finished chain from half of one, so the interrupted
    // attachment is deleted (releasing its address) and added again.
    let _agent = host.start_agent();
    host.eventually("the attachment re-plugged and attached", || {
        let record = host.record(&uid)?;
        (record["record"]["attachments"]["green"]["phase"] == "Attached").then_some(())
    })
    .await;
    host.eventually("the status annotation", || host.status("default", "crash"))
        .await;
    let names: Vec<String> = links(&netns)
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names.iter().filter(|n| *n == GREEN).count(), 1, "{names:?}");
    assert_eq!(host.count("DEL", "crash"), 1, "{:?}", host.calls());
    assert_eq!(host.count("ADD", "crash"), 2, "{:?}", host.calls());
    assert!(
        ipv4(&netns, GREEN).is_some(),
        "the re-plugged link has an address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_plugin_warns_backs_off_and_spares_other_pods() {
    let host = Host::containerd().await;
    fs::write(host.path("bin/fail-pods"), "broken\n").expect("fail switch");
    let (broken_uid, _) = host
        .pod("default", "broken", Some(r#"[{"name":"green"}]"#))
        .await;
    let agent = host.start_agent();
    host.eventually("the first failure", || {
        (host.count("ADD", "broken") >= 1).then_some(())
    })
    .await;
    let cpu_before = agent.cpu_ticks();
    let started = Instant::now();

    let (_, healthy) = host
        .pod("default", "healthy", Some(r#"[{"name":"green"}]"#))
        .await;
    let healthy_netns = host.netns(&healthy).await;
    host.eventually("the healthy pod plugged meanwhile", || {
        has(&healthy_netns, GREEN).then_some(())
    })
    .await;

    host.eventually("four attempts on the broken pod", || {
        (host.count("ADD", "broken") >= 4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = started.elapsed();
    let attempts: Vec<f64> = host
        .calls()
        .into_iter()
        .filter(|(_, c, p, _)| c == "ADD" && p == "broken")
        .map(|(at, ..)| at)
        .collect();
    // retry_base 1 s, cap 4 s, jitter in the upper half: gaps ≥ 0.5, ≥ 1, ≥ 2, ≥ 2 … s.
    let gaps: Vec<f64> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g >= 0.45), "{gaps:?}");
    assert!(
        gaps[2] >= 1.9,
        "the third retry waits at least 2 s: {gaps:?}"
    );
    let bound = 2 + (window.as_secs_f64() / 2.0).ceil() as usize + 2;
    assert!(
        attempts.len() <= bound,
        "{} attempts in {window:?}",
        attempts.len()
    );

    let ticks = agent.cpu_ticks() - cpu_before;
    let seconds = ticks as f64 / 100.0;
    assert!(
        seconds < window.as_secs_f64() * 0.5,
        "podagent used {seconds} s of CPU in {window:?} while backing off"
    );

    let warnings = host.events("default", &broken_uid, "FailedAddingInterface");
    assert_eq!(warnings.len(), 1, "one aggregated Event: {warnings:?}");
    let warning = &warnings[0];
    assert_eq!(warning["type"], "Warning");
    let note = warning["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("999") && note.contains("refused by the test plugin"),
        "{note}"
    );
    assert!(
        warning["series"]["count"].as_i64().unwrap_or(1) >= 2,
        "repeats are counted: {warning}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreated_sandbox_drops_old_records_and_plugs_the_new_netns() {
    let host = Host::containerd().await;
    let (uid, first) = host
        .pod("default", "phoenix", Some(r#"[{"name":"green"}]"#))
        .await;
    let first_netns = host.netns(&first).await;
    let _agent = host.start_agent();
    host.eventually("green in the first sandbox", || {
        has(&first_netns, GREEN).then_some(())
    })
    .await;

    let Runtime::Containerd(containerd) = &host.runtime else {
        unreachable!("containerd host")
    };
    containerd.stop_pod_sandbox(&first).await;
    containerd.remove_pod_sandbox(&first).await;
    let second = containerd.run_pod_sandbox(&uid, "phoenix", "default").await;
    let second_netns = containerd.sandbox_netns(&second).await;
    // What the kubelet reports after re-creating a sandbox: new container ids.
    host.sim
        .patch_merge(
            "v1",
            "Pod",
            Some("default"),
            "phoenix",
            json!({"status": {"containerStatuses": [{
                "name": "main", "containerID": "containerd://second", "image": "busybox",
                "imageID": "", "ready": true, "restartCount": 1
            }]}}),
        )
        .expect("patch container ids");

    host.eventually("green in the new sandbox", || {
        ipv4(&second_netns, GREEN).map(drop)
    })
    .await;
    host.eventually("the record follows the new sandbox", || {
        let record = host.record(&uid)?;
        (record["record"]["sandboxId"] == second
            && record["record"]["attachments"]["green"]["phase"] == "Attached")
            .then_some(())
    })
    .await;
    assert_eq!(
        host.count("DEL", "phoenix"),
        0,
        "no DEL into the dead sandbox"
    );
    assert_eq!(host.count("ADD", "phoenix"), 2);
    let cache = fs::read_dir(host.path("state/cni-results"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        cache.iter().all(|name| !name.contains(&first)),
        "cached results of the old sandbox are dropped: {cache:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_deleted_during_an_add_is_forgotten() {
    let host = Host::containerd().await;
    let (uid, _) = host.pod("default", "brief", None).await;
    fs::write(host.path("bin/slow"), "3").expect("slow switch");
    let mut agent = host.start_agent();
    host.set_networks("default", "brief", Some(r#"[{"name":"green"}]"#));
    host.eventually("the ADD started", || {
        (host.count("ADD", "brief") == 1).then_some(())
    })
    .await;
    host.sim
        .delete("v1", "Pod", Some("default"), "brief")
        .expect("delete pod");
    host.eventually("the record forgotten", || {
        host.record(&uid).is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(agent.running(), "podagent survived");
    assert!(host.record(&uid).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_sandbox_gets_and_loses_green() {
    let host = Host::docker().await;
    let (uid, sandbox) = host.pod("default", "dock", None).await;
    let netns = host.netns(&sandbox).await;
    let _agent = host.start_agent();

    host.set_networks("default", "dock", Some(r#"[{"name":"green"}]"#));
    host.eventually("green with an address", || ipv4(&netns, GREEN))
        .await;
    host.eventually("an AddedInterface Event", || {
        host.events("default", &uid, "AddedInterface").pop()
    })
    .await;
    let record = host.record(&uid).expect("record");
    assert_eq!(record["record"]["sandboxId"], sandbox);

    host.set_networks("default", "dock", None);
    host.eventually("green gone", || (!has(&netns, GREEN)).then_some(()))
        .await;
    host.eventually("a RemovedInterface Event", || {
        host.events("default", &uid, "RemovedInterface").pop()
    })
    .await;
}
