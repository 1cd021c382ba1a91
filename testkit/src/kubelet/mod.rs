//! A node with a real kubelet: the cluster tier of the tests, the demo and `control-plane
//! --nodes`.
//!
//! Everywhere else a test plays the kubelet (it makes sandboxes over CRI and writes pod status);
//! here the kubelet does, so what podagent assumes of it is seen: it runs the pods the scheduler
//! places, runs their primary CNI, re-creates a sandbox whose pause process died, deletes pods in
//! its own order, writes status on its own schedule, answers `kubectl exec` and `logs`, and
//! runs DaemonSet pods with their probes.
//!
//! A [`KubeletNode`] is the kubelet (the pinned Kubernetes release, built beside the control
//! plane) with a containerd (or the CRI-O the setup builds) of its own — the kubelet removes
//! sandboxes it did not make, so it must own its runtime — and the node's primary network: the
//! Debian bridge + host-local on a leased /24 whose first address, on the bridge, is the node's
//! IP (the kubelet refuses loopback, and the API server dials it there for `exec`). It speaks to
//! the API server as `system:node:<name>` with a client certificate from the control plane's CA,
//! under the Node authorizer and NodeRestriction. Local images only.
//!
//! The host is left as it was: the kubelet and its runtime share a mount namespace of their own
//! ([`mount_ns`]), which takes their mounts, what they write to `/etc`, `/opt`, `/var/lib` and
//! `/var/log`, and the sysctls the kubelet wants;
//! its `PATH` has no `iptables`, so it adds no rules to the host's tables; the Node object is
//! deleted on drop. The config suits this kind of host: cgroup v1 (`failCgroupV1: false`), no
//! QoS cgroups, no swap check, no eviction or image GC thresholds that a busy disk could trip.

mod mount_ns;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::control_plane::{self, Admin};
use crate::host::process::Daemon;
use crate::host::{BUSYBOX_IMAGE, Containerd, CriDaemon, Crio};
use crate::netns::run_ip;
use crate::prereq;

use mount_ns::MountNs;

/// How long a kubelet gets from its start to a Ready Node without the `not-ready` taint (seen:
/// 1–2 s; the node lifecycle controller lifts the taint on its next pass, every 5 s), and a pod
/// from its creation to Running (seen: 1–2 s, the kubelet's PLEG relists every second).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The kubelet's `PATH`: without `/usr/sbin` and `/sbin`, so it finds no `iptables` and adds
/// none of its chains (`KUBE-FIREWALL`, `KUBE-IPTABLES-HINT`) to the host's tables.
const KUBELET_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What the pods of [`crate::node::Node::kubelet_pod`] run.
pub const POD_COMMAND: [&str; 2] = ["sleep", "3600"];
/// The command line of the pause image's process, which holds a sandbox's namespaces
/// (`testkit::host::images`).
pub const PAUSE_COMMAND: &str = "/bin/sleep 2147483647";

/// The pid of the process in the network namespace pinned at `netns` whose command line is
/// `command` (a pod's pause process, its container); panics listing what runs there.
pub fn pid_running(netns: &Path, command: &str) -> i32 {
    let processes = crate::host::processes_in_netns(netns);
    processes
        .iter()
        .find(|(_, cmdline)| cmdline == command)
        .map(|(pid, _)| *pid)
        .unwrap_or_else(|| panic!("no `{command}` in {}: {processes:?}", netns.display()))
}

/// The container runtime a kubelet node's kubelet drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRuntime {
    /// Debian's containerd (the default).
    Containerd,
    /// The CRI-O `scripts/setup-test-host.sh` builds.
    Crio,
}

/// The node's runtime, running.
enum Runtime {
    Containerd(Containerd),
    Crio(Crio),
}

/// A node run by a real kubelet; stopped, and everything it made removed, on drop.
pub struct KubeletNode {
    name: String,
    ip: String,
    config: PathBuf,
    // Dropped in this order: the kubelet (stopped first in `drop`), its runtime (which
    // removes the sandboxes through CRI), the mount namespace, the node's dir.
    kubelet: Option<Daemon>,
    admin: Admin,
    runtime: Runtime,
    mount_ns: MountNs,
    dir: tempfile::TempDir,
}

