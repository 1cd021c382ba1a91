//! Scenarios 2 and 3: many attachments at once, and a restart that must not redo any of them.
//!
//! Burst: every pod gets all networks in one go (one annotation patch per pod, back to back),
//! then loses them. Converged = the kernel has reported every interface present (absent) in
//! every pod netns. The floor is the definition — the sum of the plugin run times,
//! measured serially through the same CNI engine in the same run, divided by podagent's
//! concurrency — and, for reference, the same attachments run directly at that concurrency.
//!
//! Restart: with everything attached, podagent is stopped (SIGTERM) and started again; we
//! time spawn → `READY=1` on its notify socket and count the plugin invocations it makes.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use podagent::cni::Cni;
use serde::Serialize;
use testkit::journal::NotifySocket;
use testkit::node::Ended;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::linkwatch::{Change, LinkEvent, drain};
use crate::measure::{self, CpuUse};
use crate::world::{Agent, CONCURRENCY, Pod, World, epoch_now};

/// The burst networks (kubelet's default max pods × these = the 440 attachments).
pub const NETWORKS: [&str; 4] = ["green", "red", "blue", "data"];
const WAIT: Duration = Duration::from_secs(300);

/// Plugin run times measured directly through the CNI engine.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Floor {
    pub attachments: usize,
    pub add_sum_s: f64,
    pub del_sum_s: f64,
    /// Wall time of the same ADDs (DELs) run directly, `concurrency` at a time.
    pub add_parallel_s: f64,
    pub del_parallel_s: f64,
}

/// Runs every (pod, network) ADD then DEL serially, then again `CONCURRENCY` at a time.
pub async fn floor(world: &World, pods: &[Pod]) -> Result<Floor> {
    let invoker = world.invoker();
    let mut attachments = Vec::new();
    for pod in pods {
        for network in NETWORKS {
            attachments.push(world.attachment(pod, network)?);
        }
    }
    let (mut add_sum, mut del_sum) = (Duration::ZERO, Duration::ZERO);
    for a in &attachments {
        let start = Instant::now();
        invoker.add(a).await.context("floor: burst ADD")?;
        add_sum += start.elapsed();
    }
    for a in &attachments {
        let start = Instant::now();
        invoker.del(a).await.context("floor: burst DEL")?;
        del_sum += start.elapsed();
    }
    let start = Instant::now();
    let adds: Vec<_> = futures::stream::iter(attachments.iter().map(|a| invoker.add(a)))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let add_parallel = start.elapsed();
    adds.into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), Err)
        .context("floor: parallel burst ADD")?;
    let start = Instant::now();
    let dels: Vec<_> = futures::stream::iter(attachments.iter().map(|a| invoker.del(a)))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let del_parallel = start.elapsed();
    dels.into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), Err)
        .context("floor: parallel burst DEL")?;
    Ok(Floor {
        attachments: attachments.len(),
        add_sum_s: add_sum.as_secs_f64(),
        del_sum_s: del_sum.as_secs_f64(),
        add_parallel_s: add_parallel.as_secs_f64(),
        del_parallel_s: del_parallel.as_secs_f64(),
    })
}

/// One direction of one burst through podagent.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Converge {
    pub attachments: usize,
    pub seconds: f64,
    /// First patch sent → last patch answered: the API server taking the burst's patches,
    /// one after the other (part of `seconds`).
    pub patches_s: f64,
    /// podagent's CPU over the burst.
    pub cpu: CpuUse,
    /// Highest RSS sampled during the burst (every 20 ms), KiB.
    pub peak_rss_kib: u64,
    /// Plugin runs of the burst (from the wrapper's `ended.log`), and their summed run time.
    pub plugin_calls: usize,
    pub plugin_busy_s: f64,
    /// `plugin_busy_s ÷ seconds`: how many plugins ran at once on average.
    pub mean_running_plugins: f64,
    /// First patch sent → first plugin run started.
    pub first_call_s: f64,
}

