//! The demo's node: the shared control plane, a `testkit::node::Node` (private runtime, the
//! node's CNI config, podagent's state dir) and the real podagent on it, started in an order
//! that lets each wait for the previous one, and torn down in the reverse order with a check
//! that nothing is left.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use testkit::control_plane;
use testkit::node::{Agent, Node};
use testkit::prereq;

use crate::{AGENT_STOP_GRACE, Args, DATA_BRIDGE, Demo, DemoError, NAMESPACE, heading, say};

impl Demo {
    /// Starts the control plane, the node and podagent; returns once podagent is ready.
    pub(crate) async fn start(args: &Args) -> Result<Demo, DemoError> {
        heading("Setting up one node: control plane, container runtime, CNI, podagent");
        prereq::require_root();
        for (program, package) in [("jq", "jq"), ("ip", "iproute2")] {
            prereq::require_command(program, package);
        }
        // Panics naming scripts/setup-test-host.sh when the control plane is not built.
        let kubectl = control_plane::binary("kubectl");
        let bin_dir = control_plane::bin_dir();
        let cluster = control_plane::shared();
        println!(
            "control plane: Kubernetes {} (etcd {}, kube-apiserver, kube-controller-manager) at {}",
            control_plane::kubernetes_version(),
            control_plane::etcd_version(),
            cluster.server()
        );
        println!(
            "  kubectl: {} (the server's version; first on PATH for every command shown)",
            kubectl.display()
        );
        say(
            "A real API server (RBAC, admission, CRDs, Events), but no scheduler and no kubelet:\n\
             the demo binds the pods to the node itself and does the kubelet's part.",
        );

        let (node, runtime) = if args.runtime == "crio" {
            let version = testkit::host::crio_version().trim_start_matches('v');
            let node = Node::with_crio(&args.podagent).await;
            (node, format!("CRI-O {version}"))
        } else {
            let node = Node::with_containerd(&args.podagent).await;
            (node, format!("containerd {}", containerd_version()))
        };
        let cri = node.cri();
        println!(
            "container runtime: a private {runtime} (pid {}), socket {}",
            cri.pid(),
            cri.socket().display()
        );
        println!(
            "  pods get eth0 from the runtime's own CNI network (bridge {}, {}): their default network",
            cri.bridge(),
            cri.subnet()
        );
        let npwg = args.mode == "npwg";
        let direct = args.mode == "direct" || npwg;
        let object = if npwg {
            "NetworkAttachmentDefinition object, examples/data-nad.yaml"
        } else {
            "Network object, examples/data-net.yaml"
        };
        let data_bridge_existed = link_exists(DATA_BRIDGE);
        let data_leases_existed = Path::new(DATA_LEASES).exists();
        if direct {
            // No stand-in: podagent's conf dir stays empty, the network is the Network object.
            let (conflist, _) = conflist(&node);
            let _ = fs::remove_file(&conflist);
            println!(
                "podagent's network mode: {} — the `data` network's CNI config comes from its \
                 {object} (applied in step 1): bridge {DATA_BRIDGE}, host-local addresses from \
                 its range",
                args.mode
            );
            println!(
                "podagent's CNI conf dir: {} (empty: no primary config is used)",
                node.path("conf").display()
            );
            say(
                "podagent looks the `data` Network up itself (cached from a watch) and runs its config\n\
                 with the Debian plugins, whatever the node's primary CNI is: no kactus needed. When a\n\
                 pod goes, podagent's own DEL releases the address, since nobody else knows of it.",
            );
        } else {
            let (conflist, bridge) = conflist(&node);
            println!(
                "podagent's network mode: kactus — CNI config {}: bridge {bridge} + host-local {} + \
                 tuning",
                conflist.display(),
                node.subnet()
            );
            say(
                "On a real node this dir holds kactus', which delegates to the plugin of the network\n\
                 named in K8S_POD_NETWORK (here `data`: a bridge like the seed's data-br). This Debian\n\
                 bridge + host-local config (reached through testkit's logging wrapper wrap-bridge)\n\
                 stands in for kactus delegating to the `data` network.",
            );
        }

        let ns = node.ns(NAMESPACE);
        println!(
            "node {}; the example's namespace: {ns} (created for the demo)",
            node.name()
        );
        let mut path = OsString::from(&bin_dir);
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        say(&format!(
            "Every command below runs as an operator's would, in the checkout, with\n  \
             export KUBECONFIG={} PATH={}:$PATH",
            cluster.kubeconfig().display(),
            bin_dir.display()
        ));

        let mut config = node.agent_config();
        config.log_level = "info".into();
        config.shutdown_grace = "5s".into();
        if direct {
            config.networks = format!("mode = \"{}\"\n", args.mode);
        }
        println!("podagent's kubeconfig: {}", config.kubeconfig.display());
        say(
            "Made by scripts/create-kubeconfig.sh for the service account of\n\
             manifests/podagent-serviceaccount-and-rbac.yaml: podagent has the shipped RBAC, not\n\
             the admin's rights.",
        );
        if npwg {
            // podagent lists the definitions before it says it is ready; on a Multus cluster
            // their CRD is already there.
            cluster.install_attachment_definition_crd();
            println!(
                "NetworkAttachmentDefinition CRD: manifests/network-attachment-definitions-crd.yaml \
                 applied and Established, as Multus would have it (podagent in npwg mode lists \
                 them before it is ready)"
            );
        } else if direct {
            // podagent lists the Networks before it says it is ready.
            cluster.install_network_crd();
            println!(
                "Network CRD: manifests/networks-crd.yaml applied and Established (podagent in \
                 direct mode lists the Network objects before it is ready)"
            );
        }
        let agent = node.start_agent_with(&config);
        println!(
            "podagent: {} run --config {} (pid {})",
            args.podagent.display(),
            node.path("podagent.toml").display(),
            agent.pid()
        );
        let demo = Demo {
            agent_pid: agent.pid(),
            agent: Mutex::new(Some(agent)),
            node,
            cluster,
            ns,
            repo: args.repo.clone(),
            path,
            wait: Duration::from_secs(args.wait),
            pods: Vec::new(),
            log_shown: Mutex::new(0),
            direct,
            npwg,
            data_bridge_existed,
            data_leases_existed,
        };
        demo.eventually("podagent to log that it is ready", || {
            Ok(demo
                .node
                .log()
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
        let path = self.node.path("podagent.log");
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
        let text = self.node.log();
        let all: Vec<&str> = text.lines().collect();
        println!("podagent's last {lines} log lines:");
        for line in &all[all.len().saturating_sub(lines)..] {
            println!("  │ {line}");
        }
    }

    /// Prints `$ command` and runs it with bash in the checkout, as the operator: the admin
    /// kubeconfig, the control plane's kubectl first on PATH, and kubectl's discovery cache in
    /// the node's dir (removed with it, instead of one more dir in ~/.kube/cache per run).
    pub(crate) async fn shell(&self, command: &str) -> Result<(), DemoError> {
        println!("$ {command}");
        let status = tokio::process::Command::new("bash")
            .args(["-c", command])
            .current_dir(&self.repo)
            .env("KUBECONFIG", self.cluster.kubeconfig())
            .env("PATH", &self.path)
            .env("KUBECACHEDIR", self.node.path("kube-cache"))
            .env_remove("KUBECTL")
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
            if let Some(status) = self.agent_exited() {
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

    /// How podagent ended, once it has.
    fn agent_exited(&self) -> Option<ExitStatus> {
        let mut agent = self
            .agent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        exit_status(agent.as_mut()?)
    }

    /// SIGTERM, a grace period, then SIGKILL; returns how it ended.
    fn stop_agent(&self) -> String {
        let Some(mut agent) = self
            .agent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        else {
            return "already stopped".to_owned();
        };
        if let Some(status) = exit_status(&mut agent) {
            return format!("had already exited ({status})");
        }
        agent.signal(Signal::SIGTERM);
        let deadline = Instant::now() + AGENT_STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = exit_status(&mut agent) {
                return format!("stopped by SIGTERM ({status})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        agent.kill();
        format!("killed after ignoring SIGTERM for {AGENT_STOP_GRACE:?}")
    }

    /// Stops and removes everything, then checks that nothing is left.
    pub(crate) async fn clean_up(self) {
        heading("Cleaning up");
        if self.direct {
            self.delete_pods().await;
        }
        println!("podagent (pid {}): {}", self.agent_pid, self.stop_agent());
        self.show_log();
        let Demo {
            node,
            cluster,
            ns,
            pods,
            direct,
            data_bridge_existed,
            data_leases_existed,
            ..
        } = self;
        let runtime_pid = node.cri().pid();
        let runtime_dir = node.cri().dir().to_owned();
        let node_dir = node_dir(&node);
        // Direct mode: no conflist, so no bridge of the node's own; data-br is the one made.
        let bridge = match conflist(&node) {
            (_, bridge) if !bridge.is_empty() => bridge,
            _ => DATA_BRIDGE.to_owned(),
        };
        // The node's drop deletes its bridge; the runtime's stops and removes every sandbox
        // through CRI (which runs CNI DEL and deletes the netns), then stops the daemon and
        // removes its dir; then the node's dir goes. It blocks.
        tokio::task::block_in_place(|| drop(node));
        println!(
            "container runtime (pid {runtime_pid}): sandboxes removed, daemon stopped, {} removed",
            runtime_dir.display()
        );
        if direct {
            println!("node: {} removed", node_dir.display());
        } else {
            println!(
                "node: bridge {bridge} deleted, {} removed",
                node_dir.display()
            );
        }
        if direct && !data_bridge_existed {
            // Made by the bridge plugin for the `data` Network's first attachment.
            delete_link(DATA_BRIDGE);
            println!("bridge {DATA_BRIDGE} (made by the data Network's first attachment): deleted");
        }
        let control_dir = cluster
            .kubeconfig()
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default();
        println!(
            "control plane: stops when the demo exits (the namespace {ns} goes with it), and \
             removes {}",
            control_dir.display()
        );

        let mut left = Vec::new();
        for pod in &pods {
            if pod.netns.exists() {
                left.push(format!("netns {}", pod.netns.display()));
            }
        }
        if link_exists(&bridge) && !(direct && data_bridge_existed) {
            left.push(format!("bridge {bridge}"));
        }
        let leases = if direct { data_leases() } else { Vec::new() };
        if !leases.is_empty() {
            left.push(format!("host-local leases {}", leases.join(", ")));
        } else if direct && !data_leases_existed && fs::remove_dir_all(DATA_LEASES).is_ok() {
            println!(
                "{DATA_LEASES} (the data Network's host-local state, all leases released): removed"
            );
        }
        for path in [&node_dir, &runtime_dir] {
            if path.exists() {
                left.push(path.display().to_string());
            }
        }
        if left.is_empty() {
            println!(
                "✓ nothing left: no pod netns, no bridge {bridge}, no {}, no {}",
                node_dir.display(),
                runtime_dir.display()
            );
        } else {
            println!("✗ left behind: {}", left.join(", "));
        }
    }
}

impl Demo {
    /// Direct and npwg mode: the pods go as the kubelet deletes them (sandbox stopped and removed, then
    /// the final delete) while podagent runs, so its DELs release the `data` addresses.
    async fn delete_pods(&self) {
        for pod in &self.pods {
            self.node
                .delete_pod(NAMESPACE, pod.name, Some(&pod.sandbox))
                .await;
        }
        let released = self
            .eventually("podagent to release the pods' attachments", || {
                Ok(self
                    .pods
                    .iter()
                    .all(|pod| self.node.record(&pod.uid).is_none())
                    .then_some(()))
            })
            .await;
        match released {
            Ok(_) => println!(
                "pods deleted; podagent ran DEL for their `data` attachments (outside kactus \
                 mode the teardown is podagent's), their records are gone"
            ),
            Err(error) => println!("✗ pods deleted, but {error}"),
        }
    }
}

/// Where host-local keeps the `data` Network's leases (its default dataDir).
const DATA_LEASES: &str = "/var/lib/cni/networks/data";

/// The `data` Network's host-local leases.
fn data_leases() -> Vec<String> {
    fs::read_dir(DATA_LEASES)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

fn delete_link(name: &str) {
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "dev", name])
        .stderr(std::process::Stdio::null())
        .status();
}

/// The exit status of `agent`, once it has exited.
fn exit_status(agent: &mut Agent) -> Option<ExitStatus> {
    (!agent.running()).then(|| agent.wait_exit(Duration::from_secs(1)))
}

/// The node's own dir (`podagent.log`, `state/`, `conf/` … are in it).
fn node_dir(node: &Node) -> PathBuf {
    let state = node.path("state");
    state.parent().map(Path::to_owned).unwrap_or(state)
}

/// The node's conflist and the host bridge its first plugin attaches pods to.
fn conflist(node: &Node) -> (PathBuf, String) {
    let conf_dir = node.path("conf");
    let mut files: Vec<PathBuf> = fs::read_dir(&conf_dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "conflist"))
        .collect();
    files.sort();
    let Some(file) = files.into_iter().next() else {
        return (conf_dir, String::new());
    };
    let bridge = fs::read(&file)
        .ok()
        .and_then(|text| serde_json::from_slice::<Value>(&text).ok())
        .and_then(|conf| conf["plugins"][0]["bridge"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (file, bridge)
}

fn link_exists(name: &str) -> bool {
    !name.is_empty()
        && std::process::Command::new("ip")
            .args(["link", "show", "dev", name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
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
