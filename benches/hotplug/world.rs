//! The benchmark's node: kube-sim in process, a private containerd with real pod sandboxes, a
//! CNI config dir whose primary network is the Debian bridge + host-local plugins (through the
//! logging wrapper `testkit/bench-plugins/bench-bridge`), and the real podagent binary.
//!
//! Everything is private to one run: its own API server, runtime, bridge, address range
//! (198.18.64.0/20, inside the benchmarking range) and state dirs. The runtime stops every
//! sandbox it made on drop and the bridge is deleted on drop, also when a scenario fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podagent::cni::{Attachment, Invoker, Settings};
use serde_json::json;
use testkit::host::Containerd;
use testkit::kube_sim::{KubeSim, Options};
use testkit::netns::unique_name;
use testkit::prereq;

pub const NODE: &str = "bench-node";
pub const NAMESPACE: &str = "bench";
/// podagent's default reconcile parallelism, written into its config so the floor uses the
/// same number.
pub const CONCURRENCY: usize = 4;
const SUBNET: &str = "198.18.64.0/20";
const PLUGIN: &str = "bench-bridge";

/// A pod on the node; `netns` is set when it has a real sandbox.
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

    /// What podagent hands the plugin for network `network` of this pod.
    pub fn attachment(&self, network: &str) -> Result<Attachment> {
        let (sandbox, netns) = self
            .sandbox
            .clone()
            .ok_or_else(|| anyhow!("pod {} has no sandbox", self.name))?;
        Ok(Attachment {
            sandbox_id: sandbox,
            netns,
            ifname: podagent::annotation::ifname(network),
            pod_namespace: NAMESPACE.to_owned(),
            pod_name: self.name.clone(),
            pod_uid: self.uid.clone(),
            network: network.to_owned(),
            if_mac: None,
        })
    }
}

/// One plugin invocation as the wrapper logged it when it ended.
#[derive(Debug, Clone)]
pub struct Call {
    /// Start and end, in seconds since the epoch.
    pub at: f64,
    pub end: f64,
    pub command: String,
    pub pod: String,
}

/// Now, in seconds since the epoch (the clock of the wrapper's call log).
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub struct World {
    pub sim: KubeSim,
    pub containerd: Containerd,
    dir: tempfile::TempDir,
    bridge: String,
    podagent: PathBuf,
}

