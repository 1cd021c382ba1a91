//! A private containerd with the CRI plugin, for tests that need real pod sandboxes.
//!
//! Everything the daemon owns is under one temp dir: root, state, the gRPC and ttrpc sockets,
//! runc's state (its `Root` option, so nothing lands in the host's `/run/containerd/runc`), the
//! CNI config and the host-local IPAM data. The CNI network is a bridge with a per-instance name
//! and a leased /24 from 198.19.0.0/16, without gateway or masquerade, so no address or rule
//! appears in the host's namespace. `restrict_oom_score_adj` is required on hosts without
//! CAP_SYS_RESOURCE, where runc cannot lower the sandbox's oom_score_adj.
//!
//! The snapshotter is overlayfs, like on real nodes. Where the temp dir cannot hold an overlay
//! upper dir (a test host whose `/tmp` is itself overlayfs, as inside a container, or a kernel
//! without overlay) a probe mount fails and the instance falls back to the `native` snapshotter,
//! which copies layers instead: slower to unpack, identical for sandboxes and their netns.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest, VersionRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::images::{BUSYBOX_IMAGE, PAUSE_IMAGE, image_tar};
use super::process::{self, Daemon, SubnetLease};
use crate::netns::unique_name;
use crate::prereq;

/// The namespace the CRI plugin keeps its images and sandboxes in.
const CRI_NAMESPACE: &str = "k8s.io";

/// How long the daemon may take to answer on its socket after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running private containerd; stopped, and everything it made removed, on drop.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    daemon: Daemon,
    bridge: String,
    lease: SubnetLease,
    snapshotter: &'static str,
    /// Netns files of sandboxes seen, removed by hand on drop if the runtime left them.
    netns: Mutex<BTreeSet<PathBuf>>,
}

impl Containerd {
    /// Starts a private containerd, waits until CRI answers, and imports the pause and busybox
    /// images into `k8s.io`. Panics naming what is missing (root, containerd, runc, CNI plugins,
    /// images) or, with the daemon's log, when it does not come up.
    pub async fn start() -> Containerd {
        prereq::require_root();
        prereq::require_command("containerd", "containerd");
        prereq::require_command("ctr", "containerd");
        prereq::require_command("runc", "runc");
        prereq::require_path(
            Path::new("/usr/lib/cni/bridge"),
            "the Debian package containernetworking-plugins",
        );
        let pause = image_tar(PAUSE_IMAGE);
        let busybox = image_tar(BUSYBOX_IMAGE);

        let lease = SubnetLease::acquire();
        let dir = tempfile::Builder::new()
            .prefix("pa-ctd")
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a temp dir for containerd: {err}"))
            .keep();
        let socket = dir.join("containerd.sock");
        let bridge = unique_name("cbr");
        let snapshotter = if overlay_works(&dir) {
            "overlayfs"
        } else {
            "native"
        };
        write_config(&dir, &socket, snapshotter, &bridge, &lease);

        let daemon = Daemon::spawn(
            "containerd",
            daemon_command(&dir),
            &dir.join("containerd.log"),
        );
        let mut containerd = Containerd {
            dir,
            socket,
            daemon,
            bridge,
            lease,
            snapshotter,
            netns: Mutex::new(BTreeSet::new()),
        };
        containerd.wait_ready().await;
        for tar in [pause, busybox] {
            containerd.import(&tar).await;
        }
        containerd
    }

    /// The CRI (and containerd API) socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The instance's private dir (root, state, CNI config, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's process id (it changes on [`Containerd::restart`]).
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The subnet the instance's CNI network hands out, `198.19.<n>.0/24`.
    pub fn subnet(&self) -> String {
        self.lease.subnet()
    }

    /// The snapshotter in use: `overlayfs`, or `native` where an overlay mount fails.
    pub fn snapshotter(&self) -> &str {
        self.snapshotter
    }

