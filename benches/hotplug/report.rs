//! The results as a person and a machine read them: `results.json` (everything measured) and
//! `results.md` (one table: measured, floor, ratio or overhead, the issue's target, met or not).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::Results;
use crate::burst::Converge;
use crate::world::CONCURRENCY;

/// Where the numbers were taken.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub load_average_at_end: String,
}

impl Machine {
    pub fn here() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        let kernel = Command::new("uname")
            .arg("-r")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Machine {
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            kernel,
            load_average_at_end: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

pub fn write(out: &Path, results: &Results) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(results).context("serialise results")?,
    )
    .context("write results.json")?;
    std::fs::write(out.join("results.md"), markdown(results)).context("write results.md")?;
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

pub fn markdown(r: &Results) -> String {
    let l = &r.latency;
    let w = &l.floor_watch.delivery;
    let f = &r.burst_floor;
    let conc = CONCURRENCY as f64;
    let floor_add = f.add_sum_s / conc;
    let floor_del = f.del_sum_s / conc;
    let slow = r.slow_plugin_ms as f64 / 1000.0 * f.attachments as f64;
    let floor_slow_add = (f.add_sum_s + slow) / conc;
    let floor_slow_del = (f.del_sum_s + slow) / conc;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{} run ({} latency trials, {} burst pods × 4 networks = {} attachments, {} pods for the \
         footprint, {} failing pods over {} s), podagent concurrency {CONCURRENCY}, against {}.\n",
        if r.sizes.quick {
            "**Quick (smoke)**"
        } else {
            "Full"
        },
        r.sizes.latency_trials,
        r.sizes.burst_pods,
        f.attachments,
        r.idle_many_pods.pods,
        r.failure.failing_pods,
        r.sizes.failure_window_s,
        r.api_server,
    );
    md.push_str("| Scenario | Measured | Floor (same run) | Overhead / ratio | Target | Met |\n");
    md.push_str("|---|---|---|---|---|---|\n");
    let mut row = |s: &str, m: String, fl: String, o: String, t: &str, ok: Option<bool>| {
        let _ = writeln!(
            md,
            "| {s} | {m} | {fl} | {o} | {t} | {} |",
            ok.map_or("–", met)
        );
    };
    let floor =
        |cni: f64, watch: f64| format!("{:.1} ms (CNI {cni:.1} + watch {watch:.1})", cni + watch);
    row(
        "Attach latency p50",
        format!("{:.1} ms", l.attach.p50_ms),
        floor(l.floor_cni.attach.p50_ms, w.p50_ms),
        format!("{:+.1} ms", l.overhead_attach_p50_ms),
        "overhead ≤ 5 ms",
        Some(l.overhead_attach_p50_ms <= 5.0),
    );
    row(
        "Attach latency p95",
        format!("{:.1} ms", l.attach.p95_ms),
        floor(l.floor_cni.attach.p95_ms, w.p95_ms),
        format!(
            "{:+.1} ms",
            l.attach.p95_ms - l.floor_cni.attach.p95_ms - w.p95_ms
        ),
        "",
        None,
    );
    row(
        "Attach latency p99",
        format!("{:.1} ms", l.attach.p99_ms),
        floor(l.floor_cni.attach.p99_ms, w.p99_ms),
        format!("{:+.1} ms", l.overhead_attach_p99_ms),
        "overhead ≤ 25 ms",
        Some(l.overhead_attach_p99_ms <= 25.0),
    );
    row(
        "Detach latency p50 / p99",
        format!("{:.1} / {:.1} ms", l.detach.p50_ms, l.detach.p99_ms),
        format!(
            "{:.1} / {:.1} ms",
            l.floor_cni.detach.p50_ms + w.p50_ms,
            l.floor_cni.detach.p99_ms + w.p99_ms
        ),
        format!(
            "{:+.1} / {:+.1} ms",
            l.overhead_detach_p50_ms, l.overhead_detach_p99_ms
        ),
        "",
        None,
    );
    let mut burst = |s: &str,
                     c: &Converge,
                     fl: f64,
                     parallel: Option<f64>,
                     t: &str,
                     target: bool| {
        let ratio = c.seconds / fl;
        row(
            s,
            format!(
                "{:.2} s ({:.1} plugins running on average; first plugin {:.0} ms after the first \
                 patch; the API server took {:.2} s to answer all patches)",
                c.seconds,
                c.mean_running_plugins,
                c.first_call_s * 1000.0,
                c.patches_s
            ),
            match parallel {
                Some(p) => format!("{fl:.2} s (direct at concurrency {CONCURRENCY}: {p:.2} s)"),
                None => format!("{fl:.2} s (computed)"),
            },
            format!("{ratio:.2} ×"),
            t,
            target.then_some(ratio <= 1.5),
        );
    };
    burst(
        &format!("Burst add, {} attachments", f.attachments),
        &r.burst_add,
        floor_add,
        Some(f.add_parallel_s),
        "≤ 1.5 × floor",
        true,
    );
    burst(
        &format!("Burst remove, {} attachments", f.attachments),
        &r.burst_del,
        floor_del,
        Some(f.del_parallel_s),
        "≤ 1.5 × floor",
        true,
    );
    burst(
        &format!("Burst add, plugin +{} ms", r.slow_plugin_ms),
        &r.slow_add,
        floor_slow_add,
        None,
        "(parallelism)",
        false,
    );
    burst(
        &format!("Burst remove, plugin +{} ms", r.slow_plugin_ms),
        &r.slow_del,
        floor_slow_del,
        None,
        "(parallelism)",
        false,
    );
    row(
        &format!(
            "Restart with {} pods / {} attachments: spawn → READY",
            r.restart.pods, r.restart.attachments
        ),
        format!("{:.3} s", r.restart.ready_s),
        String::new(),
        String::new(),
        "≤ 1 s",
        Some(r.restart.ready_s <= 1.0),
    );
    row(
        "Restart: CNI invocations",
        r.restart.cni_invocations.to_string(),
        String::new(),
        String::new(),
        "0",
        Some(r.restart.cni_invocations == 0),
    );
    let mut idle = |s: &str, i: &crate::footprint::Idle, rss_target: Option<f64>| {
        row(
            &format!("{s}: RSS ({} pods, {} attachments)", i.pods, i.attachments),
            format!(
                "{:.1} MiB (peak {:.1}; heap and stacks {:.1}, mapped files {:.1})",
                mib(i.memory.rss_kib),
                mib(i.memory.hwm_kib),
                mib(i.memory.rss_anon_kib),
                mib(i.memory.rss_file_kib)
            ),
            String::new(),
            String::new(),
            &rss_target.map_or(String::new(), |t| format!("≤ {t:.0} MiB")),
            rss_target.map(|t| mib(i.memory.rss_kib) <= t),
        );
        row(
            &format!("{s}: CPU over {:.0} s", i.cpu.window_s),
            format!("{:.3} % of a core", i.cpu.percent_of_core),
            String::new(),
            String::new(),
            "< 0.5 %",
            Some(i.cpu.percent_of_core < 0.5),
        );
    };
    let many_target = (r.idle_many_pods.pods >= 1000).then_some(40.0);
    idle("Idle after the burst", &r.idle_after_burst, None);
    idle("Idle after a restart", &r.idle_after_restart, Some(20.0));
    idle("Metrics listener off, idle", &r.listener.off, Some(20.0));
    idle(
        &format!("Metrics listener on, {} scrapes", r.listener.scrapes),
        &r.listener.on,
        Some(20.0),
    );
    idle("Idle, many pods", &r.idle_many_pods, many_target);
    row(
        "Metrics listener: RSS on / off",
        format!(
            "{:.1} / {:.1} MiB ({} B exposition)",
            mib(r.listener.on.memory.rss_kib),
            mib(r.listener.off.memory.rss_kib),
            r.listener.exposition_bytes
        ),
        String::new(),
        format!(
            "{:.2}×",
            r.listener.on.memory.rss_kib as f64 / r.listener.off.memory.rss_kib.max(1) as f64
        ),
        "",
        None,
    );
    row(
        "During the burst add: CPU, peak RSS",
        format!(
            "{:.0} ms CPU ({:.0} % of a core), {:.1} MiB",
            r.burst_add.cpu.cpu_ms,
            r.burst_add.cpu.percent_of_core,
            mib(r.burst_add.peak_rss_kib)
        ),
        String::new(),
        String::new(),
        "",
        None,
    );
    row(
        &format!(
            "Failure: {} pods failing, CPU over {:.0} s",
            r.failure.failing_pods, r.failure.cpu.window_s
        ),
        format!("{:.3} % of a core", r.failure.cpu.percent_of_core),
        String::new(),
        String::new(),
        "near idle (< 0.5 %)",
        Some(r.failure.cpu.percent_of_core < 0.5),
    );
    row(
        "Failure: retry spacing p50 / max",
        format!(
            "{:.2} / {:.2} s ({:?} attempts per pod)",
            r.failure.retry_spacing.p50_ms / 1000.0,
            r.failure.retry_spacing.max_ms / 1000.0,
            r.failure.attempts_per_pod
        ),
        String::new(),
        String::new(),
        "backs off",
        None,
    );
    let _ = writeln!(
        md,
        "\nSetup (not podagent's cost): control plane and node in {:.1} s; {} pods with \
         containerd sandboxes in {:.1} s and {} without in {:.1} s, each created through the API \
         server and reported Running through pods/status. podagent startup (spawn → READY, {} \
         pods, nothing attached): {:.3} s. Plugin chain run directly: ADD p50 {:.1} ms, DEL p50 \
         {:.1} ms. Watch delivery alone (patch answered → event read, kube-rs on the real API \
         server): p50 {:.2} ms, p99 {:.2} ms, {} of {} events read before the patch's answer; \
         the patch call itself p50 {:.2} ms, p99 {:.2} ms.",
        r.setup.node_s,
        r.setup.sandboxes,
        r.setup.sandboxes_s,
        r.setup.plain_pods,
        r.setup.plain_pods_s,
        r.restart.pods,
        r.startup_ready_s,
        l.floor_cni.add_call.p50_ms,
        l.floor_cni.del_call.p50_ms,
        w.p50_ms,
        w.p99_ms,
        l.floor_watch.before_answer,
        w.n,
        l.floor_watch.patch_call.p50_ms,
        l.floor_watch.patch_call.p99_ms,
    );
    let steps = &r.attach_steps;
    let _ = writeln!(
        md,
        "\npodagent's own steps before a plugin runs, each timed alone on the latency pod (p50 / \
         p99): CRI sandbox lookup {:.2} / {:.2} ms, netns link dump {:.2} / {:.2} ms, durable \
         record write {:.2} / {:.2} ms.",
        steps.sandbox_lookup.p50_ms,
        steps.sandbox_lookup.p99_ms,
        steps.link_dump.p50_ms,
        steps.link_dump.p99_ms,
        steps.record_write.p50_ms,
        steps.record_write.p99_ms,
    );
    md
}
