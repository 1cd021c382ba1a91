//! Churn soak: the real podagent under a seeded random sequence of annotation edits, pod and
//! sandbox re-creations, podagent restarts (SIGTERM and SIGKILL), containerd restarts, API
//! server faults (dropped watches, 410 Gone, 500 bursts, latency) and CNI conf dir changes, with
//! the node's invariants checked after every quiet period; in all three network modes, direct
//! and npwg mode adding edits and deletions of their network objects (each deleted one is
//! created again a moment later) to the actions.
//!
//! A kubelet phase follows (direct mode): the same invariants on a node a real kubelet runs,
//! while it re-creates sandboxes whose pause process was killed, replaces deleted pods of a
//! Deployment and rolls it, restarts killed containers, and is restarted itself beside podagent
//! restarts and annotation edits of standalone pods; the model of which pods exist, and their
//! sandboxes, is read back from the API and the runtime, and a quiet period ends only once every
//! pod runs (none terminating) and the rollout has settled.
//!
//! The suite runs a short version (a few rounds); `scripts/soak.sh --minutes N` runs rounds for
//! N minutes (env `PODAGENT_SOAK_MINUTES`) in each mode and phase. The seed is printed first;
//! `PODAGENT_SOAK_SEED=<n>` replays the same sequence of actions (timing still differs, as on a
//! real node).
//!
//! Invariants after each quiet period, for every live pod:
//! - its netns holds exactly one link per desired attachment on the interface it asks for or
//!   podagent derives, and no other but `lo` and `eth0`, with the requested MAC when one is set;
//! - host-local holds exactly one address per desired attachment of its sandbox and none for an
//!   attachment that was removed (no IP leak). In kactus mode, addresses of sandboxes the test
//!   removed are released by a stand-in for the runtime's CNI teardown (kactus does it in
//!   production); in direct and npwg mode nothing stands in: podagent's own DELs must release
//!   them, so no address may be left for any sandbox but a live pod's current one;
//! - podagent's record lists exactly the desired attachments by interface, all `Attached`;
//! - npwg mode: `k8s.v1.cni.cncf.io/network-status` lists exactly the desired attachments,
//!   after the default network's entry the test wrote at pod creation, which stays intact;
//!
//! and for the node: podagent is alive, no record is left for a deleted pod, and its resident
//! memory has not grown past a generous bound since the first quiet period of its run.
//!
//! In kactus mode all networks share one primary CNI config (bridge + host-local + tuning,
//! through the test wrapper plugin); the network name only selects the interface name. In
//! direct mode each network is a `Network` object of its own with the same plugins, its own
//! quarter of the node's subnet and its own host-local dir, edited by the test (its MTU) as it
//! goes; npwg mode does the same with NetworkAttachmentDefinitions, asks in both annotation
//! forms and gives two of the networks an `eth<n>` interface from a per-pod pool, so that an edit
//! can swap the network behind a name. The API server is the real one (its own control plane
//! for this test binary); podagent reaches it on its own service-account token through the
//! fault proxy: dropped connections, injected 500s and latency come from the proxy, a real 410
//! Gone from restarting kube-apiserver (its new watch cache starts past podagent's
//! resourceVersion; `tests/api_restart.rs` checks that path on its own).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use podagent::annotation::ifname;
use serde_json::{Value, json};
use testkit::fault_proxy::FaultProxy;
use testkit::node::{Agent, Node};

const PODAGENT: &str = env!("CARGO_BIN_EXE_podagent");
const NETWORKS: [&str; 4] = ["green", "blue", "red", "data"];
const PODS: usize = 4;
const SHORT_ROUNDS: u32 = 5;
/// The sequence the suite's short run replays: it covers edits, a pod and a sandbox
/// re-creation, podagent and containerd restarts, API faults and a conf dir change.
const SHORT_SEED: u64 = 91;
/// The direct-mode short run's sequence: besides the kinds of action above (and a
/// kube-apiserver restart) it edits a Network, deletes one, and re-creates a pod and a sandbox
/// whose attachments only podagent can release.
const DIRECT_SHORT_SEED: u64 = 40;
/// The npwg-mode short run's sequence: NetworkAttachmentDefinition deletions, both annotation
/// forms, SIGKILL restarts, and a network swapped behind an interface name (p3's `eth2`, from
/// red to data).
const NPWG_SHORT_SEED: u64 = 7;
const QUIET_TIMEOUT: Duration = Duration::from_secs(60);
/// The kubelet phase's short run: a pause process killed, Deployment pods deleted and rolled,
/// the kubelet and podagent restarted, a container killed, standalone pods' annotations edited.
const KUBELET_SHORT_SEED: u64 = 3;
/// The kubelet phase's Deployment, its replicas, and the pods it adds on their own.
const DEPLOYMENT: &str = "web";
const REPLICAS: usize = 2;
const STANDALONE: usize = 2;
/// The annotation podagent reads in npwg mode, and the status it merges its entries into.
const NPWG_NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const NPWG_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

