//! `podagent-demo`: replays the seed README's "Example" against the real podagent, on one
//! machine, on pods a real kubelet runs (run by `scripts/demo.sh`).
//!
//! The seed's example needs a Kubernetes cluster with kactus as its CNI plugin. A test host has
//! neither, so the demo builds the smallest honest one-node cluster and keeps everything real:
//! etcd, kube-apiserver, kube-scheduler and kube-controller-manager (`testkit::control_plane`,
//! built by `scripts/setup-test-host.sh`, started by the `control-plane` command next to this
//! binary); one node run by a real kubelet with a containerd (or, with `--runtime crio`, CRI-O)
//! of its own (`testkit::kubelet`, held by `testkit::node::Node`, the fixture the end-to-end
//! tests use), which gives the pods their eth0 from its own CNI network; and the real `podagent`
//! binary on that node's own identity (`scripts/create-kubeconfig.sh --node`, with
//! `manifests/podagent-admission-policy.yaml` applied), running the Debian `bridge` and
//! `host-local` plugins. In direct mode (the default) podagent reads the `data` Network of
//! `examples/data-net.yaml` itself and runs its config (bridge `data-br`, addresses from its
//! range); npwg mode does the same with the NetworkAttachmentDefinition of
//! `examples/data-nad.yaml`; in kactus mode the node's primary config in podagent's conf dir
//! (bridge + host-local + tuning) stands in for kactus delegating to `data`.
//!
//! The user-visible steps are the seed's own commands, run through bash with the control plane's
//! own `kubectl`, `jq` and `scripts/*-network-annotation.sh`, as an operator with the admin
//! kubeconfig: the Deployment is made with `kubectl create deployment` (the seed's
//! `kubectl run --replicas` was removed from kubectl), its pods are found by the label that sets,
//! and `kubectl exec … ip a` goes through the API server to the kubelet, as on any cluster.
//!
//! Each step waits for its outcome (the interface in the pod's netns, podagent's Event, the
//! rollout) for a bounded time and fails the demo with a message saying what did not happen; what
//! `kubectl exec` shows is checked too. Everything the demo starts or creates is removed on exit,
//! also on SIGINT/SIGTERM: the Deployment is deleted and its pods go as the kubelet stops them
//! (podagent releasing their `data` addresses), podagent is stopped by PID, the kubelet and its
//! runtime stop and remove their sandboxes, the node's bridges and dirs are deleted, the cleanup
//! is verified and printed, and the control plane stops and removes its dir once this process
//! has exited.
//!
//! `node` starts and tears down the node (control plane, kubelet, podagent); `steps` replays the
//! example on it.

mod node;
mod steps;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus};
use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;
use nix::unistd::{Pid, setpgid};
use testkit::control_plane::Shared;
use testkit::node::{Agent, Node};
use tokio::signal::unix::{SignalKind, signal};

/// The attachment the example adds, and the interface kactus names it: net + md5("data")[:12].
const NETWORK: &str = "data";
const IFNAME: &str = "net8d777f385d3d";
/// The example's Deployment, and the `app` label `kubectl create deployment` gives its pods.
const APP: &str = "hello-multi-net";
/// The node's name for the example's namespace; the real one is `demo-<pid>-<n>`, made by the
/// demo (see [`Node::ns`]) and printed in every command.
const NAMESPACE: &str = "demo";
/// How long podagent may take to stop after SIGTERM before it is killed.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the two pods may take from `kubectl create deployment` to Running: the scheduler
/// binds them at once, the image is local (never pulled) and the kubelet's PLEG relists every
/// second, so they run within seconds (seen: 2–5 s); this is the bound `testkit::kubelet` gives
/// a pod, for a loaded machine.
const ROLLOUT_WAIT: Duration = Duration::from_secs(60);

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
    /// podagent's network mode: `direct` runs the `data` Network's own config, `npwg` the
    /// `data` NetworkAttachmentDefinition's (NPWG annotation), `kactus` the node's primary
    /// config (a stand-in for kactus).
    #[arg(long, default_value = "direct", value_parser = ["direct", "npwg", "kactus"])]
    mode: String,
    /// The kubelet's container runtime: a `containerd` or `crio` (CRI-O) of its own.
    #[arg(long, default_value = "containerd", value_parser = ["containerd", "crio"])]
    runtime: String,
}

/// The bridge `examples/data-net.yaml` attaches the `data` network to (direct mode).
const DATA_BRIDGE: &str = "data-br";

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
    #[error("podagent exited on its own ({status})")]
    AgentExited { status: ExitStatus },
    #[error("the API server: {0:#}")]
    Api(#[from] anyhow::Error),
    #[error("CRI ListPodSandbox for pod {pod}: {source}")]
    Cri { pod: String, source: tonic::Status },
    #[error("{detail}")]
    WrongAddress { detail: String },
    #[error("`kubectl exec {pod} -- ip a` {detail}")]
    Exec { pod: String, detail: String },
    #[error("pod {pod}'s network-status: {detail}")]
    NetworkStatus { pod: String, detail: String },
    #[error("deployment {APP}: {detail}")]
    Deployment { detail: String },
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

/// One pod of `hello-multi-net`, as the kubelet runs it.
#[derive(Debug)]
struct DemoPod {
    name: String,
    uid: String,
    sandbox: String,
    netns: PathBuf,
}

/// Everything the demo runs. Fields drop in this order: podagent first (so it does not react to
/// the teardown), then the node (the kubelet, its runtime with the sandboxes, the bridges, the
/// node's dirs). The control plane is the process's shared one: it stops when the process exits.
struct Demo {
    /// `None` once stopped.
    agent: Mutex<Option<Agent>>,
    agent_pid: i32,
    node: Node,
    cluster: &'static Shared,
    /// The real namespace of the example's pods and Network.
    ns: String,
    repo: PathBuf,
    /// PATH for the commands shown: the control plane's kubectl first.
    path: std::ffi::OsString,
    wait: Duration,
    /// The two pods, in the order `kubectl get pod` lists them (by name): `head -1` is the
    /// first. Empty until the rollout.
    pods: Vec<DemoPod>,
    /// How far podagent's log has been shown.
    log_shown: Mutex<u64>,
    /// Direct or npwg mode: podagent runs the `data` network object's config.
    direct: bool,
    /// Npwg mode: the object is a NetworkAttachmentDefinition, the annotation NPWG's.
    npwg: bool,
    /// `data-br` was there before the demo (then the demo leaves it).
    data_bridge_existed: bool,
    /// The dirs of the `data` network's host-local state that were not there before the demo
    /// (its own, and `/var/lib/cni/networks` on a host where no host-local ran yet), innermost
    /// first: removed once the leases are released, the parents only when empty.
    data_leases_made: Vec<PathBuf>,
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
    // A process group of its own, which everything it starts but the daemons (which have their
    // own) inherits: a Ctrl-C on the terminal then reaches scripts/demo.sh only, which passes it
    // on as SIGTERM, and the demo stops podagent before the node and the control plane go,
    // instead of all of them getting SIGINT at once. (A no-op when the demo already leads its
    // group, as when it is run straight from an interactive shell.)
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
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
    let names: Vec<String> = demo.pods.iter().map(|pod| pod.name.clone()).collect();
    demo.clean_up().await;
    if let (Ok(()), [first, second]) = (&outcome, names.as_slice()) {
        println!(
            "\nDemo complete: {IFNAME} came and went in {first} and came into {second}, \
             neither pod restarted ({} mode, {}).",
            args.mode, args.runtime
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
