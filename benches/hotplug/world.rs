//! The benchmark's node: the shared fixture `testkit::node::Node` on the shared real control
//! plane (`testkit::control_plane`: etcd, kube-apiserver, kube-controller-manager), with a
//! private containerd for real pod sandboxes and the Debian bridge + host-local plugins
//! reached through the fixture's logging wrapper `testkit/plugins/wrap-bridge`.
//!
//! Pods are created through the API server with the admin's credentials and the kubelet's part
//! is played through the node (sandbox, then `pods/status`); podagent runs as the node starts
//! it, with the kubeconfig `scripts/create-kubeconfig.sh` makes for the shipped RBAC.
//!
//! What the benchmark changes on the fixture's node, from its public API only:
//! - the primary network gets a wider address range: the node leases a /24, the burst needs 441
//!   addresses at once (110 pods × 4 networks and the latency pod), so the node's conflist is
//!   rewritten in place with 198.18.64.0/20 (inside the benchmarking range 198.18.0.0/15, and
//!   outside 198.19.0.0/16 where the test leases live; the bridge has no address on the host,
//!   so the range is private to the node's bridge anyway). Same bridge, same wrapper plugin,
//!   same IPAM dir; the `tuning` plugin the tests use for MACs is left out, so the chain is the
//!   bridge + host-local the benchmark has always measured;
//! - podagent's config: the node's, with podagent's built-in retry and resync defaults instead
//!   of the tests' short ones, `log_level = "info"` and concurrency written explicitly, so the
//!   floor uses the same number.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use podagent::cni::{Invoker, Settings, Target};
use serde_json::{Value, json};
use testkit::node::{AgentConfig, Node};
use testkit::prereq;

/// The benchmark's namespace, as the node names it (the real one is [`World::namespace`]).
pub const NAMESPACE: &str = "bench";
/// podagent's default reconcile parallelism, written into its config so the floor uses the
/// same number.
pub const CONCURRENCY: usize = 4;
/// The address range of the benchmark's primary network (see the module docs).
const SUBNET: &str = "198.18.64.0/20";
/// Plugin deadline, for podagent and the floor alike.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A pod on the node; `sandbox` is set when it has a real sandbox.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub uid: String,
    pub sandbox: Option<(String, PathBuf)>,
}

impl Pod {
    pub fn netns(&self) -> Result<&Path> {
        self.sandbox
            .as_ref()
            .map(|(_, netns)| netns.as_path())
            .ok_or_else(|| anyhow!("pod {} has no sandbox", self.name))
    }
}

/// Now, in seconds since the epoch (the clock of the wrapper's call logs).
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub struct World {
    pub node: Node,
    /// The real namespace of every benchmark pod.
    pub namespace: String,
}

impl World {
    pub async fn start(podagent: PathBuf) -> Result<World> {
        prereq::require_root();
        prereq::require_command("getconf", "libc-bin");
        prereq::require_path(
            &podagent,
            "a built podagent binary (scripts/bench.sh builds it)",
        );
        let node = Node::with_containerd(podagent).await;
        widen_primary_network(&node)?;
        for sub in ["floor-cache", "steps-state"] {
            fs::create_dir_all(node.path(sub)).with_context(|| format!("mkdir {sub}"))?;
        }
        let namespace = node.ns(NAMESPACE);
        Ok(World { node, namespace })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.node.path(rel)
    }

    /// Creates a pod bound to the node through the API server and reports it Running through
    /// `pods/status`; with `sandbox`, runs its sandbox in containerd first, as the kubelet does.
    pub async fn pod(&self, name: &str, sandbox: bool) -> Result<Pod> {
        if sandbox {
            let (uid, id) = self.node.pod(NAMESPACE, name, None).await;
            let netns = self.node.netns(&id).await;
            Ok(Pod {
                name: name.to_owned(),
                uid,
                sandbox: Some((id, netns)),
            })
        } else {
            let uid = self.node.create_pod(NAMESPACE, name, json!({}));
            self.node.report_running(NAMESPACE, name, "first", 0);
            Ok(Pod {
                name: name.to_owned(),
                uid,
                sandbox: None,
            })
        }
    }

    /// Sets (or with `None` removes) a pod's `networks` annotation; returns the moment the API
    /// server's answer to the patch was back.
    pub fn set_networks(&self, pod: &str, networks: Option<&str>) -> Instant {
        self.node.set_networks(NAMESPACE, pod, networks);
        Instant::now()
    }

    /// Deletes the pod as the cluster does with a kubelet on the node (sandbox stopped).
    pub async fn delete_pod(&self, pod: &Pod) {
        let sandbox = pod.sandbox.as_ref().map(|(id, _)| id.as_str());
        self.node.delete_pod(NAMESPACE, &pod.name, sandbox).await;
    }