/// The network mode of one soak run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Kactus,
    /// Kaloom `Network` objects, resolved and run by podagent.
    Direct,
    /// NetworkAttachmentDefinitions and the NPWG annotation.
    Npwg,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Kactus => "kactus",
            Mode::Direct => "direct",
            Mode::Npwg => "npwg",
        }
    }

    /// `(apiVersion, kind)` of the network objects the test edits; none in kactus mode.
    fn objects(self) -> Option<(&'static str, &'static str)> {
        match self {
            Mode::Kactus => None,
            Mode::Direct => Some(("kaloom.com/v1", "Network")),
            Mode::Npwg => Some(("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition")),
        }
    }
}

/// xorshift64*: a tiny deterministic generator, so a seed replays the same actions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One network a pod asks for.
#[derive(Clone)]
struct Want {
    network: String,
    mac: Option<String>,
    /// npwg mode: the interface the element names (else podagent derives one).
    interface: Option<String>,
}

impl Want {
    fn ifname(&self) -> String {
        self.interface
            .clone()
            .unwrap_or_else(|| ifname(&self.network))
    }
}

struct Pod {
    name: String,
    uid: String,
    sandbox: String,
    netns: PathBuf,
    desired: Vec<Want>,
    generation: u32,
}

struct World {
    node: Node,
    mode: Mode,
    /// Direct and npwg mode: each network object's MTU now (edits flip it).
    mtus: BTreeMap<&'static str, u32>,
    proxy: FaultProxy,
    pods: Vec<Pod>,
    agent: Option<Agent>,
    rss_baseline: Option<u64>,
    conf_file: &'static str,
}

impl World {
    async fn new(mode: Mode) -> World {
        World::on(Node::with_containerd(PODAGENT).await, mode).await
    }

    async fn on(node: Node, mode: Mode) -> World {
        let proxy = node.fault_proxy().await;
        let mtus = NETWORKS.iter().map(|n| (*n, 1500)).collect();
        let world = World {
            node,
            mode,
            mtus,
            proxy,
            pods: Vec::new(),
            agent: None,
            rss_baseline: None,
            conf_file: "10-hotplug.conflist",
        };
        match mode {
            Mode::Kactus => return world,
            Mode::Direct => world.node.cluster().install_network_crd(),
            Mode::Npwg => world.node.cluster().install_attachment_definition_crd(),
        }
        for network in NETWORKS {
            world.put_network(network);
        }
        world
    }

