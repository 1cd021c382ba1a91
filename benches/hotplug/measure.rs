//! Numbers out of samples and out of `/proc`: percentiles of latencies, the memory of one
//! process (the podagent under test) as the kernel accounts it, and CPU use over a window (the
//! CPU time itself is the node fixture's `Agent::cpu_ticks`).

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Summary {
    /// Nearest-rank percentiles; an empty set summarises to zeros with `n = 0`.
    pub fn of(samples: &[Duration]) -> Summary {
        let mut sorted: Vec<f64> = samples.iter().copied().map(ms).collect();
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let index = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[index.clamp(1, sorted.len()) - 1]
        };
        let n = sorted.len();
        Summary {
            n,
            p50_ms: rank(50.0),
            p95_ms: rank(95.0),
            p99_ms: rank(99.0),
            mean_ms: if n == 0 {
                0.0
            } else {
                sorted.iter().sum::<f64>() / n as f64
            },
            max_ms: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

/// Memory of a process from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// The part of the RSS that is heap and stacks, and the part that is mapped files (the
    /// binary's own pages, shared libraries).
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("{key} missing in {path}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        rss_anon_kib: field("RssAnon:")?,
        rss_file_kib: field("RssFile:")?,
    })
}

/// The kernel's clock tick rate for `/proc/<pid>/stat` times.
pub fn ticks_per_second() -> Result<u64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("run getconf CLK_TCK")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("parse getconf CLK_TCK")
}

/// CPU used by `pid` over a window, as a percentage of one core.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuUse {
    pub window_s: f64,
    pub cpu_ms: f64,
    pub percent_of_core: f64,
}

impl CpuUse {
    pub fn new(window: Duration, cpu: Duration) -> CpuUse {
        CpuUse {
            window_s: window.as_secs_f64(),
            cpu_ms: ms(cpu),
            percent_of_core: 100.0 * cpu.as_secs_f64() / window.as_secs_f64().max(1e-9),
        }
    }
}
