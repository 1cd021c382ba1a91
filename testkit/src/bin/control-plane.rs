//! `control-plane`: a real Kubernetes cluster on one machine (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler on loopback, and `--nodes N` real kubelets), for
//! people and scripts.
//!
//! Scripts rely on this interface exactly: `control-plane --dir DIR [--ephemeral] [--nodes N]`
//! starts the daemons with their data, keys and logs in DIR, writes `DIR/admin.kubeconfig`,
//! prints exactly one line `control plane ready: kubeconfig DIR/admin.kubeconfig server
//! https://127.0.0.1:PORT` on stdout once the API server is ready, then, with `--nodes N`, one
//! line `node NAME ip IP cri unix://SOCKET` per kubelet node once it is Ready, and on SIGTERM or
//! SIGINT stops everything and exits 0. With `--ephemeral` (what the test fixture uses) it also
//! stops when its stdin closes, removes DIR afterwards, and takes one command per stdin line:
//! `restart-apiserver` (answered `apiserver restarted`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use testkit::control_plane::{ControlPlane, READY_PREFIX};
use testkit::kubelet::KubeletNode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(about = "A real Kubernetes control plane on loopback for podagent's tests and scripts")]
struct Args {
    /// Directory for etcd's data, the keys, the kubeconfig and the daemons' logs.
    #[arg(long)]
    dir: PathBuf,
    /// Stop when stdin closes and remove DIR; read commands from stdin.
    #[arg(long)]
    ephemeral: bool,
    /// Kubelet nodes to start (`node-1` … `node-N`), each with a containerd of its own.
    #[arg(long, default_value_t = 0)]
    nodes: u32,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client=off".into()),
        )
        .init();
    // (kube_client logs every refused /readyz poll while the API server starts.)
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("control-plane: installing signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut plane = match ControlPlane::start(&args.dir).await {
        Ok(plane) => plane,
        Err(error) => {
            eprintln!("control-plane: {error:#}");
            remove_dir(&args);
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "control-plane: Kubernetes {} with etcd {} ready in {:.1}s (logs in {})",
        testkit::control_plane::kubernetes_version(),
        testkit::control_plane::etcd_version(),
        started.elapsed().as_secs_f64(),
        plane.dir().display()
    );
    say(&format!(
        "{READY_PREFIX}{} server {}",
        plane.kubeconfig().display(),
        plane.server()
    ));
    let mut nodes = Vec::new();
    for n in 1..=args.nodes {
        let node = KubeletNode::start(&format!("node-{n}"), plane.server(), plane.dir()).await;
        say(&format!(
            "node {} ip {} cri unix://{}",
            node.name(),
            node.ip(),
            node.cri().socket().display()
        ));
        nodes.push(node);
    }
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            line = commands.next_line(), if args.ephemeral => match line {
                Ok(Some(command)) if command.trim() == "restart-apiserver" => {
                    match plane.restart_apiserver().await {
                        Ok(()) => say("apiserver restarted"),
                        Err(error) => say(&format!("restart failed: {error:#}")),
                    }
                }
                Ok(Some(command)) => say(&format!("unknown command {command:?}")),
                // The test process that held our stdin is gone.
                Ok(None) | Err(_) => break,
            },
        }
    }
    drop(nodes);
    plane.stop().await;
    remove_dir(&args);
    ExitCode::SUCCESS
}

/// One line on stdout, flushed: the reader waits for it.
fn say(line: &str) {
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        eprintln!("control-plane: cannot write to stdout");
    }
}

fn remove_dir(args: &Args) {
    if args.ephemeral {
        let _ = std::fs::remove_dir_all(&args.dir);
    }
}