    /// Network object `name` (a `Network` or a NetworkAttachmentDefinition) as the test wants
    /// it now (created or replaced).
    fn put_network(&self, name: &'static str) {
        let part = NETWORKS.iter().position(|n| *n == name).unwrap_or(0) as u32;
        let config = json!({
            "cniVersion": "1.0.0",
            "plugins": [
                {"type": testkit::node::PLUGIN, "bridge": self.node.bridge(), "isGateway": false,
                 "ipMasq": false, "mtu": self.mtus[name],
                 "ipam": {"type": "host-local",
                          "subnet": format!("{}{}/26", self.node.address_prefix(), 64 * part),
                          "dataDir": self.path("ipam")}},
                {"type": "tuning", "capabilities": {"mac": true}},
            ],
        });
        let config = config.to_string();
        if self.mode == Mode::Npwg {
            self.node
                .put_attachment_definition("default", name, json!({ "config": config }));
        } else {
            self.node.put_network(
                "default",
                name,
                json!({"plugin": "bridge", "config": config}),
            );
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.node.path(rel)
    }

    /// Starts podagent and waits until its SIGTERM handler is installed (`SigCgt` in
    /// `/proc/<pid>/status`): a signal in the few milliseconds before that ends the process by
    /// the default action (systemd counts that as a clean stop too), which is not what the
    /// restart actions mean to exercise. Reading the kernel's mask, not a log line, keeps this
    /// independent of where podagent logs (journald when a journal socket exists).
    fn start_agent(&mut self) {
        let mut config = self.node.agent_config();
        config.log_level = "info".into();
        config.retry_base = "500ms".into();
        config.resync_period = "30s".into();
        config.networks = format!("mode = \"{}\"\n", self.mode.as_str());
        self.node.through_proxy(&mut config, &self.proxy);
        let mut agent = self.node.start_agent_with(&config);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !catches_sigterm(agent.pid()) {
            assert!(agent.running(), "podagent exited during startup");
            assert!(
                Instant::now() < deadline,
                "podagent installed no SIGTERM handler within 20 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.agent = Some(agent);
        self.rss_baseline = None;
    }

    /// The annotation that asks for `desired`: the Kaloom JSON list, or in npwg mode the
    /// comma form (`name`, `name@ifname`) when no element requests a MAC and the JSON form
    /// when one does.
    fn annotation(&self, desired: &[Want]) -> String {
        let npwg = self.mode == Mode::Npwg;
        if npwg && desired.iter().all(|w| w.mac.is_none()) {
            let names: Vec<String> = desired
                .iter()
                .map(|w| match &w.interface {
                    Some(interface) => format!("{}@{interface}", w.network),
                    None => w.network.clone(),
                })
                .collect();
            return names.join(", ");
        }
        let entries: Vec<Value> = desired
            .iter()
            .map(|w| {
                let mut entry = json!({ "name": w.network });
                if let Some(mac) = &w.mac {
                    entry[if npwg { "mac" } else { "ifMac" }] = json!(mac);
                }
                if let Some(interface) = &w.interface {
                    entry["interface"] = json!(interface);
                }
                entry
            })
            .collect();
        Value::Array(entries).to_string()
    }

    /// A random subset of the networks, some with a MAC. In npwg mode the last two networks
    /// always ask for an `eth<n>` interface drawn from one pool per pod, so an edit can move a
    /// name from one network to another (a swap); the first two never do. (An element without
    /// `interface` keeps the interface its network already has in the record, so a network
    /// that sometimes asked for one would end on a name that depends on which of several quick
    /// edits podagent saw: the model could not tell.)
    fn random_desired(&self, rng: &mut Rng, pod: usize) -> Vec<Want> {
        let mut desired = Vec::new();
        let mut free: Vec<u32> = (1..=NETWORKS.len() as u32).collect();
        for (k, name) in NETWORKS.iter().enumerate() {
            if rng.below(2) == 0 {
                continue;
            }
            let mac = (rng.below(3) == 0)
                .then(|| format!("02:00:5a:{:02x}:{pod:02x}:{k:02x}", rng.below(256)));
            let interface = (self.mode == Mode::Npwg && k >= 2).then(|| {
                let n = free.remove(rng.below(free.len() as u64) as usize);
                format!("eth{n}")
            });
            desired.push(Want {
                network: (*name).to_owned(),
                mac,
                interface,
            });
        }
        desired
    }

    /// The annotation key the mode reads.
    fn networks_key(&self) -> &'static str {
        if self.mode == Mode::Npwg {
            NPWG_NETWORKS
        } else {
            "networks"
        }
    }

    async fn create_pod(&mut self, index: usize, generation: u32, rng: &mut Rng) -> Pod {
        let name = format!("p{index}-{generation}");
        let desired = self.random_desired(rng, index);
        let mut annotations = json!({ self.networks_key(): self.annotation(&desired) });
        if self.mode == Mode::Npwg {
            annotations[NPWG_STATUS] = json!(json!([default_status_entry()]).to_string());
        }
        let (uid, sandbox) = self
            .node
            .pod_with_annotations("default", &name, annotations)
            .await;
        let netns = self.node.netns(&sandbox).await;
        Pod {
            name,
            uid,
            sandbox,
            netns,
            desired,
            generation,
        }
    }

    /// Stops and removes pod `i`'s sandbox `id` the way a node with kactus as its primary CNI
    /// does: the runtime's CNI DEL at teardown goes through kactus, which releases every
    /// attachment of the pod, hot-plugged ones included. podagent never DELs into a dead
    /// sandbox, so without this stand-in the attachments' host-local leases would pile up.
    /// In direct and npwg mode the sandbox just goes: releasing its attachments is podagent's
    /// job.
    async fn tear_down_sandbox(&self, i: usize, id: &str) {
        let containerd = self.node.containerd();
        if self.mode != Mode::Kactus {
            containerd.stop_pod_sandbox(id).await;
            containerd.remove_pod_sandbox(id).await;
            return;
        }
        let pod = &self.pods[i];
        let teardown = podagent::cni::Invoker::new(podagent::cni::Settings {
            conf_dir: self.path("conf"),
            bin_dirs: vec![self.path("bin"), PathBuf::from("/usr/lib/cni")],
            vendor: None,
            timeout: Duration::from_secs(20),
            env_passthrough: Vec::new(),
            cache_dir: self.path("teardown-cache"),
            host_root: None,
        });
        for (sandbox, link) in self.allocations() {
            if sandbox != id {
                continue;
            }
            let network = NETWORKS
                .iter()
                .find(|n| ifname(n) == link)
                .map_or_else(|| link.clone(), |n| (*n).to_owned());
            let attachment = podagent::cni::Target {
                sandbox_id: sandbox,
                netns: pod.netns.clone(),
                ifname: link,
                pod_namespace: self.node.ns("default"),
                pod_name: pod.name.clone(),
                pod_uid: pod.uid.clone(),
                network,
                if_mac: None,
                config: None,
                requested: None,
            };
            podagent::cni::Cni::del(&teardown, &attachment)
                .await
                .expect("the runtime-side teardown releases the attachment");
        }
        containerd.stop_pod_sandbox(id).await;
        containerd.remove_pod_sandbox(id).await;
    }

    async fn act(&mut self, rng: &mut Rng) -> String {
        let i = rng.below(PODS as u64) as usize;
        // Direct and npwg mode have two more actions; kactus mode keeps its sequence for a seed.
        match rng.below(if self.mode == Mode::Kactus { 10 } else { 12 }) {
            0..=3 => {
                let desired = self.random_desired(rng, i);
                let value = self.annotation(&desired);
                let key = self.networks_key();
                self.node
                    .annotate("default", &self.pods[i].name, key, Some(&value));
                self.pods[i].desired = desired;
                format!("edit {} -> {value}", self.pods[i].name)
            }
            4 => {
                let old = &self.pods[i];
                let (old_name, old_sandbox, generation) =
                    (old.name.clone(), old.sandbox.clone(), old.generation + 1);
                self.node.mark_terminating("default", &old_name);
                self.tear_down_sandbox(i, &old_sandbox).await;
                self.node.remove_pod("default", &old_name);
                let pod = self.create_pod(i, generation, rng).await;
                let text = format!("re-create pod {old_name} as {}", pod.name);
                self.pods[i] = pod;
                text
            }
            5 => {
                let pod = &self.pods[i];
                let (uid, name, old) = (pod.uid.clone(), pod.name.clone(), pod.sandbox.clone());
                self.tear_down_sandbox(i, &old).await;
                let sandbox = self.node.run_sandbox(&uid, "default", &name).await;
                let netns = self.node.netns(&sandbox).await;
                self.node
                    .report_running("default", &name, &sandbox[..12], 1);
                let pod = &mut self.pods[i];
                pod.sandbox = sandbox;
                pod.netns = netns;
                format!("re-create sandbox of {name}")
            }
            6 => self.restart_agent(rng),
            7 => {
                self.node.containerd_mut().restart().await;
                "restart containerd".to_owned()
            }
            8 => {
                let faults = self.proxy.faults();
                match rng.below(4) {
                    0 => {
                        faults.cut_connections();
                        "API fault: connections cut".to_owned()
                    }
                    1 => {
                        self.node.cluster().restart_apiserver();
                        "API fault: kube-apiserver restarted (watches dropped, 410 Gone)".to_owned()
                    }
                    2 => {
                        faults.fail_next(5, 500);
                        "API fault: five 500s".to_owned()
                    }
                    _ => {
                        faults.set_latency(Duration::from_millis(200));
                        "API fault: 200 ms latency".to_owned()
                    }
                }
            }
            10 => {
                let network = NETWORKS[rng.below(NETWORKS.len() as u64) as usize];
                let mtu = self.mtus.get_mut(network).expect("a known network");
                *mtu = if *mtu == 1500 { 1400 } else { 1500 };
                let (_, kind) = self.mode.objects().expect("network objects");
                let text = format!("edit {kind} {network}: mtu {mtu}");
                self.put_network(network);
                text
            }
            11 => {
                let network = NETWORKS[rng.below(NETWORKS.len() as u64) as usize];
                let namespace = self.node.ns("default");
                let (api_version, kind) = self.mode.objects().expect("network objects");
                self.node
                    .cluster()
                    .admin()
                    .delete(api_version, kind, Some(&namespace), network, None)
                    .unwrap_or_else(|e| panic!("delete {kind} {network}: {e:#}"));
                tokio::time::sleep(Duration::from_millis(rng.below(1500))).await;
                self.put_network(network);
                format!("delete {kind} {network}, create it again")
            }
            _ => {
                self.conf_file = if self.conf_file.starts_with("10") {
                    "05-hotplug.conflist"
                } else {
                    "10-hotplug.conflist"
                };
                let old: Vec<PathBuf> = fs::read_dir(self.path("conf"))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                self.node.write_conflist(self.conf_file, true);
                for file in old {
                    if !file.ends_with(self.conf_file) {
                        let _ = fs::remove_file(file);
                    }
                }
                format!("CNI conf now {}", self.conf_file)
            }
        }
    }

    /// Stops podagent (SIGTERM, or SIGKILL at random) and starts it again.
    fn restart_agent(&mut self, rng: &mut Rng) -> String {
        let mut agent = self.agent.take().expect("agent");
        let kill = rng.below(2) == 0;
        if kill {
            agent.signal(nix::sys::signal::Signal::SIGKILL);
        } else {
            agent.signal(nix::sys::signal::Signal::SIGTERM);
        }
        let status = agent.wait_exit(Duration::from_secs(30));
        assert!(
            kill || status.success(),
            "podagent exited {status} on SIGTERM"
        );
        self.start_agent();
        format!(
            "restart podagent ({})",
            if kill { "SIGKILL" } else { "SIGTERM" }
        )
    }

    /// Every invariant violated now; empty when the node is as it should be.
    fn violations(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        let allocations = self.allocations();
        for pod in &self.pods {
            let want: BTreeSet<String> = pod.desired.iter().map(Want::ifname).collect();
            let links = testkit::node::added_links(&pod.netns);
            let have: BTreeSet<String> = links.keys().cloned().collect();
            if have != want {
                found.push(format!("{}: links {have:?}, desired {want:?}", pod.name));
            }
            for wanted in &pod.desired {
                let ifname = wanted.ifname();
                if let Some(mac) = &wanted.mac
                    && let Some(has) = links.get(&ifname).filter(|m| *m != mac)
                {
                    found.push(format!(
                        "{}: {} on {ifname} has MAC {has}, wanted {mac}",
                        pod.name, wanted.network
                    ));
                }
            }
            let allocated: BTreeSet<String> = allocations
                .iter()
                .filter(|(sandbox, _)| *sandbox == pod.sandbox)
                .map(|(_, ifname)| ifname.clone())
                .collect();
            let allocated_count = allocations
                .iter()
                .filter(|(s, _)| *s == pod.sandbox)
                .count();
            if allocated != want || allocated_count != want.len() {
                found.push(format!(
                    "{}: host-local allocations {allocated:?} ({allocated_count}), desired {want:?}",
                    pod.name
                ));
            }
            let record = fs::read_to_string(self.path(&format!("state/{}.json", pod.uid)))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            let recorded: BTreeMap<String, (String, String)> = record
                .as_ref()
                .and_then(|r| r["record"]["attachments"].as_object().cloned())
                .unwrap_or_default()
                .into_iter()
                .map(|(ifname, v)| {
                    let network = v["selection"]["name"].as_str().unwrap_or("").to_owned();
                    (
                        ifname,
                        (network, v["phase"].as_str().unwrap_or("").to_owned()),
                    )
                })
                .collect();
            let desired: BTreeMap<String, (String, String)> = pod
                .desired
                .iter()
                .map(|w| (w.ifname(), (w.network.clone(), "Attached".to_owned())))
                .collect();
            if recorded != desired {
                found.push(format!(
                    "{}: record {recorded:?}, desired {desired:?}",
                    pod.name
                ));
            }
        }
        let live: BTreeSet<String> = self
            .pods
            .iter()
            .map(|p| format!("{}.json", p.uid))
            .collect();
        for entry in fs::read_dir(self.path("state")).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") && !live.contains(&name) {
                found.push(format!("record {name} left for a deleted pod"));
            }
        }
        if self.mode == Mode::Npwg {
            found.extend(self.status_violations());
        }
        if self.mode != Mode::Kactus {
            let current: BTreeSet<&str> = self.pods.iter().map(|p| p.sandbox.as_str()).collect();
            for (sandbox, ifname) in &allocations {
                if !current.contains(sandbox.as_str()) {
                    found.push(format!(
                        "host-local address left for {ifname} of gone sandbox {sandbox}"
                    ));
                }
            }
        }
        let agent = self.agent.as_mut().expect("agent");
        if !agent.running() {
            found.push("podagent is not running".to_owned());
        } else {
            let rss = agent.rss_kib();
            match self.rss_baseline {
                None => self.rss_baseline = Some(rss),
                Some(base) if rss > base * 2 + 32 * 1024 => {
                    found.push(format!("podagent RSS grew from {base} KiB to {rss} KiB"));
                }
                Some(_) => {}
            }
        }
        found
    }

