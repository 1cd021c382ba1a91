//! What the two CRI runtime fixtures (containerd and CRI-O) share: one private daemon answering
//! CRI on a socket in its own dir, with pod sandboxes made the way the kubelet makes them, a
//! bridge CNI network on a leased subnet, and the teardown.
//!
//! The runtimes differ in how they are configured, started and fed images, and in where they
//! put a sandbox's netns (containerd bind-mounts `cni-<uuid>` under `/var/run/netns`; CRI-O's
//! pinns pins it under its `namespaces_dir`, with no infra process at all); that stays in
//! their own modules. Everything CRI can do is done here, once.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata, PodSandboxState,
    PodSandboxStateValue, PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StopPodSandboxRequest, VersionRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::process::{self, Daemon, SubnetLease};
use crate::netns::{run_ip, unique_name};
use crate::prereq;

/// How long the daemon may take to answer on its socket after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The checks both runtimes need before they start: root, runc, the Debian CNI plugins.
pub(crate) fn require_common() {
    prereq::require_root();
    prereq::require_command("runc", "runc");
    prereq::require_path(
        Path::new("/usr/lib/cni/bridge"),
        "the Debian package containernetworking-plugins",
    );
}

/// A fresh private dir for a runtime instance, kept until the fixture removes it.
pub(crate) fn instance_dir(prefix: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|err| panic!("cannot create a temp dir for {prefix}: {err}"))
        .keep()
}

/// How a runtime fixture's daemon is run: what [`CriDaemon`] needs to know of it.
#[derive(Debug)]
pub(crate) struct Flavor {
    /// The daemon's name in messages and its log file's (`<dir>/<name>.log`).
    pub name: &'static str,
    /// The daemon's command line for the instance dir.
    pub command: fn(&Path) -> Command,
    /// The socket it answers CRI on.
    pub socket: PathBuf,
    /// Where runc keeps the instance's container state.
    pub runc_root: PathBuf,
    /// Other namespace kinds the runtime pins beside a sandbox's netns, under the same file
    /// name in sibling dirs (CRI-O's pinns: `/var/run/utsns/<id>` beside `/var/run/netns/<id>`).
    pub pinned_siblings: &'static [&'static str],
    /// The mount namespace the daemon runs in (a kubelet node's, see `testkit::kubelet`), or
    /// `None` for the test's own.
    pub mount_ns: Option<PathBuf>,
}

impl Flavor {
    /// The daemon, spawned for the instance in `dir` (in its mount namespace, if it has one).
    fn spawn(&self, dir: &Path) -> Daemon {
        let command = (self.command)(dir);
        let command = match &self.mount_ns {
            Some(ns) => process::in_mount_ns(ns, &command),
            None => command,
        };
        Daemon::spawn(self.name, command, &dir.join(format!("{}.log", self.name)))
    }
}

/// CRI on a unix socket, used the way the kubelet uses it. [`CriDaemon`] is one on a daemon the
/// test owns; a runtime inside a booted node (`testkit::nspawn`) is reached through one alone.
#[derive(Debug, Clone)]
pub struct CriSocket {
    /// The runtime's name, for messages.
    name: &'static str,
    socket: PathBuf,
}

impl CriSocket {
    /// CRI of runtime `name` at `socket`.
    pub fn new(name: &'static str, socket: impl Into<PathBuf>) -> CriSocket {
        CriSocket {
            name,
            socket: socket.into(),
        }
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A CRI runtime client on a fresh connection to the socket.
    pub async fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        let channel = connect(&self.socket).await.unwrap_or_else(|err| {
            panic!(
                "cannot connect to {} at {}: {err}",
                self.name,
                self.socket.display()
            )
        });
        RuntimeServiceClient::new(channel)
    }

    /// Creates a pod sandbox the way the kubelet does (metadata, the `io.kubernetes.pod.*`
    /// labels, its namespaces) with its logs in `log_dir`; its id, or the runtime's refusal.
    pub async fn try_run_pod_sandbox(
        &self,
        uid: &str,
        name: &str,
        namespace: &str,
        log_dir: &Path,
    ) -> Result<String, tonic::Status> {
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
            log_directory: log_dir.display().to_string(),
            labels,
            // What the kubelet asks for a pod without `shareProcessNamespace`: network and IPC
            // per pod, PID per container. (The zero value would be a pod-wide PID namespace,
            // which makes CRI-O run an infra process to hold it.)
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod.into(),
                        pid: NamespaceMode::Container.into(),
                        ipc: NamespaceMode::Pod.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(self
            .runtime_client()
            .await
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id)
    }

