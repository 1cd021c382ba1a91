//! The real test host works: private containerd, CRI-O and dockerd give pod sandboxes with findable
//! network namespaces, the Debian CNI plugins plug interfaces into a netns, and the fixtures
//! leave nothing behind. Runs as root against the real daemons.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use k8s_cri::v1::PodSandboxStatusRequest;
use testkit::host::{CRIO_NAMESPACES_DIR, Containerd, Crio, Dockerd, SubnetLease};
use testkit::netns::{TestNetns, unique_name};
use testkit::prereq;

/// Interface name → IPv4 addresses inside the netns at `path` (`nsenter --net ip -j addr`).
fn addresses_in(netns: &Path) -> Vec<(String, Vec<String>)> {
    prereq::require_command("nsenter", "util-linux");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-j", "addr", "show"])
        .output()
        .expect("nsenter runs");
    assert!(
        out.status.success(),
        "nsenter --net={} ip addr failed: {}",
        netns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let links: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
    links
        .iter()
        .map(|link| {
            let name = link["ifname"].as_str().unwrap_or_default().to_owned();
            let addrs = link["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|addr| addr["family"] == "inet")
                .filter_map(|addr| addr["local"].as_str().map(str::to_owned))
                .collect();
            (name, addrs)
        })
        .collect()
}

/// The addresses of interface `ifname` inside `netns`, or `None` when it is absent.
fn interface_addresses(netns: &Path, ifname: &str) -> Option<Vec<String>> {
    addresses_in(netns)
        .into_iter()
        .find(|(name, _)| name == ifname)
        .map(|(_, addrs)| addrs)
}

/// `198.19.<n>.` for `198.19.<n>.0/24`.
fn prefix_of(subnet: &str) -> String {
    subnet.trim_end_matches("0/24").to_owned()
}

#[tokio::test]
async fn cri_sandbox_has_eth0_in_its_netns_until_stopped() {
    let started = Instant::now();
    let containerd = Containerd::start().await;
    eprintln!(
        "containerd ({} snapshotter) started with images in {:?}",
        containerd.snapshotter(),
        started.elapsed()
    );

    let started = Instant::now();
    let id = containerd
        .run_pod_sandbox("uid-cri-1", "web", "default")
        .await;
    eprintln!("RunPodSandbox took {:?}", started.elapsed());

    // Find the netns the way podagent will: the verbose status JSON.
    let status = containerd
        .runtime_client()
        .await
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus answers")
        .into_inner();
    let metadata = status
        .status
        .and_then(|s| s.metadata)
        .expect("status has metadata");
    assert_eq!(metadata.uid, "uid-cri-1");
    let info: serde_json::Value =
        serde_json::from_str(&status.info["info"]).expect("info[\"info\"] is JSON");
    let netns = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .expect("runtimeSpec.linux.namespaces is a list")
        .iter()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .map(PathBuf::from)
        .expect("a network namespace with a path");
    assert!(
        netns.starts_with("/var/run/netns") && netns.exists(),
        "netns {} should be a live file under /var/run/netns",
        netns.display()
    );
    assert_eq!(containerd.sandbox_netns(&id).await, netns);
    assert!(
        containerd.runc_root().join(&id).is_dir(),
        "runc state lives in the instance's own runc root"
    );
    assert!(
        !Path::new("/run/containerd/runc/k8s.io").join(&id).exists(),
        "nothing lands in the host's default runc root"
    );

    let eth0 = interface_addresses(&netns, "eth0").expect("eth0 inside the sandbox netns");
    let prefix = prefix_of(&containerd.subnet());
    assert!(
        eth0.iter().any(|addr| addr.starts_with(&prefix)),
        "eth0 addresses {eth0:?} should be in {}",
        containerd.subnet()
    );

    containerd.stop_pod_sandbox(&id).await;
    assert!(
        !netns.exists(),
        "{} should be gone after StopPodSandbox",
        netns.display()
    );
    containerd.remove_pod_sandbox(&id).await;
}

#[tokio::test]
async fn cri_sandbox_survives_a_containerd_restart() {
    let mut containerd = Containerd::start().await;
    let id = containerd
        .run_pod_sandbox("uid-cri-2", "db", "default")
        .await;
    let netns = containerd.sandbox_netns(&id).await;
    let old_pid = containerd.pid();

    let mut client = containerd.runtime_client().await;
    containerd.stop_daemon().await;
    assert!(
        client
            .version(k8s_cri::v1::VersionRequest::default())
            .await
            .is_err(),
        "CRI does not answer while the daemon is down"
    );
    containerd.start_daemon().await;
    assert!(
        client
            .version(k8s_cri::v1::VersionRequest::default())
            .await
            .is_ok(),
        "the same client works again once the daemon is back"
    );

    let started = Instant::now();
    containerd.restart().await;
    eprintln!("containerd restart took {:?}", started.elapsed());

    assert_ne!(containerd.pid(), old_pid, "a new daemon process runs");
    assert_eq!(containerd.sandbox_netns(&id).await, netns);
    assert!(
        interface_addresses(&netns, "eth0").is_some(),
        "the sandbox keeps eth0 across the restart"
    );
}

#[tokio::test]
async fn dropping_containerd_leaves_no_process_mount_netns_or_dir() {
    let containerd = Containerd::start().await;
    let id = containerd
        .run_pod_sandbox("uid-cri-3", "cache", "default")
        .await;
    let netns = containerd.sandbox_netns(&id).await;
    let pid = containerd.pid();
    let dir = containerd.dir().to_path_buf();
    let bridge = containerd.bridge().to_owned();
    assert!(
        Path::new("/sys/class/net").join(&bridge).exists(),
        "the CNI bridge exists"
    );
    // NET_ADDR_SET: the fixture set the bridge's MAC, so sandboxes joining and leaving do not
    // move it (a moved MAC fails CRI-O's CNI CHECK after an ADD).
    let assign = std::fs::read_to_string(format!("/sys/class/net/{bridge}/addr_assign_type"))
        .expect("addr_assign_type readable");
    assert_eq!(
        assign.trim(),
        "3",
        "the CNI bridge's MAC is set, not derived from its ports"
    );

    drop(containerd);

    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "containerd {pid} is gone"
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo readable");
    let dir_text = dir.display().to_string();
    assert!(
        !mountinfo.contains(&dir_text),
        "no mount under {dir_text} should remain"
    );
    assert!(!dir.exists(), "{dir_text} should be removed");
    assert!(!netns.exists(), "{} should be removed", netns.display());
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "bridge {bridge} should be removed"
    );
    assert_no_process_names(&dir);
}

/// CRI-O pins each sandbox's namespaces in `/var/run/{netns,ipcns,utsns}/<id>`, outside its
/// instance dir: dropping the fixture removes them, through CRI when the daemon runs and by the
/// recorded id when it is already down (a test that stopped it, or a crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_crio_leaves_no_process_pinned_namespace_mount_or_dir() {
    for daemon_down in [false, true] {
        let mut crio = Crio::start().await;
        let id = crio
            .run_pod_sandbox("uid-crio-1", "pinned", "default")
            .await;
        let netns = crio.sandbox_netns(&id).await;
        let pin = netns.file_name().expect("a pinned file").to_owned();
        let pinned: Vec<PathBuf> = ["netns", "ipcns", "utsns"]
            .iter()
            .map(|kind| Path::new(CRIO_NAMESPACES_DIR).join(kind).join(&pin))
            .collect();
        for path in &pinned {
            assert!(path.exists(), "CRI-O pinned {}", path.display());
        }
        let eth0 = interface_addresses(&netns, "eth0").expect("eth0 inside the sandbox netns");
        assert!(
            eth0.iter()
                .any(|addr| addr.starts_with(&prefix_of(&crio.subnet()))),
            "eth0 addresses {eth0:?} should be in {}",
            crio.subnet()
        );
        if daemon_down {
            crio.stop_daemon().await;
        }
        let (pid, dir, bridge) = (
            crio.pid(),
            crio.dir().to_path_buf(),
            crio.bridge().to_owned(),
        );

        drop(crio);

        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "crio {pid} is gone"
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        for path in &pinned {
            assert!(!path.exists(), "{} should be removed", path.display());
            assert!(
                !mountinfo.contains(&path.display().to_string()),
                "{} should be unmounted",
                path.display()
            );
        }
        assert!(!dir.exists(), "{} should be removed", dir.display());
        assert!(
            !Path::new("/sys/class/net").join(&bridge).exists(),
            "bridge {bridge} should be removed"
        );
        assert_no_process_names(&dir);
    }
}