    /// npwg mode: each pod's `network-status` lists exactly its desired attachments (as
    /// `namespace/name` on their interface), after the default network's entry the test
    /// wrote at pod creation, which stays first and untouched.
    fn status_violations(&self) -> Vec<String> {
        let namespace = self.node.ns("default");
        let mut found = Vec::new();
        for pod in &self.pods {
            let status: Vec<Value> = self
                .node
                .get_pod("default", &pod.name)
                .and_then(|p| {
                    p["metadata"]["annotations"][NPWG_STATUS]
                        .as_str()
                        .map(str::to_owned)
                })
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_default();
            let shown: BTreeSet<(String, String)> = status
                .iter()
                .filter(|e| e["default"] == false)
                .map(|e| {
                    let field = |key: &str| e[key].as_str().unwrap_or_default().to_owned();
                    (field("interface"), field("name"))
                })
                .collect();
            let want: BTreeSet<(String, String)> = pod
                .desired
                .iter()
                .map(|w| (w.ifname(), format!("{namespace}/{}", w.network)))
                .collect();
            if shown != want {
                found.push(format!(
                    "{}: network-status shows {shown:?}, desired {want:?}",
                    pod.name
                ));
            }
            if status.first() != Some(&default_status_entry()) {
                found.push(format!(
                    "{}: the default network's entry is not first and intact: {status:?}",
                    pod.name
                ));
            }
        }
        found
    }

