//! A node with podagent on it, for every test and benchmark that runs the real agent: the one
//! fixture, so the harnesses cannot drift apart.
//!
//! A [`Node`] owns what a node has — a private runtime (containerd, CRI-O or dockerd) with real pod
//! sandboxes, a CNI conf dir whose primary network is the Debian bridge + host-local (+ tuning
//! for MACs) reached through the logging wrapper `testkit/plugins/wrap-bridge`, a leased
//! address range, podagent's state dir — and plays the kubelet's part against the shared real
//! control plane: it creates pods bound to its node name, runs their sandboxes, and writes pod
//! status through `pods/status` as the kubelet would. Each node has a node name and namespaces
//! of its own, so tests sharing one control plane never see each other's pods.
//!
//! [`Agent`] is the podagent process: config written from [`AgentConfig`], a scrubbed
//! environment (nothing of the caller's `PODAGENT_*`, `NOTIFY_SOCKET`, `RUST_LOG` leaks in),
//! output in a log file, killed by PID on drop. podagent always runs with the credentials
//! `scripts/create-kubeconfig.sh` makes for the shipped RBAC, never the admin's.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::control_plane::{self, Shared};
use crate::fault_proxy::FaultProxy;
use crate::host::{Containerd, CriDaemon, Crio, Dockerd, SubnetLease};
use crate::kubelet::{KubeletNode, NodeRuntime};
use crate::netns::unique_name;
use crate::nspawn::Machine;
use crate::prereq;

/// The status annotation podagent writes in its default mode.
pub const STATUS_ANNOTATION: &str = "podagent.kaloom.com/network-status";
/// The wrapper plugin's type name in the node's conflist.
pub const PLUGIN: &str = "wrap-bridge";
/// How long [`Node::eventually`] waits.
pub const WAIT: Duration = Duration::from_secs(30);

/// Which runtime a node runs.
pub enum Runtime {
    Containerd(Containerd),
    Crio(Crio),
    Docker(Dockerd),
    /// The containerd of a node booted with a real systemd, where podagent is the installed
    /// service rather than a process of the test.
    Machine(Machine),
    /// The containerd of a real kubelet, which runs the pods and plays its own part.
    Kubelet(Box<KubeletNode>),
}

/// Who makes, finds and takes down a node's pod sandboxes.
enum Sandboxes<'a> {
    Cri(&'a CriDaemon),
    Machine(&'a Machine),
    Docker(&'a Dockerd),
}

impl Runtime {
    /// The runtime's name in podagent's config (`runtime.kind`).
    fn kind(&self) -> &'static str {
        match self {
            Runtime::Containerd(_) | Runtime::Machine(_) => "containerd",
            Runtime::Crio(_) => "crio",
            Runtime::Kubelet(kubelet) => kubelet.runtime_kind(),
            Runtime::Docker(_) => "docker",
        }
    }

    fn sandboxes(&self) -> Sandboxes<'_> {
        match self {
            Runtime::Containerd(c) => Sandboxes::Cri(c),
            Runtime::Crio(c) => Sandboxes::Cri(c),
            Runtime::Docker(d) => Sandboxes::Docker(d),
            Runtime::Machine(m) => Sandboxes::Machine(m),
            Runtime::Kubelet(k) => Sandboxes::Cri(k.cri()),
        }
    }
}

/// One plugin invocation from the wrapper's `calls.log` (logged when it starts).
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Start, in seconds since the epoch.
    pub at: f64,
    pub command: String,
    pub pod: String,
    pub ifname: String,
}

/// One finished plugin invocation from the wrapper's `ended.log`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub at: f64,
    pub end: f64,
    pub command: String,
    pub pod: String,
    pub exit: i32,
}

/// A test node: runtime, CNI config, state dir, and the kubelet's part on the control plane.
pub struct Node {
    name: String,
    runtime: Runtime,
    dir: tempfile::TempDir,
    lease: SubnetLease,
    bridge: String,
    podagent: PathBuf,
    cluster: &'static Shared,
    namespaces: Mutex<HashMap<String, String>>,
}

impl Node {
    /// A node with a private containerd.
    pub async fn with_containerd(podagent: impl Into<PathBuf>) -> Node {
        Node::new(
            podagent.into(),
            Runtime::Containerd(Containerd::start().await),
        )
    }

    /// A node with a private CRI-O.
    pub async fn with_crio(podagent: impl Into<PathBuf>) -> Node {
        Node::new(podagent.into(), Runtime::Crio(Crio::start().await))
    }

