//! podagent's benchmark: hot-plug latency, burst convergence, restart cost, footprint and
//! failure cost of the real podagent binary, each measured against a floor taken in the same
//! run (absolute times on shared machines drift; ratios to a floor do not).
//!
//! Everything is real: the shared control plane of the tests (etcd, kube-apiserver,
//! kube-controller-manager, started once for this process), the shared node fixture
//! (`testkit::node::Node`: a private containerd with real pod sandboxes, the Debian bridge +
//! host-local plugins through the logging wrapper, the kubelet's part played through the API),
//! podagent with its own RBAC-limited kubeconfig, and netlink notifications from inside each
//! pod netns. `scripts/bench.sh [--quick]` builds the release binary and runs this; results go
//! to `<out>/results.json` and `<out>/results.md`.
//!
//! Usage: `hotplug [--quick] [--out DIR] [--podagent PATH]` (cargo's own `--bench` is ignored).

mod burst;
mod footprint;
mod latency;
mod linkwatch;
mod measure;
mod report;
mod world;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use testkit::journal::NotifySocket;

use crate::linkwatch::{Change, LinkWatch};
use crate::world::World;

/// How big each scenario is; `--quick` is a smoke run that proves the harness still works.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sizes {
    pub quick: bool,
    pub latency_trials: usize,
    pub burst_pods: usize,
    pub footprint_pods: usize,
    pub failing_pods: usize,
    pub failure_window_s: u64,
    pub idle_window_s: u64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                quick,
                latency_trials: 5,
                burst_pods: 10,
                footprint_pods: 200,
                failing_pods: 3,
                failure_window_s: 10,
                idle_window_s: 3,
            }
        } else {
            Sizes {
                quick,
                latency_trials: 200,
                burst_pods: 110,
                footprint_pods: 1000,
                failing_pods: 10,
                failure_window_s: 60,
                idle_window_s: 20,
            }
        }
    }
}

struct Args {
    quick: bool,
    out: PathBuf,
    podagent: PathBuf,
}

/// `None` when run without arguments, as `cargo test --all-targets` does: the benchmark runs
/// only when asked (`cargo bench` passes `--bench`; scripts/bench.sh does that).
fn args() -> Result<Option<Args>> {
    if std::env::args().len() < 2 {
        return Ok(None);
    }
    let mut parsed = Args {
        quick: false,
        out: PathBuf::from("target/bench"),
        podagent: PathBuf::from(env!("CARGO_BIN_EXE_podagent")),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => parsed.quick = true,
            "--bench" => {}
            "--out" => parsed.out = args.next().context("--out needs a directory")?.into(),
            "--podagent" => {
                parsed.podagent = args.next().context("--podagent needs a path")?.into()
            }
            other => {
                bail!("unknown argument {other:?}; usage: [--quick] [--out DIR] [--podagent PATH]")
            }
        }
    }
    Ok(Some(parsed))
}

/// Everything one run measured; serialised as results.json.
#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: report::Machine,
    pub command: String,
    pub podagent: String,
    /// The control plane podagent ran against.
    pub api_server: String,
    pub sizes: Sizes,
    pub setup: Setup,
    pub startup_ready_s: f64,
    pub latency: latency::Latency,
    /// podagent's pre-plugin steps timed alone: where the attach overhead goes.
    pub attach_steps: latency::Steps,
    pub burst_floor: burst::Floor,
    pub burst_add: burst::Converge,
    pub burst_del: burst::Converge,
    /// The same burst with every ADD and DEL sleeping `slow_plugin_ms` first.
    pub slow_plugin_ms: u64,
    pub slow_add: burst::Converge,
    pub slow_del: burst::Converge,
    pub restart: burst::Restart,
    pub idle_after_burst: footprint::Idle,
    pub idle_after_restart: footprint::Idle,
    /// The metrics listener's cost: idle with it off, and with it on and scraped.
    pub listener: footprint::Listener,
    pub idle_many_pods: footprint::Idle,
    pub failure: footprint::Failure,
}

/// What building the node cost (not podagent's cost).
#[derive(Debug, Serialize)]
pub struct Setup {
    /// Starting (or reaching) the control plane and the node: containerd, podagent's
    /// kubeconfig, the namespace.
    pub node_s: f64,
    /// Pods created through the API server with a real sandbox each and reported Running.
    pub sandboxes: usize,
    pub sandboxes_s: f64,
    /// Pods without a sandbox for the many-pods footprint, created and reported Running.
    pub plain_pods: usize,
    pub plain_pods_s: f64,
}

const SLOW_PLUGIN_MS: u64 = 50;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let Some(args) = args()? else {
        println!(
            "podagent benchmark: run scripts/bench.sh [--quick] (or cargo bench --bench hotplug)"
        );
        return Ok(());
    };
    let sizes = Sizes::new(args.quick);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let results = run(&args, sizes, command).await?;
    report::write(&args.out, &results)?;
    println!("{}", report::markdown(&results));
    println!("results: {}", args.out.join("results.json").display());
    Ok(())
}