    /// (sandbox id, ifname) of every host-local allocation, of every network's dir.
    fn allocations(&self) -> Vec<(String, String)> {
        let Ok(networks) = fs::read_dir(self.path("ipam")) else {
            return Vec::new();
        };
        networks
            .filter_map(Result::ok)
            .filter_map(|network| fs::read_dir(network.path()).ok())
            .flatten()
            .filter_map(|e| {
                let path = e.ok()?.path();
                let name = path.file_name()?.to_str()?.to_owned();
                if !name.contains('.') || name.starts_with("last_reserved_ip") {
                    return None;
                }
                let text = fs::read_to_string(&path).ok()?;
                let mut lines = text.lines().map(str::trim);
                Some((
                    lines.next()?.to_owned(),
                    lines.next().unwrap_or("").to_owned(),
                ))
            })
            .collect()
    }

    async fn quiet(&mut self, round: u32, seed: u64) {
        self.proxy.faults().clear();
        let deadline = Instant::now() + QUIET_TIMEOUT;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let violations = self.violations();
            if violations.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let log = self.node.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "round {round} (seed {seed}): invariants still violated after {QUIET_TIMEOUT:?}:\n{}\npodagent log (newest first):\n{}",
                    violations.join("\n"),
                    tail.join("\n")
                );
            }
        }
    }
}