    /// A node booted with a real systemd (`testkit::nspawn`), its pods in the machine's
    /// containerd. The node's plugin dir is the machine's `<SHARE>/bin`, so the wrapper's logs
    /// and switches work as on every node; podagent is for the test to install in the machine.
    pub fn with_machine(podagent: impl Into<PathBuf>) -> Node {
        Node::new(podagent.into(), Runtime::Machine(Machine::boot()))
    }

    /// A node with a private dockerd.
    pub async fn with_docker(podagent: impl Into<PathBuf>) -> Node {
        Node::new(podagent.into(), Runtime::Docker(Dockerd::start().await))
    }

    /// A node run by a real kubelet (`testkit::kubelet`): pods are the kubelet's
    /// ([`Node::kubelet_pod`]), not the test's; the rest (podagent, the plugin wrapper, the
    /// operator's part) is as on every node.
    pub async fn with_kubelet(podagent: impl Into<PathBuf>) -> Node {
        Node::with_kubelet_on(podagent, NodeRuntime::Containerd).await
    }

    /// [`Node::with_kubelet`] with the kubelet on `runtime`.
    pub async fn with_kubelet_on(podagent: impl Into<PathBuf>, runtime: NodeRuntime) -> Node {
        let cluster = control_plane::shared();
        let name = cluster.unique_name("node");
        let kubelet = KubeletNode::start_on(runtime, &name, cluster.server(), cluster.dir()).await;
        Node::new(podagent.into(), Runtime::Kubelet(Box::new(kubelet)))
    }