async fn run(args: &Args, sizes: Sizes, command: String) -> Result<Results> {
    let ticks = measure::ticks_per_second()?;
    let step = |what: &str| eprintln!("[bench] {what}");
    // The first use of the control plane in a target dir builds testkit's `control-plane`
    // command into this profile (minutes, once); none of it is measured.
    step("starting the control plane (built first if needed) and the node");
    let started = Instant::now();
    let world = World::start(args.podagent.clone()).await?;
    // podagent's kubeconfig (made by scripts/create-kubeconfig.sh) before anything is timed.
    world.node.cluster().podagent_kubeconfig();
    let node_s = started.elapsed().as_secs_f64();

    step("creating pods and sandboxes");
    let started = Instant::now();
    let probe = world.pod("lat", true).await?;
    let mut burst_pods = Vec::new();
    for i in 0..sizes.burst_pods {
        burst_pods.push((i + 1, world.pod(&format!("b{i:03}"), true).await?));
    }
    let mut setup = Setup {
        node_s,
        sandboxes: sizes.burst_pods + 1,
        sandboxes_s: started.elapsed().as_secs_f64(),
        plain_pods: 0,
        plain_pods_s: 0.0,
    };
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut watches = vec![LinkWatch::start(probe.netns()?, 0, tx.clone())?];
    for (tag, pod) in &burst_pods {
        watches.push(LinkWatch::start(pod.netns()?, *tag, tx.clone())?);
    }
    drop(tx);

    step("floor: watch delivery");
    let floor_watch = latency::watch_floor(&world, &probe, sizes.latency_trials).await?;
    step("floor: CNI attach/detach");
    let floor_cni =
        latency::cni_floor(&world, &probe, 0, &mut events, sizes.latency_trials).await?;
    step("podagent's own steps alone");
    let attach_steps = latency::steps(&world, &probe, sizes.latency_trials).await?;
    step("floor: burst plugin runs");
    let plain: Vec<_> = burst_pods.iter().map(|(_, p)| p.clone()).collect();
    let burst_floor = burst::floor(&world, &plain).await?;

    step("starting podagent");
    let notify = NotifySocket::bind();
    let agent = world.start_agent(&notify.path(), true)?;
    let startup_ready = burst::wait_ready(&world, &notify, &agent)?;

    step("latency");
    let (attach, detach) =
        latency::agent_trials(&world, &probe, 0, &mut events, sizes.latency_trials).await?;
    let latency = latency::Latency::new(attach, detach, floor_cni, floor_watch);

    step("burst: add");
    let burst_add = burst::converge(
        &world,
        &agent,
        &burst_pods,
        &mut events,
        Change::Added,
        ticks,
    )
    .await?;
    let attachments = burst_add.attachments;
    let all_pods = sizes.burst_pods + 1;
    let idle_window = Duration::from_secs(sizes.idle_window_s);
    let idle_after_burst =
        footprint::idle(&agent, all_pods, attachments, idle_window, ticks).await?;

    step("restart");
    let (agent, _notify, restart) = burst::restart(
        &world,
        agent,
        all_pods,
        attachments,
        Duration::from_secs(if sizes.quick { 1 } else { 3 }),
        true,
    )
    .await?;
    let idle_after_restart =
        footprint::idle(&agent, all_pods, attachments, idle_window, ticks).await?;

    step("metrics listener: idle off, then on and scraped every second");
    let settle = Duration::from_secs(if sizes.quick { 1 } else { 3 });
    let (agent, _notify, _) =
        burst::restart(&world, agent, all_pods, attachments, settle, false).await?;
    let off = footprint::idle(&agent, all_pods, attachments, idle_window, ticks).await?;
    let (agent, _notify, _) =
        burst::restart(&world, agent, all_pods, attachments, settle, true).await?;
    let listener =
        footprint::scraped(&agent, all_pods, attachments, idle_window, ticks, off).await?;

    step("footprint with many pods");
    let extra = sizes.footprint_pods.saturating_sub(all_pods);
    let started = Instant::now();
    for i in 0..extra {
        world.pod(&format!("i{i:04}"), false).await?;
    }
    setup.plain_pods = extra;
    setup.plain_pods_s = started.elapsed().as_secs_f64();
    // Let podagent take in the new pods before the quiet window starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_many_pods =
        footprint::idle(&agent, all_pods + extra, attachments, idle_window, ticks).await?;

    step("burst: remove");
    let burst_del = burst::converge(
        &world,
        &agent,
        &burst_pods,
        &mut events,
        Change::Removed,
        ticks,
    )
    .await?;

    step("burst with a slow plugin");
    world
        .node
        .set_switch("sleep", Some(&format!("0.{SLOW_PLUGIN_MS:03}")));
    let slow_add = burst::converge(
        &world,
        &agent,
        &burst_pods,
        &mut events,
        Change::Added,
        ticks,
    )
    .await?;
    let slow_del = burst::converge(
        &world,
        &agent,
        &burst_pods,
        &mut events,
        Change::Removed,
        ticks,
    )
    .await?;
    world.node.set_switch("sleep", None);

    step("failure cost");
    let mut failing = Vec::new();
    for i in 0..sizes.failing_pods {
        failing.push(world.pod(&format!("f{i:02}"), true).await?);
    }
    let names: Vec<String> = failing.iter().map(|p| p.name.clone()).collect();
    let failure = footprint::failure(
        &world,
        &agent,
        &names,
        Duration::from_secs(sizes.failure_window_s),
        ticks,
    )
    .await?;
    for pod in &failing {
        world.delete_pod(pod).await;
    }

    agent.stop();
    drop(watches);
    Ok(Results {
        machine: report::Machine::here(),
        command,
        podagent: args.podagent.display().to_string(),
        api_server: format!(
            "kube-apiserver {} (etcd {}) at {}",
            testkit::control_plane::kubernetes_version(),
            testkit::control_plane::etcd_version(),
            world.node.cluster().server()
        ),
        sizes,
        setup,
        startup_ready_s: startup_ready.as_secs_f64(),
        latency,
        attach_steps,
        burst_floor,
        burst_add,
        burst_del,
        slow_plugin_ms: SLOW_PLUGIN_MS,
        slow_add,
        slow_del,
        restart,
        idle_after_burst,
        idle_after_restart,
        listener,
        idle_many_pods,
        failure,
    })
}