/// Patches every pod to `annotation` (`None` removes it) and waits until the kernel has
/// reported every burst interface `change`d.
pub async fn converge(
    world: &World,
    agent: &Agent,
    pods: &[(usize, Pod)],
    events: &mut UnboundedReceiver<LinkEvent>,
    change: Change,
    ticks: u64,
) -> Result<Converge> {
    let annotation = match change {
        Change::Added => Some(
            serde_json::to_string(
                &NETWORKS
                    .iter()
                    .map(|n| serde_json::json!({"name": n}))
                    .collect::<Vec<_>>(),
            )
            .context("annotation json")?,
        ),
        Change::Removed => None,
    };
    let mut pending: HashSet<(usize, String)> = pods
        .iter()
        .flat_map(|(tag, _)| {
            NETWORKS
                .iter()
                .map(move |n| (*tag, podagent::annotation::ifname(n)))
        })
        .collect();
    let attachments = pending.len();
    let sampler = RssSampler::start(agent.pid());
    drain(events);
    let cpu_before = agent.cpu_time(ticks);
    let start = Instant::now();
    let since = epoch_now();
    let mut patched = start;
    for (_, pod) in pods {
        patched = world.set_networks(&pod.name, annotation.as_deref());
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = start;
    while !pending.is_empty() {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "burst did not converge within {WAIT:?}: {} of {attachments} left; log:\n{}",
                    pending.len(),
                    world.log_tail()
                )
            })?
            .ok_or_else(|| anyhow!("link watches ended"))?;
        if event.change == change && pending.remove(&(event.tag, event.name)) {
            last = event.at;
        }
    }
    let elapsed = last - start;
    let cpu = agent.cpu_time(ticks) - cpu_before;
    let peak_rss_kib = sampler.stop();
    let calls = burst_calls(world, since, change, attachments).await;
    let plugin_busy_s: f64 = calls.iter().map(|c| c.end - c.at).sum();
    let first_call_s = calls
        .iter()
        .map(|c| c.at - since)
        .fold(f64::INFINITY, f64::min);
    Ok(Converge {
        attachments,
        seconds: elapsed.as_secs_f64(),
        patches_s: (patched - start).as_secs_f64(),
        cpu: CpuUse::new(elapsed, cpu),
        peak_rss_kib,
        plugin_calls: calls.len(),
        plugin_busy_s,
        mean_running_plugins: plugin_busy_s / elapsed.as_secs_f64().max(1e-9),
        first_call_s,
    })
}

/// The burst's plugin runs: the wrapper logs a run in `ended.log` when it ends, which can be
/// just after the kernel reported the link, so this waits (briefly) for all of them.
async fn burst_calls(world: &World, since: f64, change: Change, expected: usize) -> Vec<Ended> {
    let command = match change {
        Change::Added => "ADD",
        Change::Removed => "DEL",
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let calls: Vec<Ended> = world
            .node
            .ended()
            .into_iter()
            .filter(|c| c.at >= since && c.command == command)
            .collect();
        if calls.len() >= expected || Instant::now() > deadline {
            return calls;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Samples a process's RSS on a thread until stopped; returns the highest value seen.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = std::thread::spawn({
            let (stop, peak) = (stop.clone(), peak.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = measure::memory(pid) {
                        peak.fetch_max(m.rss_kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Restart {
    pub pods: usize,
    pub attachments: usize,
    /// Process spawn → `READY=1`.
    pub ready_s: f64,
    /// Plugin invocations (started, from the wrapper's `calls.log`) from spawn until
    /// `settle_s` after READY.
    pub cni_invocations: usize,
    pub settle_s: f64,
}

/// Stops `agent` and starts a new one; returns it with its notify socket and the numbers.
pub async fn restart(
    world: &World,
    agent: Agent,
    pods: usize,
    attachments: usize,
    settle: Duration,
    metrics: bool,
) -> Result<(Agent, NotifySocket, Restart)> {
    agent.stop();
    let since = epoch_now();
    let notify = NotifySocket::bind();
    let agent = world.start_agent(&notify.path(), metrics)?;
    let ready = wait_ready(world, &notify, &agent)?;
    tokio::time::sleep(settle).await;
    let cni_invocations = world.node.calls().iter().filter(|c| c.at >= since).count();
    Ok((
        agent,
        notify,
        Restart {
            pods,
            attachments,
            ready_s: ready.as_secs_f64(),
            cni_invocations,
            settle_s: settle.as_secs_f64(),
        },
    ))
}

/// Spawn → `READY=1` of `agent`.
pub fn wait_ready(world: &World, notify: &NotifySocket, agent: &Agent) -> Result<Duration> {
    let ready = notify
        .wait_for(Duration::from_secs(60), |line| line == "READY=1")
        .ok_or_else(|| anyhow!("no READY=1 within 60 s; log:\n{}", world.log_tail()))?;
    Ok(ready.at.saturating_duration_since(agent.started))
}