impl World {
    pub async fn start(podagent: PathBuf) -> Result<World> {
        prereq::require_root();
        prereq::require_command("getconf", "libc-bin");
        for plugin in ["bridge", "host-local"] {
            prereq::require_path(
                &Path::new("/usr/lib/cni").join(plugin),
                "the Debian package containernetworking-plugins",
            );
        }
        prereq::require_path(
            &podagent,
            "a built podagent binary (scripts/bench.sh builds it)",
        );
        let sim = KubeSim::start(Options::default())
            .await
            .context("start kube-sim")?;
        let containerd = Containerd::start().await;
        let dir = tempfile::Builder::new()
            .prefix("pa-bench")
            .tempdir()
            .context("create the benchmark dir")?;
        for sub in ["conf", "bin", "state", "ipam", "floor-cache"] {
            fs::create_dir_all(dir.path().join(sub)).with_context(|| format!("mkdir {sub}"))?;
        }
        let wrapper = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testkit/bench-plugins")
            .join(PLUGIN);
        fs::copy(&wrapper, dir.path().join("bin").join(PLUGIN))
            .with_context(|| format!("copy {}", wrapper.display()))?;
        let bridge = unique_name("bbr");
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "bench",
            "plugins": [{
                "type": PLUGIN,
                "bridge": bridge,
                "isGateway": false,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": SUBNET}]],
                    "dataDir": dir.path().join("ipam"),
                },
            }],
        });
        fs::write(
            dir.path().join("conf/10-bench.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )
        .context("write the conflist")?;
        Ok(World {
            sim,
            containerd,
            dir,
            bridge,
            podagent,
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Creates a kube-sim pod on the node (Running unless `pending`), with a real containerd
    /// sandbox when `sandbox` is set.
    pub async fn pod(
        &self,
        name: &str,
        sandbox: bool,
        networks: Option<&str>,
        pending: bool,
    ) -> Result<Pod> {
        let mut annotations = serde_json::Map::new();
        if let Some(networks) = networks {
            annotations.insert("networks".into(), json!(networks));
        }
        let status = if pending {
            json!({"phase": "Pending"})
        } else {
            json!({"phase": "Running", "containerStatuses": [{
                "name": "main", "containerID": format!("containerd://{name}"), "image": "busybox",
                "imageID": "", "ready": true, "restartCount": 0
            }]})
        };
        let created = self
            .sim
            .create(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
                "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "busybox"}]},
                "status": status,
            }))
            .with_context(|| format!("create pod {name}"))?;
        let uid = created["metadata"]["uid"]
            .as_str()
            .ok_or_else(|| anyhow!("pod {name} created without a uid"))?
            .to_owned();
        let sandbox = if sandbox {
            let id = self.containerd.run_pod_sandbox(&uid, name, NAMESPACE).await;
            let netns = self.containerd.sandbox_netns(&id).await;
            Some((id, netns))
        } else {
            None
        };
        Ok(Pod {
            name: name.to_owned(),
            uid,
            sandbox,
        })
    }

    /// Sets (or with `None` removes) a pod's `networks` annotation; returns the moment the API
    /// server accepted the change.
    pub fn set_networks(&self, pod: &str, networks: Option<&str>) -> Result<Instant> {
        self.sim
            .patch_merge(
                "v1",
                "Pod",
                Some(NAMESPACE),
                pod,
                json!({"metadata": {"annotations": {"networks": networks}}}),
            )
            .with_context(|| format!("patch the networks of {pod}"))?;
        Ok(Instant::now())
    }

    pub fn delete_pod(&self, pod: &str) -> Result<()> {
        self.sim
            .delete("v1", "Pod", Some(NAMESPACE), pod)
            .with_context(|| format!("delete pod {pod}"))?;
        Ok(())
    }

    /// A plugin switch of the wrapper (`sleep`, `fail-pods`); `None` removes it.
    pub fn switch(&self, name: &str, value: Option<&str>) -> Result<()> {
        let path = self.path(&format!("bin/{name}"));
        match value {
            Some(value) => fs::write(&path, value).with_context(|| format!("write {name}")),
            None => match fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    Err(err).with_context(|| format!("remove {name}"))
                }
                _ => Ok(()),
            },
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        let text = fs::read_to_string(self.path("bin/calls.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                Some(Call {
                    at: parts.next()?.parse().ok()?,
                    end: parts.next()?.parse().ok()?,
                    command: parts.next()?.to_owned(),
                    pod: parts.next().unwrap_or_default().to_owned(),
                })
            })
            .collect()
    }

    /// The same CNI engine podagent runs, with the same config dir and plugin dirs but its own
    /// result cache: the floor every podagent number is compared with.
    pub fn invoker(&self) -> Invoker {
        Invoker::new(Settings {
            conf_dir: self.path("conf"),
            bin_dirs: vec![self.path("bin"), PathBuf::from("/usr/lib/cni")],
            vendor: None,
            timeout: Duration::from_secs(60),
            env_passthrough: Vec::new(),
            cache_dir: self.path("floor-cache"),
        })
    }

    fn write_config(&self) -> Result<PathBuf> {
        let config = format!(
            r#"node_name = "{NODE}"
state_dir = "{state}"
log_level = "info"
shutdown_grace = "20s"
[kube]
kubeconfig = "{kubeconfig}"
[runtime]
kind = "containerd"
endpoint = "{socket}"
[cni]
conf_dir = "{conf}"
bin_dirs = ["{bin}", "/usr/lib/cni"]
plugin_timeout = "60s"
[reconcile]
concurrency = {CONCURRENCY}
"#,
            state = self.path("state").display(),
            kubeconfig = self.sim.kubeconfig_path().display(),
            socket = self.containerd.socket().display(),
            conf = self.path("conf").display(),
            bin = self.path("bin").display(),
        );
        let file = self.path("podagent.toml");
        fs::write(&file, config).context("write podagent.toml")?;
        Ok(file)
    }

    /// Starts podagent with `notify` as its `NOTIFY_SOCKET`; returns once the process runs.
    pub fn start_agent(&self, notify: &Path) -> Result<Agent> {
        let config = self.write_config()?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("podagent.log"))
            .context("open podagent.log")?;
        let child = Command::new(&self.podagent)
            .args(["run", "--config"])
            .arg(&config)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NOTIFY_SOCKET", notify)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup the log fd")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.podagent.display()))?;
        Ok(Agent {
            child,
            started: Instant::now(),
        })
    }

    /// The last lines of podagent's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.path("podagent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// A running podagent; SIGKILLed on drop unless stopped.
pub struct Agent {
    child: Child,
    pub started: Instant,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> Result<()> {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().context("wait for podagent")? {
                if !status.success() {
                    bail!("podagent exited with {status} on SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("podagent ignored SIGTERM for 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