/// The default network's `network-status` entry, as Multus writes it at pod creation.
fn default_status_entry() -> Value {
    json!({"name": "cbr0", "interface": "eth0", "default": true, "dns": {}})
}

/// Whether process `pid` has a handler for SIGTERM, from the kernel's caught-signal mask.
fn catches_sigterm(pid: i32) -> bool {
    let bit = 1u64 << (nix::sys::signal::Signal::SIGTERM as i32 - 1);
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("SigCgt:")
                    .map(|mask| mask.trim().to_owned())
            })
        })
        .and_then(|mask| u64::from_str_radix(&mask, 16).ok())
        .is_some_and(|mask| mask & bit != 0)
}

/// All three modes, then the kubelet phase, one after the other: a kube-apiserver restart
/// reaches every test of this binary, and each run's own API calls must not meet another's
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_keeps_every_invariant() {
    soak(Mode::Kactus, SHORT_SEED).await;
    soak(Mode::Direct, DIRECT_SHORT_SEED).await;
    soak(Mode::Npwg, NPWG_SHORT_SEED).await;
    kubelet_soak(KUBELET_SHORT_SEED).await;
}

/// Rounds of actions and quiet periods, for the minutes `PODAGENT_SOAK_MINUTES` asks, or the
/// short run of `short_seed`.
async fn soak(mode: Mode, short_seed: u64) {
    let (seed, minutes) = seed_and_minutes(short_seed);
    println!(
        "soak seed {seed}, {} mode (replay with PODAGENT_SOAK_SEED={seed})",
        mode.as_str()
    );
    let mut rng = Rng(seed);
    let mut world = World::new(mode).await;
    for i in 0..PODS {
        let pod = world.create_pod(i, 0, &mut rng).await;
        world.pods.push(pod);
    }
    world.start_agent();
    world.quiet(0, seed).await;

    let started = Instant::now();
    let mut round = 0;
    while !done(round, minutes, started) {
        round += 1;
        for _ in 0..3 {
            let action = world.act(&mut rng).await;
            println!("round {round}: {action}");
            tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        }
        world.quiet(round, seed).await;
    }
    println!(
        "soak passed: {round} rounds in {:?}, seed {seed}",
        started.elapsed()
    );
}

