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
//!
//! `node` starts and tears down the node (API server, containerd, podagent); `steps` replays
//! the example on it.

mod node;
mod steps;

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus};
use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;
use testkit::host::Containerd;
use testkit::kube_sim::KubeSim;
use tokio::signal::unix::{SignalKind, signal};

use node::{Agent, Bridge};

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