    /// What podagent hands the plugin for network `network` of `pod`.
    pub fn attachment(&self, pod: &Pod, network: &str) -> Result<Target> {
        let (sandbox, netns) = pod
            .sandbox
            .clone()
            .ok_or_else(|| anyhow!("pod {} has no sandbox", pod.name))?;
        Ok(Target {
            sandbox_id: sandbox,
            netns,
            ifname: podagent::annotation::ifname(network),
            pod_namespace: self.namespace.clone(),
            pod_name: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            network: network.to_owned(),
            if_mac: None,
            config: None,
            requested: None,
        })
    }

    /// The same CNI engine podagent runs, with the same config dir and plugin dirs but its own
    /// result cache: the floor every podagent number is compared with.
    pub fn invoker(&self) -> Invoker {
        let config = self.node.agent_config();
        Invoker::new(Settings {
            conf_dir: config.conf_dir,
            bin_dirs: vec![config.bin_dir, PathBuf::from("/usr/lib/cni")],
            vendor: None,
            timeout: PLUGIN_TIMEOUT,
            env_passthrough: Vec::new(),
            cache_dir: self.path("floor-cache"),
            host_root: None,
        })
    }

    /// The node's podagent config with the benchmark's settings: podagent's own defaults for
    /// everything the tests shorten, `notify` as its `NOTIFY_SOCKET`.
    fn agent_config(&self, notify: &Path) -> Result<AgentConfig> {
        let defaults = podagent::config::Config::load_from(
            &podagent::config::Flags::default(),
            Vec::new(),
            Path::new("/nonexistent/podagent.toml"),
            "bench-host",
        )
        .context("podagent's built-in defaults")?;
        let duration = |d: Duration| format!("{}ms", d.as_millis());
        let mut config = self.node.agent_config();
        config.log_level = "info".into();
        config.plugin_timeout = duration(PLUGIN_TIMEOUT);
        config.concurrency = CONCURRENCY;
        config.retry_base = duration(defaults.reconcile.retry_base);
        config.retry_cap = duration(defaults.reconcile.retry_cap);
        config.resync_period = duration(defaults.reconcile.resync_period);
        config
            .env
            .push(("NOTIFY_SOCKET".into(), notify.display().to_string()));
        Ok(config)
    }

    /// Starts podagent with `notify` as its `NOTIFY_SOCKET`, its metrics listener on or off;
    /// returns once the process runs.
    pub fn start_agent(&self, notify: &Path, metrics: bool) -> Result<Agent> {
        let mut config = self.agent_config(notify)?;
        if !metrics {
            config.metrics_listen.clear();
        }
        let started = Instant::now();
        let process = self.node.start_agent_with(&config);
        Ok(Agent { process, started })
    }

    /// The last lines of podagent's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = self.node.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Rewrites the node's one conflist with [`SUBNET`] as the host-local range and without the
/// `tuning` plugin: the wrapper plugin, its bridge and the IPAM dir stay the node's.
fn widen_primary_network(node: &Node) -> Result<()> {
    let conf = node.path("conf");
    let files: Vec<PathBuf> = fs::read_dir(&conf)
        .with_context(|| format!("read {}", conf.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("read {}", conf.display()))?;
    let [file] = files.as_slice() else {
        bail!(
            "the node's conf dir holds {} files, the benchmark expects the node's one conflist",
            files.len()
        );
    };
    let text = fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let mut conflist: Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", file.display()))?;
    let plugins = conflist["plugins"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("{} has no plugins", file.display()))?;
    plugins.retain(|p| p["type"] != "tuning");
    let [bridge] = plugins.as_mut_slice() else {
        bail!(
            "{} does not hold exactly the wrapper plugin",
            file.display()
        );
    };
    if bridge["type"] != testkit::node::PLUGIN || !bridge["ipam"]["ranges"].is_array() {
        bail!(
            "{} does not run {} with host-local ranges",
            file.display(),
            testkit::node::PLUGIN
        );
    }
    bridge["ipam"]["ranges"] = json!([[{"subnet": SUBNET}]]);
    fs::write(file, serde_json::to_vec_pretty(&conflist)?)
        .with_context(|| format!("write {}", file.display()))?;
    Ok(())
}

/// A running podagent (SIGKILLed on drop unless stopped) and when its process was spawned.
pub struct Agent {
    pub process: testkit::node::Agent,
    pub started: Instant,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.process.pid().unsigned_abs()
    }

    /// CPU time (user + system) used so far.
    pub fn cpu_time(&self, ticks_per_second: u64) -> Duration {
        Duration::from_secs_f64(self.process.cpu_ticks() as f64 / ticks_per_second as f64)
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(self) {
        self.process.stop();
    }
}
