//! The demo's node: the shared control plane, a `testkit::node::Node` run by a real kubelet
//! (its own containerd or CRI-O, podagent's CNI dirs and state dir) and the real podagent on it,
//! started in an order that lets each wait for the previous one, and torn down in the reverse
//! order with a check that nothing is left.

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
use testkit::kubelet::NodeRuntime;
use testkit::node::{Agent, Node};
use testkit::prereq;

use crate::{
    AGENT_STOP_GRACE, APP, Args, DATA_BRIDGE, Demo, DemoError, NAMESPACE, ROLLOUT_WAIT, heading,
    say,
};

impl Demo {
    /// Starts the control plane, the kubelet node and podagent; returns once podagent is ready.
    pub(crate) async fn start(args: &Args) -> Result<Demo, DemoError> {
        heading("Setting up one node: control plane, kubelet, container runtime, podagent");
        prereq::require_root();
        for (program, package) in [("jq", "jq"), ("ip", "iproute2")] {
            prereq::require_command(program, package);
        }
        // Panics naming scripts/setup-test-host.sh when the control plane is not built.
        let kubectl = control_plane::binary("kubectl");
        let bin_dir = control_plane::bin_dir();
        let cluster = control_plane::shared();
        println!(
            "control plane: Kubernetes {} (etcd {}, kube-apiserver, kube-scheduler, \
             kube-controller-manager) at {}",
            control_plane::kubernetes_version(),
            control_plane::etcd_version(),
            cluster.server()
        );
        println!(
            "  kubectl: {} (the server's version; first on PATH for every command shown)",
            kubectl.display()
        );

        let (node, runtime) = if args.runtime == "crio" {
            let version = testkit::host::crio_version().trim_start_matches('v');
            let node = Node::with_kubelet_on(&args.podagent, NodeRuntime::Crio).await;
            (node, format!("CRI-O {version}"))
        } else {
            let node = Node::with_kubelet_on(&args.podagent, NodeRuntime::Containerd).await;
            (node, format!("containerd {}", containerd_version()))
        };
        let kubelet = node.kubelet();
        let cri = kubelet.cri();
        println!(
            "node {}: a real kubelet (Kubernetes {}) at {}, Ready, as system:node:{}",
            kubelet.name(),
            control_plane::kubernetes_version(),
            kubelet.ip(),
            kubelet.name()
        );
        println!(
            "  container runtime: the kubelet's own {runtime} (pid {}), socket {}",
            cri.pid(),
            cri.socket().display()
        );
        println!(
            "  pods get eth0 from the runtime's own CNI network (bridge {}, {}): their default \
             network",
            cri.bridge(),
            cri.subnet()
        );
        say(
            "The only node of this cluster: the scheduler places the pods here, the kubelet runs them,\n\
             reports their status and answers `kubectl exec`; podagent runs beside it on the host, as\n\
             the systemd unit does.",
        );
        let npwg = args.mode == "npwg";
        let direct = args.mode == "direct" || npwg;
        let object = if npwg {
            "NetworkAttachmentDefinition object, examples/data-nad.yaml"
        } else {
            "Network object, examples/data-net.yaml"
        };
        let data_bridge_existed = link_exists(DATA_BRIDGE);
        let data_leases_made: Vec<PathBuf> = Path::new(DATA_LEASES)
            .ancestors()
            .take_while(|dir| !dir.exists())
            .map(Path::to_owned)
            .collect();
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
                "podagent looks the `data` network up itself (cached from a watch) and runs its config\n\
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
                 stands in for kactus delegating to the `data` network; the kubelet's runtime keeps its\n\
                 own CNI network for eth0.",
            );
        }

        let ns = node.ns(NAMESPACE);
        println!("the example's namespace: {ns} (created for the demo)");
        let mut path = OsString::from(&bin_dir);
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        say(&format!(
            "Every command below runs as an operator's would, in the checkout, with\n  \
             export KUBECONFIG={} PATH={}:$PATH",
            cluster.kubeconfig().display(),
            bin_dir.display()
        ));

        cluster.install_admission_policy();
        let mut config = node.agent_config();
        config.kubeconfig = cluster.node_kubeconfig(node.name());
        config.log_level = "info".into();
        config.shutdown_grace = "5s".into();
        if direct {
            config.networks = format!("mode = \"{}\"\n", args.mode);
        }
        println!("podagent's kubeconfig: {}", config.kubeconfig.display());
        say(&format!(
            "Made by scripts/create-kubeconfig.sh --node {node} for the service account\n\
             kube-system/podagent-node-{node}, bound to the ClusterRole of\n\
             manifests/podagent-serviceaccount-and-rbac.yaml: podagent has the shipped RBAC, not the\n\
             admin's rights, and manifests/podagent-admission-policy.yaml (applied) lets it change\n\
             nothing but its status annotation, on this node's pods only.",
            node = node.name()
        ));
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
            data_leases_made,
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

    /// Prints `$ command`, runs it with bash in the checkout, as the operator (the admin
    /// kubeconfig, the control plane's kubectl first on PATH, and kubectl's discovery cache in
    /// the node's dir, removed with it, instead of one more dir in ~/.kube/cache per run), prints
    /// its output and returns it. A command gets as long as the longest wait it makes on its own
    /// (`kubectl rollout status --timeout`) and a step's wait on top.
    pub(crate) async fn shell(&self, command: &str) -> Result<String, DemoError> {
        println!("$ {command}");
        let spawn_error = |source| DemoError::Spawn {
            command: command.to_owned(),
            source,
        };
        let child = tokio::process::Command::new("bash")
            .args(["-c", command])
            .current_dir(&self.repo)
            .env("KUBECONFIG", self.cluster.kubeconfig())
            .env("PATH", &self.path)
            .env("KUBECACHEDIR", self.node.path("kube-cache"))
            .env_remove("KUBECTL")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        let waited = ROLLOUT_WAIT + self.wait;
        let output = tokio::time::timeout(waited, child.wait_with_output())
            .await
            .map_err(|_| DemoError::Timeout {
                what: format!("`{command}` to finish"),
                waited,
            })?
            .map_err(spawn_error)?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        print!("{text}");
        if !text.is_empty() && !text.ends_with('\n') {
            println!();
        }
        if output.status.success() {
            Ok(text)
        } else {
            Err(DemoError::Command {
                command: command.to_owned(),
                status: output.status,
            })
        }
    }

    /// Polls `check` every 100 ms until it yields, up to the step deadline; returns how long it
    /// took. Fails early if podagent has exited.
    pub(crate) async fn eventually(
        &self,
        what: &str,
        check: impl FnMut() -> Result<Option<()>, DemoError>,
    ) -> Result<Duration, DemoError> {
        self.eventually_within(what, self.wait, check).await
    }

    /// [`Demo::eventually`] up to `wait`, for what takes longer by design.
    pub(crate) async fn eventually_within(
        &self,
        what: &str,
        wait: Duration,
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
            if started.elapsed() > wait {
                return Err(DemoError::Timeout {
                    what: what.to_owned(),
                    waited: wait,
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
        self.delete_deployment().await;
        println!("podagent (pid {}): {}", self.agent_pid, self.stop_agent());
        self.show_log();
        let Demo {
            node,
            cluster,
            ns,
            pods,
            direct,
            data_bridge_existed,
            data_leases_made,
            ..
        } = self;
        let kubelet = node.kubelet();
        let node_name = kubelet.name().to_owned();
        let kubelet_dir = kubelet.dir().to_owned();
        let runtime_pid = kubelet.cri().pid();
        let runtime_dir = kubelet.cri().dir().to_owned();
        let pod_bridge = kubelet.cri().bridge().to_owned();
        let node_dir = node_dir(&node);
        // Direct mode: no conflist, so no bridge of podagent's own; data-br is the one made.
        let bridge = match conflist(&node) {
            (_, bridge) if !bridge.is_empty() => bridge,
            _ => DATA_BRIDGE.to_owned(),
        };
        // The node's drop deletes the stand-in's bridge; the kubelet node's stops the kubelet
        // and deletes its Node, then its runtime stops and removes every sandbox left through
        // CRI (which deletes the netns), stops the daemon, deletes its bridge and removes its
        // dir; then the kubelet's mount namespace and dir go, then the node's dir. It blocks.
        tokio::task::block_in_place(|| drop(node));
        println!(
            "kubelet (node {node_name}): stopped, Node deleted, {} removed",
            kubelet_dir.display()
        );
        println!(
            "container runtime (pid {runtime_pid}): sandboxes removed, daemon stopped, bridge \
             {pod_bridge} deleted, {} removed",
            runtime_dir.display()
        );
        if direct {
            println!("podagent's node dir: {} removed", node_dir.display());
        } else {
            println!(
                "podagent's node dir: bridge {bridge} deleted, {} removed",
                node_dir.display()
            );
        }
        if direct && !data_bridge_existed {
            // Made by the bridge plugin for the `data` network's first attachment.
            delete_link(DATA_BRIDGE);
            println!("bridge {DATA_BRIDGE} (made by the data network's first attachment): deleted");
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
        if link_exists(&pod_bridge) {
            left.push(format!("bridge {pod_bridge}"));
        }
        let leases = if direct { data_leases() } else { Vec::new() };
        if !leases.is_empty() {
            left.push(format!("host-local leases {}", leases.join(", ")));
        } else if direct && let Some((own, parents)) = data_leases_made.split_first() {
            if fs::remove_dir_all(own).is_ok() {
                println!(
                    "{} (the data network's host-local state, all leases released): removed",
                    own.display()
                );
            }
            // Other host-local networks may have come to use them meanwhile: only when empty.
            for parent in parents {
                if fs::remove_dir(parent).is_ok() {
                    println!("{} (made for it): removed", parent.display());
                }
            }
        }
        for path in [&node_dir, &runtime_dir, &kubelet_dir] {
            if path.exists() {
                left.push(path.display().to_string());
            }
        }
        // A kubelet's `--root-dir`, a runtime's config, a shim's socket, conmon's paths.
        for dir in [&kubelet_dir, &runtime_dir] {
            for (pid, cmdline) in testkit::host::processes_naming(dir) {
                left.push(format!("process {pid} ({cmdline})"));
            }
        }
        if Path::new(&format!("/proc/{runtime_pid}")).exists() {
            left.push(format!("runtime process {runtime_pid}"));
        }
        if cluster
            .admin()
            .get("v1", "Node", None, &node_name)
            .is_some()
        {
            left.push(format!("Node {node_name}"));
        }
        if left.is_empty() {
            println!(
                "✓ nothing left: no process of the kubelet or its runtime, no Node {node_name}, no \
                 pod netns, no bridge {bridge} or {pod_bridge}, no {}, {} or {}",
                kubelet_dir.display(),
                runtime_dir.display(),
                node_dir.display()
            );
        } else {
            println!("✗ left behind: {}", left.join(", "));
        }
    }
}

impl Demo {
    /// Deletes the Deployment as its user would, and waits until its pods are gone: the garbage
    /// collector deletes the ReplicaSet and the pods, the kubelet stops each within its grace
    /// period and makes the final delete. podagent runs meanwhile, so in direct and npwg mode
    /// its DELs release the `data` addresses (in kactus mode that is kactus' part), and it
    /// forgets the pods.
    async fn delete_deployment(&self) {
        let pods = self.deployment_pods();
        if let Err(error) = self
            .shell(&format!(
                "kubectl delete -n {} deployment {APP} --ignore-not-found",
                self.ns
            ))
            .await
        {
            println!("✗ {error}");
            return;
        }
        // The kubelet sends SIGTERM, and SIGKILL after the pod's grace period (`top` exits on
        // SIGTERM); a step's wait on top for the garbage collector, the kubelet and podagent.
        let grace = pods
            .iter()
            .filter_map(|pod| pod["spec"]["terminationGracePeriodSeconds"].as_u64())
            .max()
            .unwrap_or(0);
        let wait = Duration::from_secs(grace) + self.wait;
        let gone = self
            .eventually_within(
                &format!("the kubelet to stop and delete the pods of {APP}"),
                wait,
                || Ok(self.deployment_pods().is_empty().then_some(())),
            )
            .await;
        if let Err(error) = gone {
            println!("✗ {error}");
            return;
        }
        let uids: Vec<&str> = pods
            .iter()
            .filter_map(|pod| pod["metadata"]["uid"].as_str())
            .collect();
        let released = self
            .eventually("podagent to release the pods' attachments", || {
                Ok(uids
                    .iter()
                    .all(|uid| self.node.record(uid).is_none())
                    .then_some(()))
            })
            .await;
        match released {
            Ok(_) if self.direct => println!(
                "pods deleted by the kubelet; podagent ran DEL for their `data` attachments \
                 (outside kactus mode the teardown is podagent's), their records are gone"
            ),
            Ok(_) => println!(
                "pods deleted by the kubelet; podagent forgot their records (their `data` \
                 attachments went with their netns: on a real node kactus' DEL releases them)"
            ),
            Err(error) => println!("✗ pods deleted, but {error}"),
        }
    }

    /// The pods of the Deployment, as the API has them (terminating ones too).
    pub(crate) fn deployment_pods(&self) -> Vec<Value> {
        self.cluster
            .admin()
            .list("v1", "Pod", Some(&self.ns))
            .into_iter()
            .filter(|pod| pod["metadata"]["labels"]["app"] == APP)
            .collect()
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