impl KubeletNode {
    /// Starts node `name` on containerd for the control plane serving at `server` whose dir
    /// (keys, admin kubeconfig) is `plane_dir`, and returns once the Node is Ready and
    /// schedulable. Panics with the kubelet's last log lines and its config when it does not get
    /// there.
    pub async fn start(name: &str, server: &str, plane_dir: &Path) -> KubeletNode {
        KubeletNode::start_on(NodeRuntime::Containerd, name, server, plane_dir).await
    }

    /// [`KubeletNode::start`] on `runtime`.
    pub async fn start_on(
        runtime: NodeRuntime,
        name: &str,
        server: &str,
        plane_dir: &Path,
    ) -> KubeletNode {
        prereq::require_root();
        prereq::require_command("unshare", "util-linux");
        prereq::require_command("nsenter", "util-linux");
        // Panics naming scripts/setup-test-host.sh when the kubelet is not built.
        control_plane::binary("kubelet");
        let dir = tempfile::Builder::new()
            .prefix("pa-kubelet")
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a kubelet node dir: {err}"));
        let mount_ns = MountNs::create(dir.path());
        let runtime = match runtime {
            NodeRuntime::Containerd => {
                Runtime::Containerd(Containerd::start_in(Some(mount_ns.path())).await)
            }
            NodeRuntime::Crio => {
                // What a CRI-O node's containers-common gives it: short image names (the
                // DaemonSet manifests' `kaloom/podagent:<v>`) resolve to docker.io.
                write(
                    &mount_ns.resolve("/etc/containers/registries.conf"),
                    "unqualified-search-registries = [\"docker.io\"]\n",
                );
                Runtime::Crio(Crio::start_in(Some(mount_ns.path())).await)
            }
        };
        let cri = runtime.cri();
        // The runtime's socket dir and CNI config where the node's own would be.
        let socket_dir = match runtime {
            Runtime::Containerd(_) => "/run/containerd",
            Runtime::Crio(_) => "/run/crio",
        };
        mount_ns.bind(cri.dir(), socket_dir);
        mount_ns.bind(&cri.dir().join("net.d"), "/etc/cni/net.d");
        let ip = format!("{}1", cri.address_prefix());
        run_ip(&["addr", "add", &format!("{ip}/24"), "dev", cri.bridge()]);
        run_ip(&["link", "set", cri.bridge(), "up"]);

        let pki = dir.path().join("pki");
        let (cert, key) = control_plane::client_certificate(
            &plane_dir.join("pki"),
            &format!("system:node:{name}"),
            "system:nodes",
        )
        .unwrap_or_else(|err| panic!("cannot issue node {name}'s client certificate: {err:#}"));
        write(&pki.join("node.crt"), &cert);
        write(&pki.join("node.key"), &key);
        let ca = plane_dir.join("pki").join("ca.crt");
        let kubeconfig = dir.path().join("kubelet.kubeconfig");
        write(
            &kubeconfig,
            &json!({
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "podagent-test", "cluster": {
                    "server": server, "certificate-authority": ca}}],
                "users": [{"name": name, "user": {
                    "client-certificate": pki.join("node.crt"),
                    "client-key": pki.join("node.key")}}],
                "contexts": [{"name": "node", "context": {
                    "cluster": "podagent-test", "user": name}}],
                "current-context": "node",
            })
            .to_string(),
        );
        let port = crate::free_port().expect("a free port for the kubelet");
        let config = dir.path().join("kubelet.yaml");
        write(
            &config,
            &serde_json::to_string_pretty(&kubelet_config(&ip, port, &ca, cri.socket()))
                .expect("json"),
        );
        let admin = Admin::new(&plane_dir.join("admin.kubeconfig"))
            .unwrap_or_else(|err| panic!("admin client for {server}: {err:#}"));

        let mut node = KubeletNode {
            name: name.to_string(),
            ip,
            config,
            kubelet: None,
            admin,
            runtime,
            mount_ns,
            dir,
        };
        node.kubelet = Some(node.spawn_kubelet());
        node.wait_ready().await;
        node
    }

    /// The node name (the Node object's, and `spec.nodeName` of its pods).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's IP: the first address of its pod network, on its bridge.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The node's runtime: its CRI socket is what podagent on this node uses.
    pub fn cri(&self) -> &CriDaemon {
        self.runtime.cri()
    }

    /// Makes the docker-save image `tar` (tagged `name`) one of the node's local images, as
    /// `ctr images import` or CRI-O's `copyimg` would on a node without a registry.
    pub fn import_image(&self, name: &str, tar: &Path) {
        match &self.runtime {
            Runtime::Containerd(containerd) => crate::host::import_image(containerd.socket(), tar),
            Runtime::Crio(crio) => crio.import_image(name, tar),
        }
    }

    /// The node's runtime, as podagent's `runtime.kind` names it.
    pub fn runtime_kind(&self) -> &'static str {
        match self.runtime {
            Runtime::Containerd(_) => "containerd",
            Runtime::Crio(_) => "crio",
        }
    }

    /// The node's dir: the kubelet's root (`root/`), its config, and what its pods log
    /// (`log/pods`, `log/containers`: the node's `/var/log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A pod for this node, as a user would write it: the local busybox image (never pulled)
    /// running `command`, placed by the scheduler onto this node (`nodeSelector` on its
    /// hostname label, so nodes of other tests never get it), no service-account token, and
    /// `annotations`.
    pub fn pod_manifest(
        &self,
        namespace: &str,
        name: &str,
        command: &[&str],
        annotations: Value,
    ) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"namespace": namespace, "name": name, "annotations": annotations},
            "spec": self.pod_spec(command),
        })
    }

    /// The `spec` of [`KubeletNode::pod_manifest`], for a workload's pod template too.
    pub fn pod_spec(&self, command: &[&str]) -> Value {
        json!({
            "nodeSelector": {"kubernetes.io/hostname": self.name},
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "main",
                "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": command,
            }],
        })
    }

    /// Waits until pod `namespace/name` is Running with every container ready; the pod. Fails
    /// at once, naming the image, when a container's image is not on the node (no registry is
    /// reachable from a test host), and with the kubelet's log when the wait runs out.
    pub async fn wait_running(&self, namespace: &str, name: &str) -> Value {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let pod = self.admin.get("v1", "Pod", Some(namespace), name);
            if let Some(pod) = &pod {
                for status in pod["status"]["containerStatuses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let reason = status["state"]["waiting"]["reason"].as_str().unwrap_or("");
                    if ["ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull"].contains(&reason) {
                        panic!(
                            "pod {namespace}/{name}: image {} is not on node {} ({reason}); \
                             only local images run here (see testkit::host::images)",
                            status["image"], self.name
                        );
                    }
                }
                let running = pod["status"]["phase"] == "Running";
                let ready = pod["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "ContainersReady" && c["status"] == "True");
                if running && ready {
                    return pod.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "pod {namespace}/{name} not Running on node {} within {READY_TIMEOUT:?}: {}
                     kubelet log:
{}",
                    self.name,
                    pod.map_or("no such pod".into(), |p| p["status"].to_string()),
                    self.kubelet_log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `path` on the node (its `/var/lib`, `/etc` and `/opt` are its own, see [`mount_ns`]), as
    /// a path the test can read.
    pub fn node_path(&self, path: &str) -> PathBuf {
        self.mount_ns.resolve(path)
    }

    /// Everything the kubelet logged so far (all its runs).
    pub fn kubelet_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("kubelet.log")).unwrap_or_default()
    }

    /// The kubelet's last log lines.
    pub fn kubelet_log_tail(&self) -> String {
        self.kubelet
            .as_ref()
            .map(Daemon::log_tail)
            .unwrap_or_default()
    }

    /// Stops the kubelet (SIGTERM) and starts it again on the same dirs; pods keep running, as
    /// on a kubelet upgrade. Returns once the Node is Ready again.
    pub async fn restart_kubelet(&mut self) {
        if let Some(mut kubelet) = self.kubelet.take() {
            kubelet.stop_async().await;
        }
        self.kubelet = Some(self.spawn_kubelet());
        self.wait_ready().await;
    }

    /// Starts the kubelet in the node's mount namespace, its output appended to `kubelet.log`.
    fn spawn_kubelet(&self) -> Daemon {
        let dir = self.dir.path();
        let mut command = Command::new(control_plane::binary("kubelet"));
        command
            .arg(format!("--config={}", self.config.display()))
            .arg(format!(
                "--kubeconfig={}",
                dir.join("kubelet.kubeconfig").display()
            ))
            .arg(format!("--root-dir={}", dir.join("root").display()))
            .arg(format!("--cert-dir={}", dir.join("serving").display()))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--node-ip={}", self.ip))
            .arg("--v=1")
            .env("PATH", KUBELET_PATH);
        Daemon::spawn(
            "kubelet",
            crate::host::process::in_mount_ns(&self.mount_ns.path(), &command),
            &dir.join("kubelet.log"),
        )
    }

    /// Waits until the Node is Ready and carries no `not-ready` taint.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(kubelet) = self.kubelet.as_mut() {
                kubelet.assert_running();
            }
            let node = self.admin.get("v1", "Node", None, &self.name);
            if node.as_ref().is_some_and(schedulable) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "kubelet node {} not Ready and schedulable within {READY_TIMEOUT:?}; Node: \
                     {}\nkubelet config ({}):\n{}\nkubelet log:\n{}",
                    self.name,
                    node.map_or("none".into(), |n| n["status"]["conditions"].to_string()),
                    self.config.display(),
                    fs::read_to_string(&self.config).unwrap_or_default(),
                    self.kubelet_log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        if let Some(mut kubelet) = self.kubelet.take() {
            kubelet.stop();
        }
        // With the kubelet gone nothing re-registers it; its pods stay as objects, as on a
        // cluster that lost a node.
        let _ = self.admin.delete("v1", "Node", None, &self.name, None);
    }
}

