//! `podagent-demo`: replays the seed README's "Example" against the real podagent, on one
//! machine, with nothing of a cluster but an API server simulator (run by `scripts/demo.sh`).
//!
//! The seed's example needs a Kubernetes cluster with kactus as its CNI plugin. A test host has
//! neither, so the demo builds the smallest honest stand-in for one node and keeps everything
//! else real: kube-sim is the API server (served in this process; kubectl and the operator
//! scripts talk to it over HTTP through a kubeconfig), a private containerd runs the two pods of
//! `hello-multi-net` as real pod sandboxes, and the real `podagent` binary watches the node and
//! runs the Debian `bridge` and `host-local` plugins. The user-visible steps are the seed's own
//! commands, run through bash with the real `kubectl`, `jq` and `scripts/*-network-annotation.sh`;
//! only `kubectl exec … ip a` is replaced (kube-sim has no exec) by `ip -n <sandbox netns> a`,
//! which shows the same namespace from the host.
//!
//! Each step waits for its outcome (the interface in the sandbox's netns and podagent's Event)
//! for a bounded time and fails the demo with a message saying what did not happen. Everything
//! the demo starts or creates is removed on exit, also on SIGINT/SIGTERM: podagent is stopped by
//! PID, containerd removes the sandboxes (and their netns) before it is stopped, the data bridge
//! and the temp dir are deleted, and the cleanup is verified and printed.