/// Fails when a process (a shim, docker's containerd) still names `dir` on its command line.
fn assert_no_process_names(dir: &Path) {
    let marker = dir.join("").display().to_string();
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc readable")
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&marker))
        .collect();
    assert!(
        leftovers.is_empty(),
        "processes naming {marker} remain: {leftovers:?}"
    );
}

#[tokio::test]
async fn containerd_is_cleaned_up_when_the_test_panics() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let record = seen.clone();
    let failing_test = tokio::spawn(async move {
        let containerd = Containerd::start().await;
        let id = containerd
            .run_pod_sandbox("uid-cri-4", "crash", "default")
            .await;
        let netns = containerd.sandbox_netns(&id).await;
        *record.lock().unwrap() = Some((containerd.pid(), containerd.dir().to_path_buf(), netns));
        panic!("the test fails while its sandbox runs");
    });
    assert!(failing_test.await.is_err_and(|err| err.is_panic()));

    let (pid, dir, netns) = seen
        .lock()
        .unwrap()
        .take()
        .expect("the sandbox was created");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "containerd {pid} is gone"
    );
    assert!(!dir.exists(), "{} should be removed", dir.display());
    assert!(!netns.exists(), "{} should be removed", netns.display());
    assert_no_process_names(&dir);
}

#[tokio::test]
async fn docker_sandbox_with_kubernetes_labels_has_only_loopback() {
    let started = Instant::now();
    let dockerd = Dockerd::start().await;
    eprintln!("dockerd started with images in {:?}", started.elapsed());

    let id = dockerd.run_sandbox("uid-dkr-1", "web", "default").await;
    let inspect = dockerd
        .client()
        .inspect_container(
            &id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .expect("inspect answers");
    let labels = inspect.config.and_then(|c| c.labels).expect("labels");
    assert_eq!(labels["io.kubernetes.pod.uid"], "uid-dkr-1");
    assert_eq!(labels["io.kubernetes.docker.type"], "podsandbox");
    let pid = inspect.state.and_then(|s| s.pid).expect("a running pid");
    let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    assert_eq!(dockerd.sandbox_netns(&id).await, netns);

    let names: Vec<String> = addresses_in(&netns)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        vec!["lo".to_owned()],
        "a --network none sandbox has only lo"
    );

    dockerd.stop(&id).await;
    let state = dockerd
        .client()
        .inspect_container(
            &id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .expect("inspect answers")
        .state
        .expect("state");
    assert_eq!(state.running, Some(false), "the sandbox is stopped");

    let pid = dockerd.pid();
    let dir = dockerd
        .socket()
        .parent()
        .expect("socket in its dir")
        .to_path_buf();
    drop(dockerd);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "dockerd {pid} is gone"
    );
    assert!(!dir.exists(), "{} should be removed", dir.display());
    assert_no_process_names(&dir);
}