    /// The id of the newest ready sandbox of pod `uid` (label `io.kubernetes.pod.uid`), as
    /// podagent looks for it.
    pub async fn ready_sandbox(&self, uid: &str) -> Option<String> {
        let filter = PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxReady.into(),
            }),
            label_selector: HashMap::from([("io.kubernetes.pod.uid".to_owned(), uid.to_owned())]),
            ..Default::default()
        };
        self.runtime_client()
            .await
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await
            .ok()?
            .into_inner()
            .items
            .into_iter()
            .max_by_key(|sandbox| sandbox.created_at)
            .map(|sandbox| sandbox.id)
    }

    /// The network namespace file of sandbox `id`, from the verbose `PodSandboxStatus`
    /// (`info["info"].runtimeSpec.linux.namespaces[type=network].path`), as the runtime sees it.
    pub async fn sandbox_netns(&self, id: &str) -> PathBuf {
        sandbox_netns_at(&self.socket, id)
            .await
            .unwrap_or_else(|err| panic!("cannot find the netns of sandbox {id}: {err}"))
    }

    /// Stops sandbox `id` (the runtime runs CNI DEL and removes its netns).
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

    /// Whether the runtime answers CRI `Version`.
    pub async fn answers(&self) -> bool {
        match connect(&self.socket).await {
            Ok(channel) => RuntimeServiceClient::new(channel)
                .version(VersionRequest::default())
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Stops and removes every sandbox, so the runtime runs CNI DEL and tears down netns and
    /// mounts itself; the netns files they had, in case it fails to. Blocks the thread (for
    /// `Drop`), for at most a minute.
    pub fn remove_all_sandboxes(&self) -> Vec<PathBuf> {
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
        found.flatten().unwrap_or_default()
    }
}

/// A running private CRI runtime; stopped, and everything it made removed, on drop. Its CRI
/// calls are [`CriSocket`]'s.
#[derive(Debug)]
pub struct CriDaemon {
    dir: PathBuf,
    cri: CriSocket,
    flavor: Flavor,
    daemon: Daemon,
    network: CniNetwork,
    /// Netns files of sandboxes seen, removed by hand on drop if the runtime left them.
    netns: Mutex<BTreeSet<PathBuf>>,
}

impl CriDaemon {
    /// Spawns the `flavor` of daemon for the instance in `dir` and waits until CRI answers.
    /// `network` is the CNI network its config names ([`cni_network`]).
    pub(crate) async fn start(flavor: Flavor, dir: PathBuf, network: CniNetwork) -> CriDaemon {
        let daemon = flavor.spawn(&dir);
        let mut cri = CriDaemon {
            cri: CriSocket::new(flavor.name, flavor.socket.clone()),
            dir,
            flavor,
            daemon,
            network,
            netns: Mutex::new(BTreeSet::new()),
        };
        cri.wait_ready().await;
        cri
    }

    /// The instance's private dir (root, state, CNI config, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's process id (it changes on [`CriDaemon::restart`]).
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The subnet the instance's CNI network hands out, `198.19.<n>.0/24`.
    pub fn subnet(&self) -> String {
        self.network.lease.subnet()
    }

    /// The host bridge the instance's CNI network attaches sandboxes to.
    pub fn bridge(&self) -> &str {
        &self.network.bridge
    }

    /// The prefix of the addresses in [`CriDaemon::subnet`], `198.19.<n>.`.
    pub fn address_prefix(&self) -> String {
        self.network.lease.address_prefix()
    }

    /// The directory runc keeps the instance's containers' state in.
    pub fn runc_root(&self) -> &Path {
        &self.flavor.runc_root
    }

    /// The end of the daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }

    /// Creates a pod sandbox the way the kubelet does and returns its id; panics with the
    /// daemon's log when the runtime refuses. Its netns gets `eth0` from the instance's bridge
    /// network.
    pub async fn run_pod_sandbox(&self, uid: &str, name: &str, namespace: &str) -> String {
        let log_dir = self.dir.join("pods").join(uid);
        fs::create_dir_all(&log_dir)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", log_dir.display()));
        let id = self
            .cri
            .try_run_pod_sandbox(uid, name, namespace, &log_dir)
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "RunPodSandbox for pod {namespace}/{name} failed: {status}; {} log:\n{}",
                    self.flavor.name,
                    self.daemon.log_tail()
                )
            });
        let netns = self.sandbox_netns(&id).await;
        self.record_netns(netns);
        id
    }

    /// Stops the daemon and starts it again on the same dirs and socket; sandboxes keep their
    /// netns (and containers their monitors), as with a runtime upgrade on a real node.
    pub async fn restart(&mut self) {
        self.stop_daemon().await;
        self.start_daemon().await;
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 2 s) and leaves it down, so a
    /// test can watch a client fail and then recover after [`CriDaemon::start_daemon`].
    /// Sandboxes keep running.
    pub async fn stop_daemon(&mut self) {
        self.daemon.stop_async().await;
    }

    /// Starts the daemon again on the same dirs and socket (stopping it first if it runs) and
    /// waits until CRI answers.
    pub async fn start_daemon(&mut self) {
        self.daemon.stop_async().await;
        self.daemon = self.flavor.spawn(&self.dir);
        self.wait_ready().await;
    }

    /// Polls the socket until CRI answers `Version`, or panics with the daemon's log.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.daemon.assert_running();
            if self.cri.answers().await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not answer on {} within {READY_TIMEOUT:?}; log:\n{}",
                    self.flavor.name,
                    self.cri.socket().display(),
                    self.daemon.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn record_netns(&self, netns: PathBuf) {
        self.netns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(netns);
    }

    /// Force-deletes containers runc still knows in the private runc root (when CRI could not
    /// stop them), so no container process outlives the instance.
    fn delete_runc_leftovers(&self) {
        let runc_root = &self.flavor.runc_root;
        if !runc_root.is_dir() {
            return;
        }
        let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(runc_root)
            .args(["list", "-q"])
            .output()
        else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(runc_root)
                .args(["delete", "--force", id])
                .output();
        }
    }
}

