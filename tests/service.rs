//! The installed service under a real systemd: podagent's RPM installed for real in a node
//! booted with systemd as PID 1 (`testkit::nspawn`, run as root), driven as an operator drives
//! it (`rpm`, the packaged `create-kubeconfig.sh`, `systemctl`, `journalctl`) and checked by
//! what an operator sees, while the test plays the kubelet: pods through the shared real
//! control plane, their sandboxes through the machine's own containerd, their netns read from
//! the host. podagent runs with the unit's sandboxing, watchdog and kill mode exactly as
//! shipped; the only things the test sets are an operator's edits of
//! `/opt/kaloom/etc/podagent.toml` (this node's name, direct mode, the test plugin's dir and a
//! free metrics port, since the machine shares the host's network) and, for the watchdog test,
//! a drop-in with the shortest WatchdogSec podagent supports.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::fault_proxy::FaultProxy;
use testkit::node::{Node, has_link, ipv4};
use testkit::nspawn::{Machine, SHARE};

const PODAGENT: &str = env!("CARGO_BIN_EXE_podagent");
const UNIT: &str = "podagent";
const CONFIG: &str = "/opt/kaloom/etc/podagent.toml";
/// The sysctl `green`'s `tuning` sets in the pod's netns.
const ARP_NOTIFY: &str = "net.ipv4.conf.all.arp_notify";

/// This version's package and the next version's, built once per test binary.
fn packages() -> &'static testkit::rpm::Packages {
    testkit::rpm::packages(env!("CARGO_PKG_VERSION"))
}

/// One machine at a time: two nspawn launchers in one cgroup would have to move themselves
/// apart first, and the tests are about one node each anyway.
static ONE_MACHINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A booted node with this version's package installed (`rpm -ivh`, scriptlets for real;
/// `--nodeps`: rpm's database knows none of Debian's packages) and configured by
/// [`configure`], but not started; the edited config's text.
fn installed_node() -> (Node, String) {
    installed_node_on("auto")
}

/// [`installed_node`] with `runtime.kind = runtime` (`auto` finds the machine's containerd
/// first, as on any node that has it).
fn installed_node_on(runtime: &str) -> (Node, String) {
    let node = Node::with_machine(PODAGENT);
    let machine = node.machine();
    let current = hand_in(machine, &packages().current);
    machine.run(&["rpm", "-ivh", "--nodeps", &current]);
    let metrics_port = testkit::free_port().expect("a free port");
    let edited = configure(&node, metrics_port, runtime);
    (node, edited)
}

/// `package` copied into the machine; its path inside.
fn hand_in(machine: &Machine, package: &Path) -> String {
    let name = package.file_name().expect("a package file name");
    fs::copy(package, machine.share().join(name)).expect("copy the package in");
    format!("{SHARE}/{}", name.to_string_lossy())
}

/// What the operator does after `rpm -ivh`: podagent's own credentials for this node, made by
/// the packaged `create-kubeconfig.sh` with the admin's kubectl, and the config edited for this
/// node. The edited config's text.
fn configure(node: &Node, metrics_port: u16, runtime: &str) -> String {
    let machine = node.machine();
    let cluster = node.cluster();
    let share = machine.share();
    fs::copy(
        testkit::control_plane::binary("kubectl"),
        share.join("kubectl"),
    )
    .expect("hand in kubectl");
    fs::copy(cluster.kubeconfig(), share.join("admin.kubeconfig")).expect("hand in the admin's");
    machine.run(&[
        "env",
        &format!("KUBECTL={SHARE}/kubectl"),
        &format!("KUBECONFIG={SHARE}/admin.kubeconfig"),
        &format!("KUBECACHEDIR={SHARE}/kube-cache"),
        "/opt/kaloom/share/podagent/scripts/create-kubeconfig.sh",
        "--node",
        node.name(),
        "/opt/kaloom/etc",
        "podagent-kubeconfig.yaml",
    ]);

    let path = machine.host_path(CONFIG);
    let shipped = fs::read_to_string(&path).expect("the installed config");
    let mut edited = shipped.clone();
    for (from, to) in [
        (
            "# node_name = \"node-1\"".to_owned(),
            format!("node_name = \"{}\"", node.name()),
        ),
        (
            "mode = \"kactus\"".to_owned(),
            "mode = \"direct\"".to_owned(),
        ),
        (
            "bin_dirs = [\"/opt/cni/bin\"]".to_owned(),
            format!("bin_dirs = [\"{SHARE}/bin\", \"/opt/cni/bin\"]"),
        ),
        (
            "listen = \"127.0.0.1:9754\"".to_owned(),
            format!("listen = \"127.0.0.1:{metrics_port}\""),
        ),
        (
            "kind = \"auto\"".to_owned(),
            format!("kind = \"{runtime}\""),
        ),
    ] {
        assert!(
            edited.contains(&from),
            "the shipped {CONFIG} has no `{from}` line to edit"
        );
        edited = edited.replacen(&from, &to, 1);
    }
    fs::write(&path, &edited).expect("edit the config");
    edited
}