/// The seed (`PODAGENT_SOAK_SEED`, else `short_seed` for the suite's short run, else a new one)
/// and the minutes `PODAGENT_SOAK_MINUTES` asks for (none: the short run).
fn seed_and_minutes(short_seed: u64) -> (u64, Option<f64>) {
    let minutes: Option<f64> = std::env::var("PODAGENT_SOAK_MINUTES")
        .ok()
        .map(|m| m.parse().expect("PODAGENT_SOAK_MINUTES is a number"));
    // The suite's short run replays one fixed sequence; long runs explore new ones.
    let seed = match std::env::var("PODAGENT_SOAK_SEED") {
        Ok(seed) => seed.parse().expect("PODAGENT_SOAK_SEED is a number"),
        Err(_) if minutes.is_none() => short_seed,
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        }
    };
    (seed, minutes)
}

/// Whether a run that has done `round` rounds since `started` is over.
fn done(round: u32, minutes: Option<f64>, started: Instant) -> bool {
    match minutes {
        Some(m) => started.elapsed() > Duration::from_secs_f64(m * 60.0),
        None => round >= SHORT_ROUNDS,
    }
}

/// The kubelet phase (direct mode): the same invariants on a node a real kubelet runs, while it
/// re-creates sandboxes whose pause process died, replaces and rolls a Deployment's pods, and
/// restarts containers, itself and podagent. Pods and their sandboxes are the kubelet's: before
/// each check the model is read back from the API and the runtime, and a check passes only
/// once every pod is Running (none terminating) and the Deployment's rollout has settled.
struct KubeletPhase {
    world: World,
    /// What the Deployment's pods ask for (no MAC: its replicas share one template).
    template: Vec<Want>,
    /// What each standalone pod (`solo-<n>`) asks for now.
    standalone: Vec<Vec<Want>>,
}

