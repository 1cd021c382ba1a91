//! Scenarios 4 and 5: what podagent costs the node when nothing happens, and when a plugin
//! keeps failing.
//!
//! Idle: memory (VmRSS, VmHWM) and CPU time (utime + stime) of the podagent process over a
//! window in which nothing changes. Failure: pods whose every ADD fails; podagent must back off
//! so its CPU stays near idle, and the spacing of its retries (read from the wrapper plugin's
//! `calls.log`, logged when each call starts) shows the backoff.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::FutureExt;

use anyhow::Result;
use serde::Serialize;

use crate::measure::{self, CpuUse, Memory, Summary};
use crate::world::{Agent, World, epoch_now};

/// Memory now and CPU over a window of an agent left alone.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Idle {
    pub pods: usize,
    pub attachments: usize,
    pub memory: Memory,
    pub cpu: CpuUse,
}

pub async fn idle(
    agent: &Agent,
    pods: usize,
    attachments: usize,
    window: Duration,
    ticks: u64,
) -> Result<Idle> {
    Ok(over_window(
        agent,
        pods,
        attachments,
        ticks,
        tokio::time::sleep(window).map(Ok),
        window,
    )
    .await?
    .0)
}

/// Memory after, and CPU during, `work`, which takes `window`.
async fn over_window<T>(
    agent: &Agent,
    pods: usize,
    attachments: usize,
    ticks: u64,
    work: impl Future<Output = Result<T>>,
    window: Duration,
) -> Result<(Idle, T)> {
    let before = agent.cpu_time(ticks);
    let done = work.await?;
    let cpu = agent.cpu_time(ticks) - before;
    let idle = Idle {
        pods,
        attachments,
        memory: measure::memory(agent.pid())?,
        cpu: CpuUse::new(window, cpu),
    };
    Ok((idle, done))
}

/// Idle with the metrics listener off, and with it on and scraped once a second (fifteen
/// times Prometheus' default rate), each right after a restart with the same pods.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Listener {
    pub off: Idle,
    pub on: Idle,
    pub scrapes: usize,
    /// The size of the last scrape's exposition.
    pub exposition_bytes: usize,
}

/// [`idle`] while `/metrics` is scraped every second; `off` is the same measure without the
/// listener.
pub async fn scraped(
    agent: &Agent,
    pods: usize,
    attachments: usize,
    window: Duration,
    ticks: u64,
    off: Idle,
) -> Result<Listener> {
    let scraping = async {
        let started = std::time::Instant::now();
        let (mut scrapes, mut exposition_bytes) = (0, 0);
        while started.elapsed() < window {
            let pause = Duration::from_secs(1).min(window.saturating_sub(started.elapsed()));
            tokio::time::sleep(pause).await;
            let answer = agent
                .process
                .get("/metrics")
                .filter(|a| a.status == 200)
                .ok_or_else(|| anyhow::anyhow!("/metrics did not answer 200"))?;
            scrapes += 1;
            exposition_bytes = answer.body.len();
        }
        Ok((scrapes, exposition_bytes))
    };
    let (on, (scrapes, exposition_bytes)) =
        over_window(agent, pods, attachments, ticks, scraping, window).await?;
    Ok(Listener {
        off,
        on,
        scrapes,
        exposition_bytes,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub failing_pods: usize,
    pub cpu: CpuUse,
    /// ADD attempts per failing pod within the window.
    pub attempts_per_pod: Vec<usize>,
    /// Time between consecutive ADD attempts of the same pod.
    pub retry_spacing: Summary,
    /// The spacings in order of attempt, for the first failing pod.
    pub first_pod_spacing_s: Vec<f64>,
}

/// Gives each of `pods` (real sandboxes, listed in the wrapper's `fail-pods`) network `green`,
/// then watches podagent for `window`.
pub async fn failure(
    world: &World,
    agent: &Agent,
    pods: &[String],
    window: Duration,
    ticks: u64,
) -> Result<Failure> {
    world
        .node
        .set_switch("fail-pods", Some(&(pods.join("\n") + "\n")));
    let since = epoch_now();
    let before = agent.cpu_time(ticks);
    for pod in pods {
        world.set_networks(pod, Some(r#"[{"name":"green"}]"#));
    }
    tokio::time::sleep(window).await;
    let cpu = agent.cpu_time(ticks) - before;
    let mut attempts: BTreeMap<&str, Vec<f64>> =
        pods.iter().map(|p| (p.as_str(), vec![])).collect();
    for call in world.node.calls() {
        if call.at >= since
            && call.command == "ADD"
            && let Some(times) = attempts.get_mut(call.pod.as_str())
        {
            times.push(call.at);
        }
    }
    let spacing =
        |times: &Vec<f64>| -> Vec<f64> { times.windows(2).map(|w| w[1] - w[0]).collect() };
    let all: Vec<Duration> = attempts
        .values()
        .flat_map(spacing)
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
        .collect();
    let first_pod_spacing_s = pods
        .first()
        .and_then(|p| attempts.get(p.as_str()))
        .map(spacing)
        .unwrap_or_default();
    for pod in pods {
        world.set_networks(pod, None);
    }
    world.node.set_switch("fail-pods", None);
    Ok(Failure {
        failing_pods: pods.len(),
        cpu: CpuUse::new(window, cpu),
        attempts_per_pod: attempts.values().map(Vec::len).collect(),
        retry_spacing: Summary::of(&all),
        first_pod_spacing_s,
    })
}