    /// The directory runc keeps the CRI containers' state in (private to this instance).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc").join(CRI_NAMESPACE)
    }

    /// The host bridge the instance's CNI network attaches sandboxes to.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// A CRI runtime client on a fresh connection to the socket.
    pub async fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        let channel = connect(&self.socket).await.unwrap_or_else(|err| {
            panic!(
                "cannot connect to containerd at {}: {err}",
                self.socket.display()
            )
        });
        RuntimeServiceClient::new(channel)
    }

    /// Creates a pod sandbox the way the kubelet does (metadata, and the `io.kubernetes.pod.*`
    /// labels) and returns its id. Its netns gets `eth0` from the instance's bridge network.
    pub async fn run_pod_sandbox(&self, uid: &str, name: &str, namespace: &str) -> String {
        let labels = HashMap::from([
            ("io.kubernetes.pod.uid".to_owned(), uid.to_owned()),
            ("io.kubernetes.pod.name".to_owned(), name.to_owned()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                namespace.to_owned(),
            ),
        ]);
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: uid.to_owned(),
                namespace: namespace.to_owned(),
                attempt: 0,
            }),
            hostname: name.to_owned(),
            log_directory: self.dir.join("pods").join(uid).display().to_string(),
            labels,
            ..Default::default()
        };
        let id = self
            .runtime_client()
            .await
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "RunPodSandbox for pod {namespace}/{name} failed: {status}; containerd log:\n{}",
                    self.daemon.log_tail()
                )
            })
            .into_inner()
            .pod_sandbox_id;
        let netns = self.sandbox_netns(&id).await;
        self.record_netns(netns);
        id
    }

    /// The network namespace file of sandbox `id`, from the verbose `PodSandboxStatus`
    /// (`info["info"].runtimeSpec.linux.namespaces[type=network].path`).
    pub async fn sandbox_netns(&self, id: &str) -> PathBuf {
        sandbox_netns_at(&self.socket, id)
            .await
            .unwrap_or_else(|err| panic!("cannot find the netns of sandbox {id}: {err}"))
    }

    /// Stops sandbox `id` (containerd runs CNI DEL and removes its netns).
    pub async fn stop_pod_sandbox(&self, id: &str) {
        self.runtime_client()
            .await
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("StopPodSandbox {id} failed: {status}"));
    }

    /// Removes stopped sandbox `id`.
    pub async fn remove_pod_sandbox(&self, id: &str) {
        self.runtime_client()
            .await
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("RemovePodSandbox {id} failed: {status}"));
    }

    /// Stops the daemon and starts it again on the same dirs and socket; sandboxes keep running
    /// (their shims outlive the daemon), as with a containerd upgrade on a real node.
    pub async fn restart(&mut self) {
        self.stop_daemon().await;
        self.start_daemon().await;
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 2 s) and leaves it down, so a
    /// test can watch a client fail and then recover after [`Containerd::start_daemon`].
    /// Sandboxes keep running.
    pub async fn stop_daemon(&mut self) {
        self.daemon.stop_async().await;
    }

    /// Starts the daemon again on the same dirs and socket (stopping it first if it runs) and
    /// waits until CRI answers.
    pub async fn start_daemon(&mut self) {
        self.daemon.stop_async().await;
        self.daemon = Daemon::spawn(
            "containerd",
            daemon_command(&self.dir),
            &self.dir.join("containerd.log"),
        );
        self.wait_ready().await;
    }

    /// Polls the socket until CRI answers `Version`, or panics with the daemon's log.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.daemon.assert_running();
            if let Ok(channel) = connect(&self.socket).await
                && RuntimeServiceClient::new(channel)
                    .version(VersionRequest::default())
                    .await
                    .is_ok()
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "containerd did not answer on {} within {READY_TIMEOUT:?}; log:\n{}",
                    self.socket.display(),
                    self.daemon.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `ctr images import` into the CRI namespace.
    async fn import(&self, tar: &Path) {
        let out = tokio::process::Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", CRI_NAMESPACE, "images", "import"])
            .arg(tar)
            .output()
            .await
            .unwrap_or_else(|err| panic!("cannot run ctr images import: {err}"));
        if !out.status.success() {
            panic!(
                "ctr images import {} failed: {}",
                tar.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }

    fn record_netns(&self, netns: PathBuf) {
        self.netns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(netns);
    }

    /// Stops and removes every sandbox through CRI, so containerd runs CNI DEL and tears down
    /// netns and mounts itself; records their netns files in case it fails to.
    fn remove_all_sandboxes(&self) {
        let socket = self.socket.clone();
        let found = process::block_on_aside(async move {
            let work = async {
                let mut client = RuntimeServiceClient::new(connect(&socket).await.ok()?);
                let sandboxes = client
                    .list_pod_sandbox(ListPodSandboxRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .items;
                let mut netns = Vec::new();
                for sandbox in sandboxes {
                    let id = sandbox.id;
                    if let Ok(path) = sandbox_netns_at(&socket, &id).await {
                        netns.push(path);
                    }
                    let _ = client
                        .stop_pod_sandbox(StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await;
                    let _ = client
                        .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                        .await;
                }
                Some(netns)
            };
            tokio::time::timeout(Duration::from_secs(60), work)
                .await
                .ok()
                .flatten()
        });
        for netns in found.flatten().unwrap_or_default() {
            self.record_netns(netns);
        }
    }

    /// Force-deletes containers runc still knows in the private runc root (when CRI could not
    /// stop them), so no container process outlives the instance.
    fn delete_runc_leftovers(&self) {
        let root = self.runc_root();
        if !root.is_dir() {
            return;
        }
        let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
        else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", id])
                .output();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all_sandboxes();
        self.delete_runc_leftovers();
        self.daemon.stop();
        process::kill_processes_naming(&self.dir);
        let netns = std::mem::take(
            &mut *self
                .netns
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for path in netns {
            process::remove_netns_file(&path);
        }
        process::unmount_under(&self.dir);
        process::delete_link(&self.bridge);
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!(
                "containerd fixture: cannot remove {}: {err}",
                self.dir.display()
            );
        }
    }
}

/// Opens a tonic channel over the unix socket at `socket`.
async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector always dials the socket.
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// Reads the netns path of sandbox `id` out of the verbose status JSON.
async fn sandbox_netns_at(socket: &Path, id: &str) -> Result<PathBuf, String> {
    let channel = connect(socket).await.map_err(|err| err.to_string())?;
    let response = RuntimeServiceClient::new(channel)
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: true,
        })
        .await
        .map_err(|status| format!("PodSandboxStatus: {status}"))?
        .into_inner();
    let info = response
        .info
        .get("info")
        .ok_or("verbose status has no info[\"info\"]")?;
    let info: serde_json::Value =
        serde_json::from_str(info).map_err(|err| format!("info[\"info\"] is not JSON: {err}"))?;
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .map(PathBuf::from)
        .ok_or_else(|| "runtimeSpec.linux.namespaces has no network path".to_owned())
}

/// Whether an overlay mount with its upper dir in `dir` succeeds (probe mounted and unmounted).
fn overlay_works(dir: &Path) -> bool {
    let probe = dir.join("overlay-probe");
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| probe.join(d));
    for d in [&lower, &upper, &work, &merged] {
        if fs::create_dir_all(d).is_err() {
            return false;
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let mounted = nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .is_ok();
    if mounted {
        let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = fs::remove_dir_all(&probe);
    mounted
}

/// The daemon command line: only the config, which names every path.
fn daemon_command(dir: &Path) -> Command {
    let mut command = Command::new("containerd");
    command.arg("--config").arg(dir.join("config.toml"));
    command
}

/// Writes `config.toml` and the CNI conflist for the instance in `dir`.
fn write_config(dir: &Path, socket: &Path, snapshotter: &str, bridge: &str, lease: &SubnetLease) {
    let d = dir.display();
    let config = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/net.d"
"#,
        socket = socket.display(),
    );
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "podagent-test",
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": lease.subnet() }]],
                "dataDir": dir.join("ipam"),
            },
        }],
    });
    let write = |path: PathBuf, text: String| {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|err| panic!("cannot create {}: {err}", parent.display()));
        }
        fs::write(&path, text)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    };
    write(dir.join("config.toml"), config);
    write(
        dir.join("net.d/10-podagent-test.conflist"),
        conflist.to_string(),
    );
}