#[test]
fn bridge_plugin_adds_and_deletes_an_interface_in_a_netns() {
    prereq::require_root();
    prereq::require_path(
        Path::new("/usr/lib/cni/bridge"),
        "the Debian package containernetworking-plugins",
    );
    let netns = TestNetns::new();
    let lease = SubnetLease::acquire();
    let bridge = BridgeGuard(unique_name("tbr"));
    let data_dir = tempfile::tempdir().expect("temp dir");
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "podagent-host-test",
        "type": "bridge",
        "bridge": bridge.0,
        "isGateway": false,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": lease.subnet() }]],
            "dataDir": data_dir.path(),
        },
    });

    let result = run_bridge_plugin("ADD", &netns, &config);
    let result: serde_json::Value = serde_json::from_slice(&result).expect("ADD prints a result");
    assert_eq!(result["cniVersion"], "1.0.0");
    let addrs = interface_addresses(&netns.path(), "net1").expect("net1 inside the netns");
    assert!(
        addrs
            .iter()
            .any(|addr| addr.starts_with(&lease.address_prefix())),
        "net1 addresses {addrs:?} should be in {}",
        lease.subnet()
    );
    assert!(
        Path::new("/sys/class/net").join(&bridge.0).exists(),
        "bridge on the host"
    );

    run_bridge_plugin("DEL", &netns, &config);
    assert_eq!(
        interface_addresses(&netns.path(), "net1"),
        None,
        "DEL removes net1"
    );
}

/// Runs `/usr/lib/cni/bridge` with `CNI_COMMAND=<command>` for `net1` in `netns`; returns stdout.
fn run_bridge_plugin(command: &str, netns: &TestNetns, config: &serde_json::Value) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("/usr/lib/cni/bridge")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", netns.name())
        .env("CNI_NETNS", netns.path())
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bridge plugin starts");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(config.to_string().as_bytes())
        .expect("config written");
    let out = child.wait_with_output().expect("bridge plugin exits");
    assert!(
        out.status.success(),
        "bridge {command} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Deletes the host bridge the plugin created, also when the test fails.
struct BridgeGuard(String);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}