    fn new(podagent: PathBuf, runtime: Runtime) -> Node {
        prereq::require_root();
        prereq::require_command("nsenter", "util-linux");
        prereq::require_command("ip", "iproute2");
        for plugin in ["bridge", "host-local", "tuning"] {
            prereq::require_path(
                &Path::new("/usr/lib/cni").join(plugin),
                "the Debian package containernetworking-plugins",
            );
        }
        prereq::require_path(&podagent, "the podagent binary under test");
        let cluster = control_plane::shared();
        let dir = tempfile::Builder::new()
            .prefix("pa-node")
            .tempdir()
            .expect("node dir");
        for sub in ["conf", "state", "ipam"] {
            fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        if let Runtime::Machine(machine) = &runtime {
            let bin = machine.share().join("bin");
            fs::create_dir_all(&bin).expect("mkdir");
            std::os::unix::fs::symlink(&bin, dir.path().join("bin")).expect("link the bin dir");
        } else {
            fs::create_dir_all(dir.path().join("bin")).expect("mkdir");
        }
        let wrapper = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("plugins")
            .join(PLUGIN);
        fs::copy(&wrapper, dir.path().join("bin").join(PLUGIN)).expect("copy wrapper plugin");
        let name = match &runtime {
            Runtime::Kubelet(kubelet) => kubelet.name().to_owned(),
            _ => cluster.unique_name("node"),
        };
        let node = Node {
            name,
            runtime,
            lease: SubnetLease::acquire(),
            bridge: unique_name("nbr"),
            podagent,
            cluster,
            namespaces: Mutex::new(HashMap::new()),
            dir,
        };
        node.write_conflist("10-hotplug.conflist", true);
        node
    }

    /// Writes the node's primary network (`wrap-bridge` + host-local, with `tuning` for MACs
    /// when `tuning`) as conf dir file `file`.
    pub fn write_conflist(&self, file: &str, tuning: bool) {
        let mut plugins = vec![json!({
            "type": PLUGIN,
            "bridge": self.bridge,
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.lease.subnet()}]],
                "dataDir": self.path("ipam"),
            },
        })];
        if tuning {
            plugins.push(json!({"type": "tuning", "capabilities": {"mac": true}}));
        }
        let conflist = json!({"cniVersion": "1.0.0", "name": "hotplug", "plugins": plugins});
        // Atomically: podagent may be reading the directory right now.
        let temp = self.path("conf").join(".new");
        fs::write(&temp, serde_json::to_vec_pretty(&conflist).expect("json"))
            .expect("write conflist");
        fs::rename(&temp, self.path("conf").join(file)).expect("rename conflist");
    }

    /// The node name podagent serves (`spec.nodeName` of this node's pods).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<node dir>/<rel>`: `conf`, `bin`, `state`, `ipam`, `podagent.log`, ….
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The runtime and its socket, as podagent's config names them.
    pub fn runtime_endpoint(&self) -> (&'static str, PathBuf) {
        let socket = match self.runtime.sandboxes() {
            Sandboxes::Cri(cri) => cri.socket().to_owned(),
            Sandboxes::Docker(docker) => docker.socket().to_owned(),
            Sandboxes::Machine(machine) => machine.containerd().socket().to_owned(),
        };
        (self.runtime.kind(), socket)
    }

    /// The node's containerd; panics on another runtime's node.
    pub fn containerd(&self) -> &Containerd {
        match &self.runtime {
            Runtime::Containerd(c) => c,
            other => panic!("node {} runs {}, not containerd", self.name, other.kind()),
        }
    }

    /// The node's containerd, to restart it; panics on another runtime's node.
    pub fn containerd_mut(&mut self) -> &mut Containerd {
        match &mut self.runtime {
            Runtime::Containerd(c) => c,
            other => panic!("node {} runs {}, not containerd", self.name, other.kind()),
        }
    }

    /// The node's CRI runtime (containerd or CRI-O) of the test's own; panics on another node.
    pub fn cri(&self) -> &CriDaemon {
        match self.runtime.sandboxes() {
            Sandboxes::Cri(cri) => cri,
            _ => panic!("node {} has no CRI runtime of the test's own", self.name),
        }
    }

    /// The node's booted machine; panics on another node.
    pub fn machine(&self) -> &Machine {
        match &self.runtime {
            Runtime::Machine(machine) => machine,
            other => panic!("node {} runs {}, not a machine", self.name, other.kind()),
        }
    }

    /// The node's kubelet; panics on a node whose kubelet the test plays.
    pub fn kubelet(&self) -> &KubeletNode {
        match &self.runtime {
            Runtime::Kubelet(k) => k,
            other => panic!("node {} runs no kubelet ({})", self.name, other.kind()),
        }
    }

    /// The node's kubelet, to restart it; panics on a node whose kubelet the test plays.
    pub fn kubelet_mut(&mut self) -> &mut KubeletNode {
        match &mut self.runtime {
            Runtime::Kubelet(k) => k,
            other => panic!("node {} runs no kubelet ({})", self.name, other.kind()),
        }
    }

    /// The node's Docker Engine; panics on another runtime's node.
    pub fn dockerd(&self) -> &Dockerd {
        match &self.runtime {
            Runtime::Docker(d) => d,
            other => panic!("node {} runs {}, not dockerd", self.name, other.kind()),
        }
    }

    /// The host bridge of the node's primary network.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The host-local subnet attachments get addresses from, `198.19.<n>.0/24`.
    pub fn subnet(&self) -> String {
        self.lease.subnet()
    }

    /// The prefix of every attachment address, `198.19.<n>.`.
    pub fn address_prefix(&self) -> String {
        self.lease.address_prefix()
    }

    /// `198.19.<n>.<64 * part>/26`: one quarter of the node's subnet per network.
    pub fn quarter(&self, part: u8) -> String {
        format!("{}{}/26", self.address_prefix(), 64 * u32::from(part))
    }

    /// Whether `address` (with or without its prefix length) lies in quarter `part`.
    pub fn in_quarter(&self, address: &str, part: u8) -> bool {
        let last: u32 = address
            .strip_prefix(&self.address_prefix())
            .and_then(|rest| rest.split('/').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u32::MAX);
        (64 * u32::from(part)..64 * (u32::from(part) + 1)).contains(&last)
    }

    /// A bridge (through the logging wrapper) + host-local config on bridge `bridge`,
    /// addresses from `subnet`, leases under `<node>/ipam-<tag>`.
    pub fn bridge_config(&self, tag: &str, bridge: &str, subnet: &str) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "type": "wrap-bridge",
            "bridge": bridge,
            "isGateway": false,
            "ipMasq": false,
            "ipam": {"type": "host-local", "subnet": subnet, "dataDir": self.path(&format!("ipam-{tag}"))},
        })
    }

    /// The host-local leases under `<node>/ipam-<tag>`: (address, what holds it).
    pub fn leases(&self, tag: &str) -> Vec<(std::net::Ipv4Addr, String)> {
        let root = self.path(&format!("ipam-{tag}"));
        let Ok(networks) = fs::read_dir(&root) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for network in networks.filter_map(Result::ok) {
            for file in fs::read_dir(network.path()).into_iter().flatten().flatten() {
                if let Ok(address) = file.file_name().to_string_lossy().parse() {
                    let holder = fs::read_to_string(file.path()).unwrap_or_default();
                    found.push((
                        address,
                        holder.lines().next().unwrap_or_default().to_owned(),
                    ));
                }
            }
        }
        found.sort();
        found
    }

    /// The shared control plane.
    pub fn cluster(&self) -> &'static Shared {
        self.cluster
    }

    /// The real namespace behind a test's name for one (`default`, `team-a`): created on first
    /// use, private to this node.
    pub fn ns(&self, name: &str) -> String {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(real) = namespaces.get(name) {
            return real.clone();
        }
        let real = self.cluster.create_namespace(name);
        namespaces.insert(name.to_string(), real.clone());
        real
    }

    // -----------------------------------------------------------------------------------------
    // Pods of a real kubelet

    /// Creates pod `namespace/name` (the node's namespace behind the name) running
    /// [`crate::kubelet::POD_COMMAND`] with
    /// `annotations`, as a user would (the scheduler places it here), and waits until the
    /// kubelet runs it; returns (uid, id of its ready sandbox).
    pub async fn kubelet_pod(
        &self,
        namespace: &str,
        name: &str,
        annotations: Value,
    ) -> (String, String) {
        let kubelet = self.kubelet();
        let namespace = self.ns(namespace);
        let manifest =
            kubelet.pod_manifest(&namespace, name, &crate::kubelet::POD_COMMAND, annotations);
        self.cluster
            .admin()
            .create(manifest)
            .unwrap_or_else(|err| panic!("creating pod {namespace}/{name}: {err:#}"));
        let pod = kubelet.wait_running(&namespace, name).await;
        let uid = pod["metadata"]["uid"].as_str().expect("a uid").to_owned();
        let sandbox = self.ready_sandbox(&uid).await;
        (uid, sandbox)
    }

    /// The id of pod `uid`'s ready sandbox in the node's CRI runtime; panics when it has none.
    pub async fn ready_sandbox(&self, uid: &str) -> String {
        self.cri()
            .ready_sandbox(uid)
            .await
            .unwrap_or_else(|| panic!("pod {uid} has no ready sandbox on node {}", self.name))
    }

    // -----------------------------------------------------------------------------------------
    // The kubelet's part

    /// Creates a pod bound to this node with `networks` (the `networks` annotation), runs its
    /// sandbox and reports it Running; returns (uid, sandbox id).
    pub async fn pod(
        &self,
        namespace: &str,
        name: &str,
        networks: Option<&str>,
    ) -> (String, String) {
        let mut annotations = serde_json::Map::new();
        if let Some(networks) = networks {
            annotations.insert("networks".into(), json!(networks));
        }
        self.pod_with_annotations(namespace, name, Value::Object(annotations))
            .await
    }

    /// [`Node::pod`] with any annotations.
    pub async fn pod_with_annotations(
        &self,
        namespace: &str,
        name: &str,
        annotations: Value,
    ) -> (String, String) {
        let uid = self.create_pod(namespace, name, annotations);
        let sandbox = self.run_sandbox(&uid, namespace, name).await;
        self.report_running(namespace, name, "first", 0);
        (uid, sandbox)
    }

    /// Creates a pod bound to this node that the kubelet has not reported on yet (no status,
    /// no sandbox); returns its uid.
    pub fn create_pod(&self, namespace: &str, name: &str, annotations: Value) -> String {
        let created = self
            .cluster
            .admin()
            .create(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": self.ns(namespace), "annotations": annotations},
                "spec": {
                    "nodeName": self.name,
                    "automountServiceAccountToken": false,
                    "containers": [{"name": "main", "image": "busybox"}],
                },
            }))
            .unwrap_or_else(|err| panic!("creating pod {namespace}/{name}: {err:#}"));
        created["metadata"]["uid"]
            .as_str()
            .expect("a created pod has a uid")
            .to_owned()
    }

    /// Runs a sandbox for the pod in the node's runtime; returns its id.
    pub async fn run_sandbox(&self, uid: &str, namespace: &str, name: &str) -> String {
        let namespace = self.ns(namespace);
        match self.runtime.sandboxes() {
            Sandboxes::Cri(cri) => cri.run_pod_sandbox(uid, name, &namespace).await,
            Sandboxes::Docker(docker) => docker.run_sandbox(uid, name, &namespace).await,
            Sandboxes::Machine(machine) => machine.run_pod_sandbox(uid, name, &namespace).await,
        }
    }

    /// Reports the pod Running with one container whose id is `<runtime>://<container>`, as
    /// the kubelet does through `pods/status` (a re-created sandbox restarts every container:
    /// report a new id and a higher restart count).
    pub fn report_running(&self, namespace: &str, name: &str, container: &str, restarts: u32) {
        // The scheme the kubelet reports: the runtime's name in CRI `Version`.
        let scheme = match self.runtime {
            Runtime::Crio(_) => "cri-o",
            Runtime::Kubelet(_) => panic!("node {}: its kubelet reports its pods", self.name),
            _ => self.runtime.kind(),
        };
        self.cluster
            .admin()
            .patch_status(
                "v1",
                "Pod",
                Some(&self.ns(namespace)),
                name,
                json!({"status": {"phase": "Running", "containerStatuses": [{
                    "name": "main", "containerID": format!("{scheme}://{container}"),
                    "image": "busybox", "imageID": "", "ready": true, "restartCount": restarts,
                    "started": true, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                }]}}),
            )
            .unwrap_or_else(|err| panic!("reporting pod {namespace}/{name} running: {err:#}"));
    }

    /// The network namespace of a sandbox.
    pub async fn netns(&self, sandbox: &str) -> PathBuf {
        match self.runtime.sandboxes() {
            Sandboxes::Cri(cri) => cri.sandbox_netns(sandbox).await,
            Sandboxes::Docker(docker) => docker.sandbox_netns(sandbox).await,
            Sandboxes::Machine(machine) => machine.sandbox_netns(sandbox).await,
        }
    }

    /// Deletes the pod as the cluster does with a kubelet on the node: the graceful delete
    /// marks it terminating, the kubelet stops the sandbox (when one is given), and its final
    /// delete (grace 0) removes the object.
    pub async fn delete_pod(&self, namespace: &str, name: &str, sandbox: Option<&str>) {
        self.mark_terminating(namespace, name);
        if let Some(sandbox) = sandbox {
            match self.runtime.sandboxes() {
                Sandboxes::Cri(cri) => {
                    cri.stop_pod_sandbox(sandbox).await;
                    cri.remove_pod_sandbox(sandbox).await;
                }
                Sandboxes::Docker(docker) => docker.stop(sandbox).await,
                Sandboxes::Machine(machine) => {
                    let cri = machine.containerd();
                    cri.stop_pod_sandbox(sandbox).await;
                    cri.remove_pod_sandbox(sandbox).await;
                }
            }
        }
        self.remove_pod(namespace, name);
    }

    /// The graceful delete: the pod gets a deletionTimestamp and stays until the kubelet's
    /// final delete ([`Node::remove_pod`]).
    pub fn mark_terminating(&self, namespace: &str, name: &str) {
        self.cluster
            .admin()
            .delete("v1", "Pod", Some(&self.ns(namespace)), name, None)
            .unwrap_or_else(|err| panic!("deleting pod {namespace}/{name}: {err:#}"));
    }

    /// The kubelet's final delete (grace 0), once the pod's containers are gone.
    pub fn remove_pod(&self, namespace: &str, name: &str) {
        self.cluster
            .admin()
            .delete("v1", "Pod", Some(&self.ns(namespace)), name, Some(0))
            .unwrap_or_else(|err| panic!("final delete of pod {namespace}/{name}: {err:#}"));
    }

    // -----------------------------------------------------------------------------------------
    // The operator's part and what the user sees

    /// Sets (or, with `None`, removes) the pod's `networks` annotation.
    pub fn set_networks(&self, namespace: &str, name: &str, networks: Option<&str>) {
        self.annotate(namespace, name, "networks", networks);
    }

    /// Sets (or removes) one annotation of the pod.
    pub fn annotate(&self, namespace: &str, name: &str, key: &str, value: Option<&str>) {
        self.cluster
            .admin()
            .patch_merge(
                "v1",
                "Pod",
                Some(&self.ns(namespace)),
                name,
                json!({"metadata": {"annotations": {key: value}}}),
            )
            .unwrap_or_else(|err| panic!("annotating pod {namespace}/{name}: {err:#}"));
    }

    /// The pod object, if it exists.
    pub fn get_pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.cluster
            .admin()
            .get("v1", "Pod", Some(&self.ns(namespace)), name)
    }

    /// podagent's status annotation of the pod, parsed.
    pub fn status(&self, namespace: &str, name: &str) -> Option<Value> {
        let pod = self.get_pod(namespace, name)?;
        let text = pod["metadata"]["annotations"][STATUS_ANNOTATION].as_str()?;
        Some(serde_json::from_str(text).expect("the status annotation is JSON"))
    }

    /// Every `events.k8s.io/v1` Event in the namespace.
    pub fn all_events(&self, namespace: &str) -> Vec<Value> {
        self.cluster
            .admin()
            .list("events.k8s.io/v1", "Event", Some(&self.ns(namespace)))
    }

    /// The Events about pod `uid` with `reason`.
    pub fn events(&self, namespace: &str, uid: &str, reason: &str) -> Vec<Value> {
        self.all_events(namespace)
            .into_iter()
            .filter(|e| e["regarding"]["uid"] == uid && e["reason"] == reason)
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // The plugin and podagent's files

    /// Every plugin invocation so far, in start order.
    pub fn calls(&self) -> Vec<Call> {
        let text = fs::read_to_string(self.path("bin/calls.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                Some(Call {
                    at: parts.next()?.parse().ok()?,
                    command: parts.next()?.to_owned(),
                    pod: parts.next()?.to_owned(),
                    ifname: parts.next().unwrap_or_default().to_owned(),
                })
            })
            .collect()
    }

    /// Every finished plugin invocation so far, in end order.
    pub fn ended(&self) -> Vec<Ended> {
        let text = fs::read_to_string(self.path("bin/ended.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let parts: Vec<&str> = line.split_whitespace().collect();
                let [at, end, command, pod, _ifname, exit] = parts.as_slice() else {
                    return None;
                };
                Some(Ended {
                    at: at.parse().ok()?,
                    end: end.parse().ok()?,
                    command: (*command).to_owned(),
                    pod: (*pod).to_owned(),
                    exit: exit.parse().ok()?,
                })
            })
            .collect()
    }

    /// How many `command` calls pod `pod` got.
    pub fn count(&self, command: &str, pod: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.command == command && c.pod == pod)
            .count()
    }

    /// Sets a switch of the wrapper plugin (`sleep`, `fail-pods`); `None` removes it.
    pub fn set_switch(&self, switch: &str, value: Option<&str>) {
        let file = self.path("bin").join(switch);
        match value {
            Some(value) => fs::write(&file, value).expect("write plugin switch"),
            None => {
                let _ = fs::remove_file(&file);
            }
        }
    }

    /// Where each plugin call was sent, in start order: (command, pod, ifname, `CNI_NETNS` or
    /// `-`), from the wrapper's `netns.log`.
    pub fn call_netns(&self) -> Vec<(String, String, String, String)> {
        let text = fs::read_to_string(self.path("bin/netns.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace().map(str::to_owned);
                Some((parts.next()?, parts.next()?, parts.next()?, parts.next()?))
            })
            .collect()
    }

    /// The plugin calls for pod `pod` after the first `since` calls of the node.
    pub fn calls_for(&self, pod: &str, since: usize) -> Vec<Call> {
        self.calls()
            .into_iter()
            .skip(since)
            .filter(|c| c.pod == pod)
            .collect()
    }

    /// Proves a (re)started agent is past its startup reconciles: a pod created now, asking for
    /// `network`, gets its interface `ifname`; then two more seconds for anything still queued.
    pub async fn past_startup(&self, network: &str, ifname: &str) {
        let entry = json!([{"name": network}]).to_string();
        let (_, marker) = self.pod("default", "marker", Some(&entry)).await;
        let netns = self.netns(&marker).await;
        self.eventually("the marker pod plugged", || {
            has_link(&netns, ifname).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    /// Creates Network `name` in the node's namespace `namespace` with `spec`, or replaces the
    /// spec of the one there.
    pub fn put_network(&self, namespace: &str, name: &str, spec: Value) {
        self.put_object("kaloom.com/v1", "Network", namespace, name, spec);
    }

    /// The same for NetworkAttachmentDefinition `name` (NPWG mode).
    pub fn put_attachment_definition(&self, namespace: &str, name: &str, spec: Value) {
        let kind = "NetworkAttachmentDefinition";
        self.put_object("k8s.cni.cncf.io/v1", kind, namespace, name, spec);
    }

    /// A NetworkAttachmentDefinition `name` whose `spec.config` is a bridge + host-local config
    /// on `bridge` in quarter `part`, its leases under `ipam-<tag>`.
    pub fn put_bridge_definition(
        &self,
        namespace: &str,
        name: &str,
        tag: &str,
        bridge: &str,
        part: u8,
    ) {
        let config = self.bridge_config(tag, bridge, &self.quarter(part));
        self.put_attachment_definition(namespace, name, json!({"config": config.to_string()}));
    }

    fn put_object(&self, api_version: &str, kind: &str, namespace: &str, name: &str, spec: Value) {
        let admin = self.cluster.admin();
        let namespace = self.ns(namespace);
        let exists = admin
            .get(api_version, kind, Some(&namespace), name)
            .is_some();
        let put = if exists {
            admin.patch_merge(
                api_version,
                kind,
                Some(&namespace),
                name,
                json!({"spec": spec}),
            )
        } else {
            admin.create(json!({"apiVersion": api_version, "kind": kind,
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}))
        };
        put.unwrap_or_else(|err| panic!("putting {kind} {namespace}/{name}: {err:#}"));
    }

    /// podagent's durable record of pod `uid`.
    pub fn record(&self, uid: &str) -> Option<Value> {
        let text = fs::read_to_string(self.path(&format!("state/{uid}.json"))).ok()?;
        Some(serde_json::from_str(&text).expect("the record is JSON"))
    }

    /// Everything the node's agents logged so far: on a machine, the podagent unit's journal.
    pub fn log(&self) -> String {
        match &self.runtime {
            Runtime::Machine(machine) => String::from_utf8_lossy(
                &machine
                    .exec(&[
                        "journalctl",
                        "-u",
                        "podagent",
                        "-o",
                        "short-iso",
                        "--no-pager",
                    ])
                    .stdout,
            )
            .into_owned(),
            _ => fs::read_to_string(self.path("podagent.log")).unwrap_or_default(),
        }
    }

    /// Polls `check` until it returns `Some` (for [`WAIT`]), or fails naming `what` with the
    /// plugin calls and podagent's newest log lines.
    pub async fn eventually<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        self.eventually_for(what, WAIT, check).await
    }

    /// [`Node::eventually`] with a deadline of `wait`, for what takes longer by design.
    pub async fn eventually_for<T>(
        &self,
        what: &str,
        wait: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        self.eventually_async(what, wait, || std::future::ready(check()))
            .await
    }

    /// [`Node::eventually_for`] with a check that awaits (a CRI call, a scrape of podagent).
    pub async fn eventually_async<T, F>(
        &self,
        what: &str,
        wait: Duration,
        mut check: impl FnMut() -> F,
    ) -> T
    where
        F: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(value) = check().await {
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

    // -----------------------------------------------------------------------------------------
    // podagent

    /// The config a test starts from: this node, its runtime, CNI dirs and state dir, and
    /// podagent's own credentials.
    pub fn agent_config(&self) -> AgentConfig {
        let (kind, endpoint) = self.runtime_endpoint();
        AgentConfig {
            node_name: self.name.clone(),
            kubeconfig: self.cluster.podagent_kubeconfig().to_owned(),
            runtime_kind: kind,
            runtime_endpoint: endpoint,
            conf_dir: self.path("conf"),
            bin_dir: self.path("bin"),
            state_dir: self.path("state"),
            log_level: "info,podagent=debug".into(),
            shutdown_grace: "20s".into(),
            plugin_timeout: "20s".into(),
            concurrency: 4,
            retry_base: "1s".into(),
            retry_cap: "4s".into(),
            resync_period: "5m".into(),
            // The test nodes' primary is the Debian bridge: deliberate, not the kactus trap.
            networks: "accept_other_primary = true\n".into(),
            // A port of its own: agents of parallel tests must not meet on the default one.
            metrics_listen: format!(
                "127.0.0.1:{}",
                crate::free_port().expect("a free loopback port")
            ),
            extra: String::new(),
            env: Vec::new(),
        }
    }

    /// A fault proxy in front of the shared control plane.
    pub async fn fault_proxy(&self) -> FaultProxy {
        FaultProxy::start(self.cluster.server(), &self.cluster.ca_pem())
            .await
            .expect("fault proxy")
    }

    /// Points `config` at `proxy`: its kubeconfig, rewritten to reach the API server through it.
    pub fn through_proxy(&self, config: &mut AgentConfig, proxy: &FaultProxy) {
        let through = self.path("proxy.kubeconfig");
        proxy
            .write_kubeconfig(&config.kubeconfig, &through)
            .expect("kubeconfig through the fault proxy");
        config.kubeconfig = through;
    }

    /// Starts podagent with [`Node::agent_config`].
    pub fn start_agent(&self) -> Agent {
        self.start_agent_with(&self.agent_config())
    }

    /// Starts podagent (`run --config <file>`) with `config`, its output appended to
    /// `podagent.log` in the node dir.
    pub fn start_agent_with(&self, config: &AgentConfig) -> Agent {
        let file = self.path("podagent.toml");
        fs::write(&file, config.render()).expect("write podagent config");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("podagent.log"))
            .expect("open podagent log");
        let mut command = Command::new(&self.podagent);
        command
            .args(["run", "--config"])
            .arg(&file)
            // Only PATH and what the test asks for: no PODAGENT_* configuration,
            // NOTIFY_SOCKET or RUST_LOG of the caller may leak into the agent under test.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", self.podagent.display()));
        Agent {
            child,
            metrics: (!config.metrics_listen.is_empty()).then(|| config.metrics_listen.clone()),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        crate::host::process::delete_link(&self.bridge);
    }
}

/// podagent's configuration file for a test, field by field.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub kubeconfig: PathBuf,
    pub runtime_kind: &'static str,
    pub runtime_endpoint: PathBuf,
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log_level: String,
    pub shutdown_grace: String,
    pub plugin_timeout: String,
    pub concurrency: usize,
    pub retry_base: String,
    pub retry_cap: String,
    pub resync_period: String,
    /// The body of the `[networks]` table.
    pub networks: String,
    /// `metrics.listen`: a free loopback port by default, empty for none.
    pub metrics_listen: String,
    /// TOML appended as is (more sections or keys).
    pub extra: String,
    /// Environment variables for the agent (on top of PATH).
    pub env: Vec<(String, String)>,
}

impl AgentConfig {
    /// The TOML text of `podagent.toml`.
    pub fn render(&self) -> String {
        format!(
            r#"node_name = "{node}"
state_dir = "{state}"
log_level = "{log_level}"
shutdown_grace = "{grace}"
[kube]
kubeconfig = "{kubeconfig}"
[runtime]
kind = "{kind}"
endpoint = "{endpoint}"
[cni]
conf_dir = "{conf}"
bin_dirs = ["{bin}", "/usr/lib/cni"]
plugin_timeout = "{plugin_timeout}"
[networks]
{networks}
[reconcile]
concurrency = {concurrency}
retry_base = "{retry_base}"
retry_cap = "{retry_cap}"
resync_period = "{resync}"
[metrics]
listen = "{metrics}"
{extra}"#,
            node = self.node_name,
            state = self.state_dir.display(),
            log_level = self.log_level,
            grace = self.shutdown_grace,
            kubeconfig = self.kubeconfig.display(),
            kind = self.runtime_kind,
            endpoint = self.runtime_endpoint.display(),
            conf = self.conf_dir.display(),
            bin = self.bin_dir.display(),
            plugin_timeout = self.plugin_timeout,
            networks = self.networks,
            concurrency = self.concurrency,
            retry_base = self.retry_base,
            retry_cap = self.retry_cap,
            resync = self.resync_period,
            metrics = self.metrics_listen,
            extra = self.extra,
        )
    }
}

/// The value of the sample `name` in the Prometheus exposition `text` whose labels include
/// every pair of `labels`; `None` when the exposition has no such sample.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let pairs: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
        let all = labels
            .iter()
            .all(|(key, val)| pairs.contains(&format!("{key}=\"{val}\"").as_str()));
        all.then(|| value.parse().ok()).flatten()
    })
}