impl std::ops::Deref for CriDaemon {
    type Target = CriSocket;

    fn deref(&self) -> &CriSocket {
        &self.cri
    }
}

impl Drop for CriDaemon {
    fn drop(&mut self) {
        for netns in self.cri.remove_all_sandboxes() {
            self.record_netns(netns);
        }
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
            if let (Some(kinds), Some(id)) =
                (path.parent().and_then(Path::parent), path.file_name())
            {
                for kind in self.flavor.pinned_siblings {
                    let sibling = kinds.join(kind).join(id);
                    if sibling.exists() {
                        process::remove_netns_file(&sibling);
                    }
                }
            }
            process::remove_netns_file(&path);
        }
        process::unmount_under(&self.dir);
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!(
                "{} fixture: cannot remove {}: {err}",
                self.flavor.name,
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

/// An instance's own CNI network: its host bridge and the subnet it hands out. The bridge is
/// deleted on drop, after the fields of whoever holds it that come before it.
#[derive(Debug)]
pub(crate) struct CniNetwork {
    pub(crate) bridge: String,
    pub(crate) lease: SubnetLease,
}

impl Drop for CniNetwork {
    fn drop(&mut self) {
        process::delete_link(&self.bridge);
    }
}

/// A bridge and subnet of the instance's own, and its CNI conflist written to
/// `<dir>/net.d/10-podagent-test.conflist`: the bridge plugin with host-local addresses from the
/// lease (data in `<dir>/ipam`), no gateway and no masquerade, so nothing appears in the host's
/// namespace but the bridge.
///
/// The bridge is made here with the lease's MAC rather than left to the plugin. A bridge whose
/// address was never set takes the lowest of its ports' addresses, so its MAC moves as sandboxes
/// come and go, and CRI-O's CNI CHECK right after an ADD then failed the sandbox with
/// "Bridge interface … Mac doesn't match". An address that was set stays.
pub(crate) fn cni_network(dir: &Path) -> CniNetwork {
    let network = CniNetwork {
        bridge: unique_name("cbr"),
        lease: SubnetLease::acquire(),
    };
    let (bridge, lease) = (&network.bridge, &network.lease);
    run_ip(&[
        "link",
        "add",
        "name",
        bridge,
        "address",
        &lease.mac(),
        "type",
        "bridge",
    ]);
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
    write_file(
        &dir.join("net.d/10-podagent-test.conflist"),
        &conflist.to_string(),
    );
    network
}

/// Writes `text` to `path`, creating its parent dirs; panics naming the path.
pub(crate) fn write_file(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", parent.display()));
    }
    fs::write(path, text).unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
}

/// Whether an overlay mount with its upper dir in `dir` succeeds (probe mounted and unmounted).
pub(crate) fn overlay_works(dir: &Path) -> bool {
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