impl KubeletPhase {
    async fn new(rng: &mut Rng) -> KubeletPhase {
        let world = World::on(Node::with_kubelet(PODAGENT).await, Mode::Direct).await;
        let template = vec![
            Want {
                network: "green".into(),
                mac: None,
                interface: None,
            },
            Want {
                network: "blue".into(),
                mac: None,
                interface: None,
            },
        ];
        let mut phase = KubeletPhase {
            world,
            template,
            standalone: Vec::new(),
        };
        let node = &phase.world.node;
        let labels = json!({"app": DEPLOYMENT});
        node.cluster()
            .admin()
            .create(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"namespace": node.ns("default"), "name": DEPLOYMENT},
                "spec": {
                    "replicas": REPLICAS,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels, "annotations":
                            {"networks": phase.world.annotation(&phase.template)}},
                        "spec": node.kubelet().pod_spec(&testkit::kubelet::POD_COMMAND),
                    },
                },
            }))
            .expect("creating the Deployment");
        for n in 0..STANDALONE {
            let desired = phase.world.random_desired(rng, n);
            let annotations = json!({"networks": phase.world.annotation(&desired)});
            node.kubelet_pod("default", &format!("solo-{n}"), annotations)
                .await;
            phase.standalone.push(desired);
        }
        phase
    }

    /// The pods as the kubelet runs them now, with what each asks for; `Err` saying what has
    /// not settled yet (a pod pending or terminating, a rollout under way, no ready sandbox).
    async fn pods(&self) -> Result<Vec<Pod>, String> {
        let node = &self.world.node;
        let namespace = node.ns("default");
        let admin = node.cluster().admin();
        let deployment = admin
            .get("apps/v1", "Deployment", Some(&namespace), DEPLOYMENT)
            .ok_or("no Deployment")?;
        let status = &deployment["status"];
        let rolled = deployment["metadata"]["generation"] == status["observedGeneration"]
            && ["replicas", "updatedReplicas", "readyReplicas"]
                .iter()
                .all(|field| status[*field] == REPLICAS);
        if !rolled {
            return Err(format!("the Deployment's rollout is under way: {status}"));
        }
        let mut pods = Vec::new();
        for pod in admin.list("v1", "Pod", Some(&namespace)) {
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let ready = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "ContainersReady" && c["status"] == "True");
            if !pod["metadata"]["deletionTimestamp"].is_null() || !ready {
                return Err(format!(
                    "pod {name} is not Running and ready, or terminating"
                ));
            }
            let desired = match name
                .strip_prefix("solo-")
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) => &self.standalone[n],
                None => &self.template,
            };
            let uid = pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let sandbox = node
                .cri()
                .ready_sandbox(&uid)
                .await
                .ok_or(format!("pod {name} has no ready sandbox"))?;
            let netns = node.netns(&sandbox).await;
            pods.push(Pod {
                name,
                uid,
                sandbox,
                netns,
                desired: desired.clone(),
                generation: 0,
            });
        }
        Ok(pods)
    }

    async fn act(&mut self, rng: &mut Rng) -> String {
        let pods = &self.world.pods;
        let pod = &pods[rng.below(pods.len() as u64) as usize];
        let node = &self.world.node;
        let namespace = node.ns("default");
        match rng.below(7) {
            0 => format!(
                "kill the pause process of {}: {}",
                pod.name,
                kill_in(&pod.netns, testkit::kubelet::PAUSE_COMMAND)
            ),
            1 => format!(
                "kill the container of {}: {}",
                pod.name,
                kill_in(&pod.netns, &testkit::kubelet::POD_COMMAND.join(" "))
            ),
            2 => {
                let victim = pods
                    .iter()
                    .find(|p| !p.name.starts_with("solo-"))
                    .expect("a replica");
                node.cluster()
                    .admin()
                    .delete("v1", "Pod", Some(&namespace), &victim.name, None)
                    .unwrap_or_else(|e| panic!("deleting {}: {e:#}", victim.name));
                format!("delete {} (its ReplicaSet replaces it)", victim.name)
            }
            3 => {
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                node.cluster()
                    .admin()
                    .patch_merge(
                        "apps/v1",
                        "Deployment",
                        Some(&namespace),
                        DEPLOYMENT,
                        json!({"spec": {"template": {"metadata": {"annotations":
                            {"kubectl.kubernetes.io/restartedAt": at.to_string()}}}}}),
                    )
                    .expect("restarting the rollout");
                format!("roll the Deployment {DEPLOYMENT}")
            }
            4 => {
                let n = rng.below(STANDALONE as u64) as usize;
                let desired = self.world.random_desired(rng, n);
                let value = self.world.annotation(&desired);
                node.annotate("default", &format!("solo-{n}"), "networks", Some(&value));
                self.standalone[n] = desired;
                format!("edit solo-{n} -> {value}")
            }
            5 => {
                self.world.node.kubelet_mut().restart_kubelet().await;
                "restart the kubelet".to_owned()
            }
            _ => self.world.restart_agent(rng),
        }
    }

    /// Waits until the pods have settled and every invariant holds (for [`QUIET_TIMEOUT`]).
    async fn quiet(&mut self, round: u32, seed: u64) {
        let deadline = Instant::now() + QUIET_TIMEOUT;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let violations = match self.pods().await {
                Ok(pods) => {
                    self.world.pods = pods;
                    self.world.violations()
                }
                Err(unsettled) => vec![unsettled],
            };
            if violations.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let log = self.world.node.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "kubelet round {round} (seed {seed}): invariants still violated after \
                     {QUIET_TIMEOUT:?}:\n{}\npodagent log (newest first):\n{}\nkubelet log:\n{}",
                    violations.join("\n"),
                    tail.join("\n"),
                    self.world.node.kubelet().kubelet_log_tail()
                );
            }
        }
    }
}

/// Kills the process running `command` in the network namespace pinned at `netns`; what the
/// kubelet does about it, or that it was gone already (its pod rolled, or a kill before).
fn kill_in(netns: &std::path::Path, command: &str) -> &'static str {
    let found = testkit::host::processes_in_netns(netns)
        .into_iter()
        .find(|(_, cmdline)| cmdline == command);
    match found {
        Some((pid, _)) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            "the kubelet starts it again"
        }
        None => "gone already",
    }
}

/// The kubelet phase's rounds, for the minutes `PODAGENT_SOAK_MINUTES` asks, or the short run.
async fn kubelet_soak(short_seed: u64) {
    let (seed, minutes) = seed_and_minutes(short_seed);
    println!("soak seed {seed}, kubelet phase (replay with PODAGENT_SOAK_SEED={seed})");
    let mut rng = Rng(seed);
    let mut phase = KubeletPhase::new(&mut rng).await;
    phase.world.start_agent();
    phase.quiet(0, seed).await;
    let started = Instant::now();
    let mut round = 0;
    while !done(round, minutes, started) {
        round += 1;
        for _ in 0..2 {
            let action = phase.act(&mut rng).await;
            println!("kubelet round {round}: {action}");
        }
        phase.quiet(round, seed).await;
    }
    println!(
        "kubelet phase passed: {round} rounds in {:?}, seed {seed}",
        started.elapsed()
    );
}
