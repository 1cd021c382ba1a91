//! The demo's node: kube-sim, a private containerd, the `data` network's CNI config and the real
//! podagent, started in an order that lets each wait for the previous one, and torn down in the
//! reverse order with a check that nothing is left.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use testkit::host::Containerd;
use testkit::kube_sim::{KubeSim, Options};
use testkit::netns::unique_name;
use testkit::prereq;

use crate::{
    AGENT_STOP_GRACE, Args, DATA_SUBNET, Demo, DemoError, NETWORK, NODE, heading, say, write,
};

/// The running podagent; stopped by PID (SIGTERM, then SIGKILL after a grace) on drop.
pub(crate) struct Agent {
    child: Mutex<Child>,
    pid: u32,
}

impl Agent {
    fn exited(&self) -> Option<ExitStatus> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .try_wait()
            .ok()
            .flatten()
    }

    fn signal(&self, signal: Signal) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// SIGTERM, a grace period, then SIGKILL; returns how it ended.
    fn stop(&self) -> String {
        if let Some(status) = self.exited() {
            return format!("had already exited ({status})");
        }
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + AGENT_STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return format!("stopped by SIGTERM ({status})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal(Signal::SIGKILL);
        let _ = self
            .child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .wait();
        format!("killed after ignoring SIGTERM for {AGENT_STOP_GRACE:?}")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `data` network's bridge on the host, deleted on drop (the bridge plugin creates it).
pub(crate) struct Bridge(String);

impl Bridge {
    fn exists(&self) -> bool {
        std::process::Command::new("ip")
            .args(["link", "show", "dev", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if self.exists() {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", "dev", &self.0])
                .status();
        }
    }
}

impl Demo {
    /// Starts the API server, containerd and podagent; returns once podagent is ready.
    pub(crate) async fn start(args: &Args) -> Result<Demo, DemoError> {
        heading("Setting up one node: API server, container runtime, CNI, podagent");
        prereq::require_root();
        for (program, package) in [
            ("kubectl", "kubernetes-client"),
            ("jq", "jq"),
            ("ip", "iproute2"),
        ] {
            prereq::require_command(program, package);
        }
        for plugin in ["bridge", "host-local"] {
            prereq::require_path(
                &Path::new("/usr/lib/cni").join(plugin),
                "the Debian package containernetworking-plugins",
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("podagent-demo-")
            .tempdir()
            .map_err(|source| DemoError::File {
                operation: "creating a temp dir in",
                path: std::env::temp_dir(),
                source,
            })?;
        for sub in ["conf", "state", "ipam"] {
            let path = dir.path().join(sub);
            fs::create_dir_all(&path).map_err(|source| DemoError::File {
                operation: "creating",
                path,
                source,
            })?;
        }
        let sim = KubeSim::start(Options {
            kubeconfig: Some(dir.path().join("kubeconfig")),
            ..Options::default()
        })
        .await?;
        // Credentials are private on a real node too; podagent warns about a readable one.
        let kubeconfig = sim.kubeconfig_path();
        fs::set_permissions(kubeconfig, fs::Permissions::from_mode(0o600)).map_err(|source| {
            DemoError::File {
                operation: "restricting",
                path: kubeconfig.to_owned(),
                source,
            }
        })?;
        println!(
            "API server: kube-sim (the project's test API server) at {}",
            sim.url()
        );
        let containerd = Containerd::start().await;
        println!(
            "container runtime: a private containerd {} (pid {}), socket {}",
            containerd_version(),
            containerd.pid(),
            containerd.socket().display()
        );
        println!(
            "  pods get eth0 from containerd's own CNI network (bridge {}, {}): their default network",
            containerd.bridge(),
            containerd.subnet()
        );

        let bridge = Bridge(unique_name("dat"));
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{
                "type": "bridge",
                "bridge": bridge.0,
                "isGateway": false,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": DATA_SUBNET}]],
                    "dataDir": dir.path().join("ipam"),
                },
            }],
        });
        let conf = dir.path().join("conf/10-data.conflist");
        write(
            &conf,
            &serde_json::to_string_pretty(&conflist).unwrap_or_default(),
        )?;
        println!(
            "podagent's CNI config: {} — bridge {} + host-local {DATA_SUBNET}",
            conf.display(),
            bridge.0
        );
        say(
            "On a real node this file is kactus', which delegates to the plugin of the network named in\n\
             K8S_POD_NETWORK (here `data`: a bridge like the seed's data-br). This Debian bridge +\n\
             host-local config stands in for kactus delegating to the `data` network.",
        );

        let config = dir.path().join("podagent.toml");
        write(
            &config,
            &format!(
                r#"node_name = "{NODE}"
state_dir = "{state}"
log_level = "info"
shutdown_grace = "5s"
[kube]
kubeconfig = "{kubeconfig}"
[runtime]
kind = "containerd"
endpoint = "{socket}"
[cni]
conf_dir = "{conf}"
bin_dirs = ["/usr/lib/cni"]
"#,
                state = dir.path().join("state").display(),
                kubeconfig = sim.kubeconfig_path().display(),
                socket = containerd.socket().display(),
                conf = dir.path().join("conf").display(),
            ),
        )?;
        let agent = spawn_agent(&args.podagent, &config, &dir.path().join("podagent.log"))?;
        println!(
            "podagent: {} run --config {} (pid {})",
            args.podagent.display(),
            config.display(),
            agent.pid
        );
        let demo = Demo {
            agent,
            containerd,
            bridge,
            sim,
            dir,
            repo: args.repo.clone(),
            wait: Duration::from_secs(args.wait),
            pods: Vec::new(),
            log_shown: Mutex::new(0),
        };
        let log = demo.dir.path().join("podagent.log");
        demo.eventually("podagent to log that it is ready", || {
            Ok(fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|line| line.contains("podagent::daemon: ready"))
                .then_some(()))
        })
        .await?;
        demo.show_log();
        Ok(demo)
    }

    /// podagent's log lines written since the last call.
    pub(crate) fn show_log(&self) {
        let path = self.dir.path().join("podagent.log");
        let mut shown = self
            .log_shown
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&path)
            && file.seek(SeekFrom::Start(*shown)).is_ok()
            && file.read_to_string(&mut text).is_ok()
        {
            *shown += text.len() as u64;
        }
        say("podagent's log (stderr here; `journalctl -u podagent` under systemd):");
        for line in text.lines() {
            println!("  │ {line}");
        }
        if text.is_empty() {
            println!("  │ (nothing new)");
        }
    }

    pub(crate) fn show_log_tail(&self, lines: usize) {
        let text = fs::read_to_string(self.dir.path().join("podagent.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        println!("podagent's last {lines} log lines:");
        for line in &all[all.len().saturating_sub(lines)..] {
            println!("  │ {line}");
        }
    }

    /// Prints `$ command` and runs it with bash in the checkout, kubectl pointed at kube-sim.
    pub(crate) async fn shell(&self, command: &str) -> Result<(), DemoError> {
        println!("$ {command}");
        let status = tokio::process::Command::new("bash")
            .args(["-c", command])
            .current_dir(&self.repo)
            .env("KUBECONFIG", self.sim.kubeconfig_path())
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|source| DemoError::Spawn {
                command: command.to_owned(),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(DemoError::Command {
                command: command.to_owned(),
                status,
            })
        }
    }

    /// Polls `check` every 100 ms until it yields, up to the step deadline; returns how long it
    /// took. Fails early if podagent has exited.
    pub(crate) async fn eventually(
        &self,
        what: &str,
        mut check: impl FnMut() -> Result<Option<()>, DemoError>,
    ) -> Result<Duration, DemoError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.agent.exited() {
                return Err(DemoError::AgentExited { status });
            }
            if check()?.is_some() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > self.wait {
                return Err(DemoError::Timeout {
                    what: what.to_owned(),
                    waited: self.wait,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops and removes everything, then checks that nothing is left.
    pub(crate) async fn clean_up(self) {
        heading("Cleaning up");
        println!("podagent (pid {}): {}", self.agent.pid, self.agent.stop());
        self.show_log();
        let Demo {
            agent,
            containerd,
            bridge,
            sim,
            dir,
            pods,
            ..
        } = self;
        drop(agent);
        let containerd_pid = containerd.pid();
        let containerd_dir = containerd.dir().to_owned();
        // Containerd's drop stops and removes every sandbox through CRI (which runs CNI DEL
        // and deletes the netns), then stops the daemon and removes its dir; it blocks.
        tokio::task::block_in_place(|| drop(containerd));
        println!(
            "containerd (pid {containerd_pid}): sandboxes removed, daemon stopped, {} removed",
            containerd_dir.display()
        );
        let bridge_name = bridge.0.clone();
        drop(bridge);
        sim.shutdown().await;
        println!("kube-sim: stopped");
        let dir_path = dir.path().to_owned();
        let _ = dir.close();

        let mut left = Vec::new();
        for pod in &pods {
            if pod.netns.exists() {
                left.push(format!("netns {}", pod.netns.display()));
            }
        }
        if Bridge(bridge_name.clone()).exists() {
            left.push(format!("bridge {bridge_name}"));
        }
        for path in [&dir_path, &containerd_dir] {
            if path.exists() {
                left.push(path.display().to_string());
            }
        }
        if left.is_empty() {
            println!(
                "✓ nothing left: no pod netns, no bridge {bridge_name}, no {}",
                dir_path.display()
            );
        } else {
            println!("✗ left behind: {}", left.join(", "));
        }
    }
}

/// Starts podagent in its own process group, so a Ctrl-C on the terminal reaches only the demo,
/// which then stops podagent in order. Only PATH is passed: no PODAGENT_* or RUST_LOG of the
/// caller may change the configuration shown.
fn spawn_agent(binary: &Path, config: &Path, log: &Path) -> Result<Agent, DemoError> {
    let file = fs::File::create(log).map_err(|source| DemoError::File {
        operation: "creating",
        path: log.to_owned(),
        source,
    })?;
    let stderr = file.try_clone().map_err(|source| DemoError::File {
        operation: "duplicating",
        path: log.to_owned(),
        source,
    })?;
    let child = std::process::Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|source| DemoError::Spawn {
            command: format!("{} run", binary.display()),
            source,
        })?;
    Ok(Agent {
        pid: child.id(),
        child: Mutex::new(child),
    })
}

fn containerd_version() -> String {
    std::process::Command::new("containerd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .nth(2)
                .map(str::to_owned)
        })
        .unwrap_or_default()
}