/// `GET path` from the HTTP server at `address` (HTTP/1.0, so the server closes when done);
/// `None` while nothing answers there.
pub fn http_get(address: &str, path: &str) -> Option<HttpAnswer> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(WAIT)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(HttpAnswer {
        status,
        body: body.to_owned(),
    })
}

/// A running podagent; killed (SIGKILL, by PID) on drop.
pub struct Agent {
    child: Child,
    /// Where its metrics listener is, when it has one.
    metrics: Option<String>,
}

/// An HTTP answer: the status code and the body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

impl Agent {
    /// `GET path` from the agent's metrics listener (HTTP/1.0, so the server closes when done);
    /// `None` while nothing answers there.
    pub fn get(&self, path: &str) -> Option<HttpAnswer> {
        let address = self
            .metrics
            .as_deref()
            .expect("the agent has a metrics listener");
        http_get(address, path)
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits")
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), signal);
    }

    /// SIGTERM, and waits for a clean exit (status 0).
    pub fn stop(mut self) {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(WAIT);
        assert!(status.success(), "podagent exited with {status} on SIGTERM");
    }

    /// SIGKILL, and reaps it.
    pub fn kill(mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit; panics when it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait podagent") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "podagent did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait podagent").is_none()
    }

    /// CPU time used so far, in clock ticks (utime + stime from /proc/<pid>/stat).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let after = stat.rsplit_once(')').expect("stat format").1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }

    /// Resident memory, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// The links of a netns as `ip -j addr` shows them, through `nsenter` (works for