use std::collections::HashMap;
use std::fs;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_cri::v1::{ListPodSandboxRequest, PodSandboxFilter, PodSandboxState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use testkit::host::Containerd;
use testkit::kube_sim::{KubeSim, Options};
use testkit::netns::unique_name;
use testkit::prereq;
use tokio::signal::unix::{SignalKind, signal};

/// The node podagent serves; the pods are scheduled here.
const NODE: &str = "demo-node";
/// The attachment the example adds, and the interface kactus names it: net + md5("data")[:12].
const NETWORK: &str = "data";
const IFNAME: &str = "net8d777f385d3d";
/// The seed's addresses for `data` (172.20.1.0/24) are not ours to use on a test host; this
/// range is inside the benchmarking block and only ever appears inside the demo's pods.
const DATA_SUBNET: &str = "198.18.32.0/24";
const APP: &str = "hello-multi-net";
const NAMESPACE: &str = "default";
/// What `kubectl run hello-multi-net --replicas=2` names its pods: deployment, template hash,
/// random suffix. Sorted as `kubectl get pod` lists them, so `head -1` is the first.
const POD_NAMES: [&str; 2] = [
    "hello-multi-net-5d8f9c7b6-4xk2p",
    "hello-multi-net-5d8f9c7b6-r9wzt",
];
/// The seed's way of naming the first and the second pod, kept verbatim in the commands shown.
const FIRST_POD: &str = "$(kubectl get pod -l run=hello-multi-net -o name | cut -d/ -f2 | head -1)";
const SECOND_POD: &str =
    "$(kubectl get pod -l run=hello-multi-net -o name | cut -d/ -f2 | tail -1)";
/// How long podagent may take to stop after SIGTERM before it is killed.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(about = "Replays the seed README's example against the real podagent on this machine")]
struct Args {
    /// The podagent binary to run.
    #[arg(long)]
    podagent: PathBuf,
    /// The podagent checkout: its scripts/, manifests/ and examples/ are used as they are.
    #[arg(long)]
    repo: PathBuf,
    /// How long each step may take to happen before the demo fails, in seconds.
    #[arg(long, default_value_t = 20)]
    wait: u64,
}

/// Why the demo stopped before its end.
#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    #[error("`{command}` failed ({status})")]
    Command { command: String, status: ExitStatus },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{operation} {path}: {source}")]
    File {
        operation: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("podagent exited on its own ({status})")]
    AgentExited { status: ExitStatus },
    #[error("the API server simulator: {0}")]
    KubeSim(#[from] testkit::kube_sim::Error),
    #[error("CRI ListPodSandbox for pod {pod}: {source}")]
    Cri { pod: String, source: tonic::Status },
    #[error("pod {pod} was restarted: {detail}")]
    Restarted { pod: String, detail: String },
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("interrupted by {0}")]
    Interrupted(&'static str),
}

/// One pod of `hello-multi-net`: its API object and its real sandbox.
struct DemoPod {
    name: &'static str,
    uid: String,
    sandbox: String,
    netns: PathBuf,
}

impl DemoPod {
    /// The netns name `ip -n` takes (containerd bind-mounts it under /var/run/netns).
    fn netns_name(&self) -> String {
        self.netns
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The running podagent; stopped by PID (SIGTERM, then SIGKILL after a grace) on drop.
struct Agent {
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
struct Bridge(String);

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

/// Everything the demo runs. Fields drop in this order: podagent first (so it does not react to
/// the teardown), then containerd with the sandboxes, the bridge, the API server, the temp dir.
struct Demo {
    agent: Agent,
    containerd: Containerd,
    bridge: Bridge,
    sim: KubeSim,
    dir: tempfile::TempDir,
    repo: PathBuf,
    wait: Duration,
    pods: Vec<DemoPod>,
    /// How far podagent's log has been shown.
    log_shown: Mutex<u64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        // The shell's convention for death by a signal, though the demo cleaned up first.
        Err(DemoError::Interrupted(signal)) => {
            eprintln!("\npodagent-demo: stopped by {signal}");
            ExitCode::from(if signal == "SIGINT" { 130 } else { 143 })
        }
        Err(error) => {
            eprintln!("\npodagent-demo: FAILED: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), DemoError> {
    // Installed first so that a Ctrl-C during the setup is kept and handled after it, instead
    // of killing the process before it can clean up.
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|source| DemoError::Signal {
        signal: "SIGINT",
        source,
    })?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|source| DemoError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut demo = Demo::start(&args).await?;
    let outcome = tokio::select! {
        biased;
        _ = interrupt.recv() => Err(DemoError::Interrupted("SIGINT")),
        _ = terminate.recv() => Err(DemoError::Interrupted("SIGTERM")),
        replayed = demo.replay() => replayed,
    };
    match &outcome {
        Ok(()) => {}
        Err(error @ DemoError::Interrupted(_)) => println!("\n✗ {error}"),
        Err(error) => {
            println!("\n✗ {error}");
            demo.show_log_tail(30);
        }
    }
    demo.clean_up().await;
    if outcome.is_ok() {
        println!(
            "\nDemo complete: {IFNAME} came and went in {} and came into {}, \
             neither pod restarted.",
            POD_NAMES[0], POD_NAMES[1]
        );
    }
    outcome
}

/// A step heading, bold on a terminal.
fn heading(title: &str) {
    let rule = "─".repeat(78usize.saturating_sub(title.chars().count() + 4));
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m── {title} {rule}\x1b[0m");
    } else {
        println!("\n── {title} {rule}");
    }
}

/// Explanations, set apart from command output.
fn say(text: &str) {
    for line in text.lines() {
        println!("# {line}");
    }
}

fn write(path: &Path, text: &str) -> Result<(), DemoError> {
    fs::write(path, text).map_err(|source| DemoError::File {
        operation: "writing",
        path: path.to_owned(),
        source,
    })
}

impl Demo {
    /// Starts the API server, containerd and podagent; returns once podagent is ready.
    async fn start(args: &Args) -> Result<Demo, DemoError> {
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

    /// The seed's example, step by step.
    async fn replay(&mut self) -> Result<(), DemoError> {
        heading("1. Provision the `data` network attachment");
        say("The seed: kubectl apply -f examples/data-net.yaml (after the Network CRD).");
        self.shell("kubectl apply -f manifests/networks-crd.yaml")
            .await?;
        self.shell("kubectl apply -f examples/data-net.yaml")
            .await?;
        self.shell("kubectl get networks").await?;

        heading("2. Deploy hello-multi-net with 2 replicas");
        say(
            "The seed: kubectl run hello-multi-net --image=alpine --replicas=2 -- top\n\
             There is no kubelet here, so the demo does the kubelet's part: a real containerd pod\n\
             sandbox per pod (its pause process holds the pod's netns, eth0 from containerd's CNI),\n\
             and the pod object as the kubelet reports it (Running on demo-node).",
        );
        for name in POD_NAMES {
            let pod = self.create_pod(name).await?;
            println!(
                "pod {name}: uid {}, sandbox {}, netns {}",
                pod.uid,
                short(&pod.sandbox),
                pod.netns.display()
            );
            self.pods.push(pod);
        }
        self.shell("kubectl get pod -l run=hello-multi-net -o wide")
            .await?;

        heading("3. Add the `data` network attachment to the first pod");
        self.add(0, FIRST_POD).await?;

        heading(&format!(
            "4. Verify that {IFNAME} is present in the first pod"
        ));
        self.show_interfaces(0).await?;

        heading("5. Verify that the first pod didn't get re-started");
        self.show_not_restarted(0, FIRST_POD).await?;

        heading("6. Delete the `data` network attachment off the first pod");
        self.shell(&format!(
            "./scripts/del-network-annotation.sh {FIRST_POD} {NETWORK}"
        ))
        .await?;
        let pod = &self.pods[0];
        let took = self
            .eventually(&format!("{IFNAME} to go from pod {}", pod.name), || {
                Ok((!has_link(&pod.netns, IFNAME)).then_some(()))
            })
            .await?;
        println!(
            "✓ {IFNAME} is gone from {} ({:.1} s after the annotation changed)",
            pod.name,
            took.as_secs_f64()
        );
        self.wait_for_event(0, "RemovedInterface").await?;
        self.show_events().await?;
        self.show_log();

        heading(&format!(
            "7. Verify that {IFNAME} is gone from the first pod"
        ));
        self.show_interfaces(0).await?;

        heading("8. Verify that the first pod didn't get re-started");
        self.show_not_restarted(0, FIRST_POD).await?;

        heading("9. Repeat the same thing with the second pod: add `data`");
        self.add(1, SECOND_POD).await?;

        heading(&format!(
            "10. Verify that {IFNAME} is present in the second pod"
        ));
        self.show_interfaces(1).await?;

        heading("11. Verify that the second pod didn't get re-started");
        self.show_not_restarted(1, SECOND_POD).await?;
        Ok(())
    }

    /// Runs the seed's add command on pod `index` (named in the shell by `selector`) and waits
    /// for the interface and podagent's Event.
    async fn add(&self, index: usize, selector: &str) -> Result<(), DemoError> {
        self.shell(&format!(
            "./scripts/add-network-annotation.sh {selector} {NETWORK}"
        ))
        .await?;
        let pod = &self.pods[index];
        let took = self
            .eventually(&format!("{IFNAME} to appear in pod {}", pod.name), || {
                Ok(has_link(&pod.netns, IFNAME).then_some(()))
            })
            .await?;
        println!(
            "✓ {IFNAME} is in {} ({:.1} s after the annotation changed)",
            pod.name,
            took.as_secs_f64()
        );
        self.wait_for_event(index, "AddedInterface").await?;
        self.show_events().await?;
        self.show_log();
        Ok(())
    }

    /// Creates pod `name`: the API object (Pending), its sandbox, then Running with its IP.
    async fn create_pod(&self, name: &'static str) -> Result<DemoPod, DemoError> {
        let created = self.sim.create(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "labels": {"run": APP, "pod-template-hash": "5d8f9c7b6"},
            },
            "spec": {
                "nodeName": NODE,
                "containers": [{"name": APP, "image": "alpine", "args": ["top"]}],
            },
            "status": {"phase": "Pending"},
        }))?;
        let uid = created["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let sandbox = self.containerd.run_pod_sandbox(&uid, name, NAMESPACE).await;
        let netns = self.containerd.sandbox_netns(&sandbox).await;
        let pod_ip = ipv4(&netns, "eth0").unwrap_or_default();
        self.sim.patch_merge(
            "v1",
            "Pod",
            Some(NAMESPACE),
            name,
            json!({"status": {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": pod_ip,
                "podIPs": [{"ip": pod_ip}],
                "containerStatuses": [{
                    "name": APP, "image": "alpine", "imageID": "", "ready": true,
                    "started": true, "restartCount": 0
                }],
            }}),
        )?;
        Ok(DemoPod {
            name,
            uid,
            sandbox,
            netns,
        })
    }

    /// `ip a` inside the pod, the way the seed's `kubectl exec -t <pod> -- ip a` shows it.
    async fn show_interfaces(&self, index: usize) -> Result<(), DemoError> {
        let pod = &self.pods[index];
        say(&format!(
            "The seed: kubectl exec -t <pod> -- ip a. kube-sim has no exec, so this is the same view\n\
             from the host: `ip` inside the netns of {}'s sandbox ({}).",
            pod.name,
            short(&pod.sandbox)
        ));
        self.shell(&format!("ip -n {} a", pod.netns_name())).await?;
        Ok(())
    }

    /// The pod object and the runtime both show the same, never restarted, sandbox.
    async fn show_not_restarted(&self, index: usize, selector: &str) -> Result<(), DemoError> {
        let pod = &self.pods[index];
        self.shell(&format!(
            "kubectl get pod -l run=hello-multi-net -o wide | grep {selector}"
        ))
        .await?;
        say(
            "The runtime's word (what `crictl pods` shows on a node): the pod's sandboxes, over CRI.",
        );
        let sandboxes = self.sandboxes(pod).await?;
        for (id, state, created) in &sandboxes {
            println!("sandbox {id}  {state}  created {created}");
        }
        match sandboxes.as_slice() {
            [(id, state, _)] if *id == pod.sandbox && state == "READY" => {
                println!(
                    "✓ sandbox {} unchanged since step 2: {} was not restarted",
                    pod.sandbox, pod.name
                );
                Ok(())
            }
            _ => Err(DemoError::Restarted {
                pod: pod.name.to_owned(),
                detail: format!(
                    "expected only sandbox {} (READY), the runtime has {sandboxes:?}",
                    pod.sandbox
                ),
            }),
        }
    }

    /// `(id, state, created)` of every sandbox of `pod` the runtime knows.
    async fn sandboxes(&self, pod: &DemoPod) -> Result<Vec<(String, String, String)>, DemoError> {
        let items = self
            .containerd
            .runtime_client()
            .await
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    label_selector: HashMap::from([(
                        "io.kubernetes.pod.uid".to_owned(),
                        pod.uid.clone(),
                    )]),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|source| DemoError::Cri {
                pod: pod.name.to_owned(),
                source,
            })?
            .into_inner()
            .items;
        Ok(items
            .into_iter()
            .map(|sandbox| {
                let state = match PodSandboxState::try_from(sandbox.state) {
                    Ok(PodSandboxState::SandboxReady) => "READY",
                    _ => "NOTREADY",
                };
                let created = utc_time(sandbox.created_at);
                (sandbox.id, state.to_owned(), created)
            })
            .collect())
    }

    async fn wait_for_event(&self, index: usize, reason: &str) -> Result<(), DemoError> {
        let pod = &self.pods[index];
        self.eventually(
            &format!("podagent's {reason} Event on {}", pod.name),
            || {
                Ok(self
                    .sim
                    .list("events.k8s.io/v1", "Event", Some(NAMESPACE))
                    .iter()
                    .any(|event| event["regarding"]["uid"] == pod.uid && event["reason"] == reason)
                    .then_some(()))
            },
        )
        .await?;
        Ok(())
    }

    async fn show_events(&self) -> Result<(), DemoError> {
        say("podagent's Events:");
        self.shell("kubectl get events").await?;
        Ok(())
    }

    /// podagent's log lines written since the last call.
    fn show_log(&self) {
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

    fn show_log_tail(&self, lines: usize) {
        let text = fs::read_to_string(self.dir.path().join("podagent.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        println!("podagent's last {lines} log lines:");
        for line in &all[all.len().saturating_sub(lines)..] {
            println!("  │ {line}");
        }
    }

    /// Prints `$ command` and runs it with bash in the checkout, kubectl pointed at kube-sim.
    async fn shell(&self, command: &str) -> Result<(), DemoError> {
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
    async fn eventually(
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
    async fn clean_up(self) {
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

/// `ip -n`-free link check: the names of the links in `netns`, read with `ip -j`.
fn links(netns: &Path) -> Vec<Value> {
    let name = netns
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::process::Command::new("ip")
        .args(["-n", &name, "-j", "addr", "show"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| serde_json::from_slice::<Vec<Value>>(&out.stdout).ok())
        .unwrap_or_default()
}

fn has_link(netns: &Path, ifname: &str) -> bool {
    links(netns).iter().any(|link| link["ifname"] == ifname)
}

fn ipv4(netns: &Path, ifname: &str) -> Option<String> {
    links(netns).iter().find(|link| link["ifname"] == ifname)?["addr_info"]
        .as_array()?
        .iter()
        .find(|addr| addr["family"] == "inet")?["local"]
        .as_str()
        .map(str::to_owned)
}

/// The first 13 characters of a sandbox id, as crictl shows them.
fn short(id: &str) -> &str {
    id.get(..13).unwrap_or(id)
}

/// `HH:MM:SS.mmm UTC` of a CRI timestamp (nanoseconds since the epoch).
fn utc_time(nanos: i64) -> String {
    let millis = nanos / 1_000_000;
    let day_millis = millis.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        day_millis / 3_600_000,
        day_millis / 60_000 % 60,
        day_millis / 1000 % 60,
        day_millis % 1000
    )
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
