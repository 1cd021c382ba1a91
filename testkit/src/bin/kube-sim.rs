//! `kube-sim`: the test Kubernetes API server as a process, for scripts and kubectl.
//!
//! Scripts rely on this interface exactly: `kube-sim --listen 127.0.0.1:<port> --kubeconfig
//! <path> [--tls] [--token <t>]`; port 0 picks a free port; once serving it prints one line
//! `kube-sim listening on <url>` on stdout, and it exits 0 on SIGTERM or SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use testkit::kube_sim::{KubeSim, Options};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(about = "A test Kubernetes API server for podagent's tests and scripts")]
struct Args {
    /// Address to serve on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig for this server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Serve HTTPS with a self-signed CA (written next to the kubeconfig).
    #[arg(long)]
    tls: bool,
    /// Require this bearer token on every request.
    #[arg(long)]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let opts = Options {
        listen: args.listen,
        tls: args.tls,
        token: args.token,
        kubeconfig: Some(args.kubeconfig),
        ..Options::default()
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("kube-sim: installing signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let sim = match KubeSim::start(opts).await {
        Ok(sim) => sim,
        Err(error) => {
            eprintln!("kube-sim: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "kube-sim listening on {}", sim.url())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        eprintln!("kube-sim: cannot write to stdout");
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    sim.shutdown().await;
    ExitCode::SUCCESS
}