/// `/var/run/netns/…` and `/proc/<pid>/ns/net` alike).
pub fn links(netns: &Path) -> Vec<Value> {
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

/// Whether `netns` has a link `name`.
/// `name -> MAC` of the links in `netns` other than `lo` and the default network's `eth0`:
/// what was added to a pod after its sandbox came up.
pub fn added_links(netns: &Path) -> std::collections::BTreeMap<String, String> {
    links(netns)
        .iter()
        .filter_map(|link| {
            let name = link["ifname"].as_str()?;
            (!["lo", "eth0"].contains(&name)).then(|| {
                let mac = link["address"].as_str().unwrap_or_default();
                (name.to_owned(), mac.to_owned())
            })
        })
        .collect()
}

pub fn has_link(netns: &Path, name: &str) -> bool {
    links(netns).iter().any(|l| l["ifname"] == name)
}

/// The IPv4 address of link `name` in `netns`, once it has one.
pub fn ipv4(netns: &Path, name: &str) -> Option<String> {
    links(netns).iter().find(|l| l["ifname"] == name)?["addr_info"]
        .as_array()?
        .iter()
        .find(|a| a["family"] == "inet")
        .and_then(|a| a["local"].as_str())
        .map(str::to_owned)
}

/// The MAC address of link `name` in `netns`.
pub fn mac(netns: &Path, name: &str) -> Option<String> {
    links(netns).iter().find(|l| l["ifname"] == name)?["address"]
        .as_str()
        .map(str::to_owned)
}