impl Runtime {
    fn cri(&self) -> &CriDaemon {
        match self {
            Runtime::Containerd(containerd) => containerd,
            Runtime::Crio(crio) => crio,
        }
    }
}

/// Makes the host ready for kubelet nodes the way their first start would (`/run/netns` a shared
/// mount point, as iproute2 leaves it): for a test that records the host's state before a
/// node starts and compares it after.
pub fn prepare_host() {
    mount_ns::share_netns_dir();
}

/// Whether `node` is Ready and free of the `node.kubernetes.io/not-ready` taint.
fn schedulable(node: &Value) -> bool {
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let tainted = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["key"] == "node.kubernetes.io/not-ready");
    ready && !tainted
}

/// The kubelet's `KubeletConfiguration` for a node at `ip:port` whose runtime answers on
/// `socket`, trusting client certificates of the CA at `ca` (the API server's).
fn kubelet_config(ip: &str, port: u16, ca: &Path, socket: &Path) -> Value {
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": ip,
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        // As kubeadm configures it: the API server's client certificate is checked against the
        // cluster CA and what it may do is asked of the API server.
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": ca},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": format!("unix://{}", socket.display()),
        // This kind of host: cgroup v1 (deprecated, refused by default since 1.35), the
        // cgroupfs driver the containerd config uses, no controllers for QoS cgroups or
        // allocatable enforcement, swap possibly on, no CAP_SYS_RESOURCE for oom_score_adj.
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": false,
        "enforceNodeAllocatable": ["none"],
        "failSwapOn": false,
        "localStorageCapacityIsolation": false,
        "oomScoreAdj": 0,
        // A test machine's disk may be fuller than a node's: nothing is evicted or collected.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "0%",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "serializeImagePulls": false,
    })
}

/// Writes `text` to `path` (0600: keys), creating its dir; panics naming the path.
fn write(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", parent.display()));
    }
    fs::write(path, text).unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
}