/// The `green` Network: the test's logging bridge wrapper on a bridge of its own, addresses
/// from the node's second quarter, then `tuning` setting a sysctl in the pod's netns, as many
/// plugins do (what the unit's sandboxing must leave writable).
fn put_green(node: &Node) -> String {
    node.cluster().install_network_crd();
    let bridge = testkit::netns::unique_name("svb");
    node.machine().own_link(&bridge);
    let config = json!({"cniVersion": "1.0.0", "name": "green", "plugins": [
        {"type": testkit::node::PLUGIN, "bridge": bridge, "isGateway": false, "ipMasq": false,
         "ipam": {"type": "host-local", "subnet": node.quarter(1)}},
        {"type": "tuning", "sysctl": {ARP_NOTIFY: "1"}},
    ]});
    node.put_network(
        "default",
        "green",
        json!({"plugin": testkit::node::PLUGIN, "config": config.to_string()}),
    );
    bridge
}

/// Whether journal field `field` of `entry` is `value` (`journalctl -o json` prints a field
/// an entry carries twice, from a span and its parent, as an array).
fn field_is(entry: &Value, field: &str, value: &str) -> bool {
    match &entry[field] {
        Value::String(text) => text == value,
        Value::Array(values) => values.iter().any(|v| v == value),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_service_hot_plugs_logs_upgrades_and_erases_as_documented() {
    let _one = ONE_MACHINE.lock().await;
    let (node, edited) = installed_node();
    let machine = node.machine();
    assert!(
        machine
            .host_path("/usr/lib/systemd/system/podagent.service")
            .is_file()
    );
    assert_eq!(
        machine.unit_property(UNIT, "UnitFileState"),
        "disabled",
        "installing does not enable the service"
    );
    let kubeconfig = machine.host_path("/opt/kaloom/etc/podagent-kubeconfig.yaml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&kubeconfig)
            .expect("create-kubeconfig.sh wrote the kubeconfig")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let green_bridge = put_green(&node);

    // `systemctl enable --now` returns once podagent is READY, and says so.
    machine.run(&["systemctl", "enable", "--now", UNIT]);
    assert_eq!(machine.unit_property(UNIT, "ActiveState"), "active");
    assert_eq!(machine.unit_property(UNIT, "SubState"), "running");
    assert_eq!(machine.unit_property(UNIT, "UnitFileState"), "enabled");
    let status_text = node
        .eventually("podagent's STATUS= once it works", || {
            let text = machine.unit_property(UNIT, "StatusText");
            text.starts_with(&format!("watching 0 pods on {}", node.name()))
                .then_some(text)
        })
        .await;
    let status =
        String::from_utf8_lossy(&machine.exec(&["systemctl", "status", UNIT]).stdout).into_owned();
    assert!(
        status.contains(&format!("Status: \"{status_text}\"")),
        "systemctl status shows the STATUS text:\n{status}"
    );

    // Hot-plug under the unit's sandboxing, into a sandbox of the machine's containerd.
    let (uid, sandbox) = node.pod("default", "web", None).await;
    let netns = node.netns(&sandbox).await;
    let green = podagent::annotation::ifname("green");
    node.set_networks("default", "web", Some(r#"[{"name":"green"}]"#));
    let address = node
        .eventually("green plugged by the service", || ipv4(&netns, &green))
        .await;
    assert!(node.in_quarter(&address, 1), "{address}");
    let sysctl = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["cat", "/proc/sys/net/ipv4/conf/all/arp_notify"])
        .output()
        .expect("nsenter cat");
    assert_eq!(
        String::from_utf8_lossy(&sysctl.stdout).trim(),
        "1",
        "tuning set {ARP_NOTIFY} in the pod from under the unit's sandboxing"
    );
    assert!(
        Path::new("/sys/class/net").join(&green_bridge).exists(),
        "the plugin made bridge {green_bridge} on the node"
    );
    node.eventually("an AddedInterface Event", || {
        node.events("default", &uid, "AddedInterface").pop()
    })
    .await;
    let record = machine.host_path(format!("/var/lib/podagent/{uid}.json"));
    let record: Value =
        serde_json::from_str(&fs::read_to_string(&record).expect("the service's record"))
            .expect("the record is JSON");
    assert_eq!(record["record"]["attachments"][&green]["phase"], "Attached");

    // The journal has the structured fields of the attachment.
    let namespace = node.ns("default");
    let pod = format!("{namespace}/web");
    let entries = node
        .eventually("the ADD in the journal with its fields", || {
            let found: Vec<Value> = machine
                .journal(UNIT)
                .into_iter()
                .filter(|e| {
                    field_is(e, "POD", &pod)
                        && field_is(e, "NAMESPACE", &namespace)
                        && field_is(e, "NETWORK", "green")
                        && field_is(e, "IFNAME", &green)
                })
                .collect();
            (!found.is_empty()).then_some(found)
        })
        .await;
    assert!(
        entries
            .iter()
            .any(|e| field_is(e, "_SYSTEMD_UNIT", "podagent.service")),
        "{entries:?}"
    );

    node.set_networks("default", "web", None);
    node.eventually("green removed by the service", || {
        (!has_link(&netns, &green)).then_some(())
    })
    .await;

    // rpm -Uvh: the edited config stays, the service is restarted on the new binary.
    let before = machine.unit_property(UNIT, "MainPID");
    let next = hand_in(machine, &packages().next);
    machine.run(&["rpm", "-Uvh", "--nodeps", &next]);
    assert_eq!(
        fs::read_to_string(machine.host_path(CONFIG)).expect("the config after the upgrade"),
        edited,
        "rpm -Uvh keeps the edited config (noreplace)"
    );
    let restarted = node
        .eventually("the service restarted by the upgrade", || {
            let pid = machine.unit_property(UNIT, "MainPID");
            (pid != before && pid != "0" && machine.unit_property(UNIT, "ActiveState") == "active")
                .then_some(pid)
        })
        .await;
    // (Both packages hold the test build, so the package's version is rpm's to tell.)
    let installed = machine.run(&["rpm", "-q", "--qf", "%{VERSION}", "podagent"]);
    assert_eq!(
        installed,
        testkit::rpm::next_version(env!("CARGO_PKG_VERSION")),
        "pid {restarted} runs from the upgraded package"
    );

    // rpm -e: stopped, disabled, the unit gone, the state dir left.
    machine.run(&["rpm", "-e", "podagent"]);
    assert!(
        !machine
            .host_path("/usr/lib/systemd/system/podagent.service")
            .exists()
    );
    let active = machine.exec(&["systemctl", "is-active", UNIT]);
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "inactive");
    assert!(
        !machine
            .host_path("/etc/systemd/system/multi-user.target.wants/podagent.service")
            .exists(),
        "rpm -e disables the service"
    );
    assert!(
        machine.host_path("/var/lib/podagent").is_dir(),
        "rpm -e leaves the state directory"
    );
}

/// The `web` pod with `green` ([`put_green`]) plugged by the running service: its netns.
async fn pod_with_green(node: &Node) -> PathBuf {
    let (_, sandbox) = node
        .pod("default", "web", Some(r#"[{"name":"green"}]"#))
        .await;
    let netns = node.netns(&sandbox).await;
    let green = podagent::annotation::ifname("green");
    node.eventually("green plugged by the service", || ipv4(&netns, &green))
        .await;
    netns
}

/// What the unit's journal says in `MESSAGE`s (podagent's own and systemd's about the unit).
fn messages(machine: &Machine) -> Vec<String> {
    machine
        .journal(UNIT)
        .iter()
        .filter_map(|e| e["MESSAGE"].as_str().map(str::to_owned))
        .collect()
}

/// The real watchdog: a watch that stalls (the fault proxy between the service and the API
/// server holds every frame) longer than WatchdogSec stops podagent's pings, systemd kills and
/// restarts it, and the new podagent comes back READY without a CNI call for the attachment
/// already in place. Then a bad configuration: exit 64, not restarted, and `systemctl status`
/// says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_restarts_a_stalled_service_and_a_bad_config_is_not_restarted() {
    let _one = ONE_MACHINE.lock().await;
    let (node, edited) = installed_node();
    let machine = node.machine();
    let cluster = node.cluster();
    let proxy = FaultProxy::start(cluster.server(), &cluster.ca_pem())
        .await
        .expect("the fault proxy");
    let kubeconfig = machine.host_path("/opt/kaloom/etc/podagent-kubeconfig.yaml");
    proxy
        .write_kubeconfig(&kubeconfig, &kubeconfig)
        .expect("point the service at the proxy");
    // An operator's drop-in: a short WatchdogSec, whose watches are podagent's shortest (5 s).
    let drop_in = machine.host_path("/etc/systemd/system/podagent.service.d");
    fs::create_dir_all(&drop_in).expect("the drop-in dir");
    fs::write(
        drop_in.join("watchdog.conf"),
        "[Service]\nWatchdogSec=12s\n",
    )
    .expect("drop-in");
    machine.run(&["systemctl", "daemon-reload"]);
    // Direct mode is READY once the Network objects are listed: their CRD first.
    put_green(&node);

    // The proxy is served by this test's runtime: a call that waits on it must not hold the
    // worker it runs on.
    tokio::task::block_in_place(|| machine.run(&["systemctl", "enable", "--now", UNIT]));
    assert_eq!(machine.unit_property(UNIT, "WatchdogUSec"), "12s");
    let netns = pod_with_green(&node).await;
    let calls = node.calls().len();
    let first = machine.unit_property(UNIT, "MainPID");

    proxy.faults().stall(true);
    node.eventually_for(
        "systemd's watchdog to kill the stalled podagent",
        Duration::from_secs(60),
        || {
            messages(machine)
                .into_iter()
                .find(|m| m.contains("Watchdog timeout"))
        },
    )
    .await;
    proxy.faults().stall(false);
    let second = node
        .eventually_for(
            "the restarted podagent READY",
            Duration::from_secs(60),
            || {
                let pid = machine.unit_property(UNIT, "MainPID");
                (pid != first
                    && pid != "0"
                    && machine.unit_property(UNIT, "ActiveState") == "active"
                    && machine.unit_property(UNIT, "SubState") == "running")
                    .then_some(pid)
            },
        )
        .await;
    assert_eq!(
        machine.unit_property(UNIT, "NRestarts"),
        "1",
        "pid {second}"
    );
    // A reconcile of the pod after the restart has had time to run; it called no plugin.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        node.calls()[calls..],
        [],
        "the restarted podagent made CNI calls for green, which was in place"
    );
    assert!(has_link(&netns, &podagent::annotation::ifname("green")));

    // A configuration podagent refuses: exit 64, which Restart= leaves alone.
    let config = machine.host_path(CONFIG);
    fs::write(&config, format!("{edited}\nno_such_key = 1\n")).expect("break the config");
    let restart = tokio::task::block_in_place(|| machine.exec(&["systemctl", "restart", UNIT]));
    assert!(!restart.status.success(), "a start that exits 64 fails");
    tokio::time::sleep(Duration::from_secs(7)).await; // past RestartSec=5s
    assert_eq!(machine.unit_property(UNIT, "ActiveState"), "failed");
    assert_eq!(machine.unit_property(UNIT, "ExecMainStatus"), "64");
    assert_eq!(
        machine.unit_property(UNIT, "NRestarts"),
        "0",
        "exit 64 is not restarted"
    );
    let status =
        String::from_utf8_lossy(&machine.exec(&["systemctl", "status", UNIT]).stdout).into_owned();
    assert!(
        status.contains("status=64"),
        "systemctl status names the exit status:\n{status}"
    );
    assert!(
        messages(machine)
            .iter()
            .any(|m| m.contains("no_such_key") && m.contains(CONFIG)),
        "the journal names the bad key and the file:\n{status}"
    );
}

/// `systemctl stop` while a plugin ADD runs: KillMode=mixed signals podagent alone, which lets
/// the plugin finish within its grace, so the interface is whole and recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_service_during_a_slow_add_lets_the_plugin_finish() {
    let _one = ONE_MACHINE.lock().await;
    let (node, _) = installed_node();
    let machine = node.machine();
    put_green(&node);
    machine.run(&["systemctl", "enable", "--now", UNIT]);
    let (uid, sandbox) = node.pod("default", "web", None).await;
    let netns = node.netns(&sandbox).await;
    node.set_switch("sleep", Some("4"));
    node.set_networks("default", "web", Some(r#"[{"name":"green"}]"#));
    node.eventually("the slow ADD started", || {
        node.calls().iter().find(|c| c.command == "ADD").cloned()
    })
    .await;

    machine.run(&["systemctl", "stop", UNIT]);
    assert_eq!(machine.unit_property(UNIT, "ActiveState"), "inactive");
    let ended = node.ended();
    assert!(
        ended.iter().any(|e| e.command == "ADD" && e.exit == 0),
        "the plugin's ADD ran to its end: {ended:?}"
    );
    let green = podagent::annotation::ifname("green");
    assert!(has_link(&netns, &green), "the interface is whole");
    let record = machine.host_path(format!("/var/lib/podagent/{uid}.json"));
    let record: Value = serde_json::from_str(&fs::read_to_string(&record).expect("the record"))
        .expect("the record is JSON");
    assert_eq!(
        record["record"]["attachments"][&green]["phase"], "Attached",
        "and recorded: {record}"
    );
}

/// A Docker node: the pod's sandbox is a dockershim-style pause container of the machine's own
/// dockerd (run with its CLI, as the kubelet's dockershim named and labelled them), podagent
/// set to `runtime.kind = "docker"`, and the netns it enters is `/proc/<pid>/ns/net` of the
/// pause process in the machine's PID namespace, which only a podagent inside can see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_service_hot_plugs_into_a_docker_sandbox() {
    let _one = ONE_MACHINE.lock().await;
    let (node, _) = installed_node_on("docker");
    let machine = node.machine();
    let pause = testkit::host::image_tar(testkit::host::PAUSE_IMAGE);
    fs::copy(&pause, machine.share().join("pause.tar")).expect("hand in the pause image");
    machine.run(&["docker", "load", "-i", &format!("{SHARE}/pause.tar")]);
    put_green(&node);
    machine.run(&["systemctl", "enable", "--now", UNIT]);

    let namespace = node.ns("default");
    let uid = node.create_pod("default", "dock", json!({}));
    let id = machine.run(&[
        "docker",
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &format!("k8s_POD_dock_{namespace}_{uid}_0"),
        "--label",
        &format!("io.kubernetes.pod.uid={uid}"),
        "--label",
        "io.kubernetes.docker.type=podsandbox",
        "--label",
        "io.kubernetes.pod.name=dock",
        "--label",
        &format!("io.kubernetes.pod.namespace={namespace}"),
        testkit::host::PAUSE_IMAGE,
    ]);
    let id = id.trim();
    node.report_running("default", "dock", id, 0);
    let pid = machine.run(&["docker", "inspect", "-f", "{{.State.Pid}}", id]);
    let netns = machine.host_path(format!("/proc/{}/ns/net", pid.trim()));

    let green = podagent::annotation::ifname("green");
    node.set_networks("default", "dock", Some(r#"[{"name":"green"}]"#));
    let address = node
        .eventually("green plugged into the Docker sandbox", || {
            ipv4(&netns, &green)
        })
        .await;
    assert!(node.in_quarter(&address, 1), "{address}");
    node.set_networks("default", "dock", None);
    node.eventually("green removed from the Docker sandbox", || {
        (!has_link(&netns, &green)).then_some(())
    })
    .await;
}
