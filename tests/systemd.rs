//! The real `podagent run` under a stand-in systemd: the notify protocol (readiness, status,
//! watchdog driven by liveness, stopping) and native journald logging, against kube-sim and a
//! private containerd.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use testkit::host::Containerd;
use testkit::journal::{Journald, NotifySocket};
use testkit::kube_sim::{KubeSim, Options};

const BINARY: &str = env!("CARGO_BIN_EXE_podagent");
/// The watchdog timeout the tests announce: pings every second, watches renewed every second,
/// a loop counts as stalled after three seconds of silence.
const WATCHDOG_USEC: &str = "2000000";
const GENEROUS: Duration = Duration::from_secs(30);

/// A running `podagent run`; killed (by PID) if a test ends without stopping it.
struct Agent {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(
        node: &str,
        sim: &KubeSim,
        containerd: &Containerd,
        log_level: &str,
        env: &[(&str, String)],
    ) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("podagent.toml");
        std::fs::write(
            &config,
            format!(
                "node_name = \"{node}\"\nstate_dir = \"{}\"\nlog_level = \"{log_level}\"\n\
                 shutdown_grace = \"5s\"\n[kube]\nkubeconfig = \"{}\"\n\
                 [runtime]\nkind = \"containerd\"\nendpoint = \"{}\"\n\
                 [cni]\nconf_dir = \"{}\"\nbin_dirs = [\"/usr/lib/cni\"]\n",
                dir.path().join("state").display(),
                sim.kubeconfig_path().display(),
                containerd.socket().display(),
                containerd.dir().join("net.d").display(),
            ),
        )
        .expect("write config");
        let mut command = tokio::process::Command::new(BINARY);
        command
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (name, _) in std::env::vars() {
            if name.starts_with("PODAGENT_")
                || [
                    "RUST_LOG",
                    "NOTIFY_SOCKET",
                    "WATCHDOG_USEC",
                    "WATCHDOG_PID",
                    "JOURNAL_STREAM",
                ]
                .contains(&name.as_str())
            {
                command.env_remove(name);
            }
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {BINARY}: {err}"));
        Agent { child, _dir: dir }
    }

    fn pid(&self) -> i32 {
        self.child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .expect("agent is running")
    }

    /// SIGTERM, then the exit code.
    async fn terminate(mut self) -> Option<i32> {
        kill(Pid::from_raw(self.pid()), Signal::SIGTERM).expect("signal the agent");
        let status = tokio::time::timeout(GENEROUS, self.child.wait())
            .await
            .expect("agent exits after SIGTERM")
            .expect("wait for the agent");
        status.code()
    }
}

async fn sim_with_pod(node: &str) -> KubeSim {
    let sim = KubeSim::start(Options {
        // Quiet clusters still deliver bookmarks; make them frequent enough for a 2 s watchdog.
        bookmark_interval: Duration::from_millis(250),
        ..Options::default()
    })
    .await
    .expect("kube-sim starts");
    sim.create(pod(
        node,
        "web",
        "[{\"name\":\"green\"},{\"name\":\"eth\",\"isPrimary\":true}]",
    ))
    .expect("seed pod");
    sim
}

fn pod(node: &str, name: &str, networks: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "team", "uid": format!("uid-{name}"),
                     "annotations": {"networks": networks}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running"}
    })
}

/// Waits without blocking the runtime that serves kube-sim.
async fn wait_for(
    notify: &NotifySocket,
    timeout: Duration,
    matches: impl Fn(&str) -> bool,
) -> Option<testkit::journal::Notification> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = notify.received().into_iter().find(|n| matches(&n.line)) {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lines(notify: &NotifySocket) -> Vec<String> {
    notify.received().into_iter().map(|n| n.line).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_protocol_ready_after_list_watchdog_from_liveness_stopping_on_sigterm() {
    testkit::prereq::require_path(Path::new("/usr/lib/cni"), "containernetworking-plugins");
    let node = "node-notify";
    let sim = sim_with_pod(node).await;
    let containerd = Containerd::start().await;
    let notify = NotifySocket::bind();
    let latency = Duration::from_millis(1500);
    sim.faults().set_latency(latency);

    let agent = Agent::start(
        node,
        &sim,
        &containerd,
        "info",
        &[
            ("NOTIFY_SOCKET", notify.path().display().to_string()),
            ("WATCHDOG_USEC", WATCHDOG_USEC.to_string()),
        ],
    );

    // READY=1 only after the (slow) pod list answered: at least one latency after
    // "connecting", and never before it.
    let connecting = wait_for(&notify, GENEROUS, |l| {
        l.starts_with("STATUS=connecting to http")
    })
    .await
    .unwrap_or_else(|| panic!("no connecting status: {:?}", lines(&notify)));
    let ready = wait_for(&notify, GENEROUS, |l| l == "READY=1")
        .await
        .unwrap_or_else(|| panic!("never ready: {:?}", lines(&notify)));
    assert!(
        ready.at.duration_since(connecting.at) >= latency,
        "READY=1 came {:?} after connecting, before the list could have answered",
        ready.at.duration_since(connecting.at)
    );
    sim.faults().set_latency(Duration::ZERO);
    let status = wait_for(&notify, GENEROUS, |l| l.starts_with("STATUS=watching"))
        .await
        .expect("watching status");
    assert_eq!(
        status.line,
        format!("STATUS=watching 1 pods on {node}, 1 attachments"),
        "the primary entry is not podagent's"
    );

    // A new pod shows up in the status: the watch feeds the cache.
    sim.create(pod(node, "db", "[{\"name\":\"red\"},{\"name\":\"blue\"}]"))
        .expect("create pod");
    wait_for(&notify, GENEROUS, |l| {
        l == format!("STATUS=watching 2 pods on {node}, 3 attachments")
    })
    .await
    .unwrap_or_else(|| panic!("status did not follow the watch: {:?}", lines(&notify)));

    // The watchdog keeps pinging while the watch delivers (bookmarks, on a quiet cluster).
    let since = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pings = notify.count_since("WATCHDOG=1", since);
    assert!(pings >= 3, "only {pings} pings in 4 s with a 1 s interval");

    // A hung watch (connected, on time, but delivering nothing) stops the pings.
    sim.faults().stall_watches(true);
    let stalled = wait_for(&notify, GENEROUS, |l| {
        l.starts_with("STATUS=stalled: pod watch")
    })
    .await
    .unwrap_or_else(|| panic!("stall not detected: {:?}", lines(&notify)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        notify.count_since("WATCHDOG=1", stalled.at),
        0,
        "pings continued after the stall was reported"
    );

    // Once the watch delivers again, so does the watchdog.
    sim.faults().stall_watches(false);
    let resumed = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        notify.count_since("WATCHDOG=1", resumed) >= 1,
        "pings did not resume"
    );

    let stop_sent = Instant::now();
    assert_eq!(agent.terminate().await, Some(0), "clean exit on SIGTERM");
    assert!(
        notify.count_since("STOPPING=1", stop_sent) == 1,
        "no STOPPING=1: {:?}",
        lines(&notify)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_go_to_journald_with_structured_fields() {
    testkit::prereq::require_path(Path::new("/usr/lib/cni"), "containernetworking-plugins");
    let journald = Journald::ensure();
    let node = "node-journal";
    let sim = sim_with_pod(node).await;
    let containerd = Containerd::start().await;
    let agent = Agent::start(node, &sim, &containerd, "info,podagent=debug", &[]);
    let pid = agent.pid();
    let matches = |extra: &[&str]| -> Vec<String> {
        let mut all = vec![
            "SYSLOG_IDENTIFIER=podagent".to_string(),
            format!("_PID={pid}"),
        ];
        all.extend(extra.iter().map(|s| s.to_string()));
        all
    };

    let reading = matches(&["MESSAGE=ready"]);
    let ready = {
        let journald = journald.clone();
        tokio::task::spawn_blocking(move || {
            journald.wait_for(&reading, GENEROUS, |e| !e.is_empty())
        })
        .await
        .expect("journal reader")
    };
    assert_eq!(ready.len(), 1, "one ready entry: {ready:?}");
    assert_eq!(ready[0]["NODE"], node, "{:?}", ready[0]);
    assert_eq!(ready[0]["PODS"], "1", "{:?}", ready[0]);
    assert_eq!(ready[0]["PRIORITY"], "6", "info");

    sim.create(pod(node, "cache", "[]")).expect("create pod");
    let changed = matches(&["POD=team/cache"]);
    let entries = {
        let journald = journald.clone();
        tokio::task::spawn_blocking(move || {
            journald.wait_for(&changed, GENEROUS, |e| !e.is_empty())
        })
        .await
        .expect("journal reader")
    };
    assert!(!entries.is_empty(), "no entry with POD=team/cache");
    assert_eq!(entries[0]["NAMESPACE"], "team", "{:?}", entries[0]);
    assert_eq!(entries[0]["MESSAGE"], "pod changed");

    assert_eq!(agent.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_container_runtime_and_sigterm_during_startup_is_clean() {
    testkit::prereq::require_path(Path::new("/usr/lib/cni"), "containernetworking-plugins");
    let node = "node-runtime";
    let sim = sim_with_pod(node).await;
    let mut containerd = Containerd::start().await;
    containerd.stop_daemon().await;
    let notify = NotifySocket::bind();
    let env = [("NOTIFY_SOCKET", notify.path().display().to_string())];
    let agent = Agent::start(node, &sim, &containerd, "info", &env);

    let socket = containerd.socket().display().to_string();
    wait_for(&notify, GENEROUS, |l| {
        l.starts_with(&format!("STATUS=waiting for container runtime at {socket}"))
    })
    .await
    .unwrap_or_else(|| panic!("no waiting status: {:?}", lines(&notify)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !lines(&notify).contains(&"READY=1".to_string()),
        "ready without a runtime: {:?}",
        lines(&notify)
    );
    containerd.start_daemon().await;
    wait_for(&notify, GENEROUS, |l| l == "READY=1")
        .await
        .unwrap_or_else(|| panic!("not ready once the runtime answered: {:?}", lines(&notify)));
    assert_eq!(agent.terminate().await, Some(0));

    // Stopped before it could get ready: still STOPPING=1 and a clean exit.
    containerd.stop_daemon().await;
    let notify = NotifySocket::bind();
    let env = [("NOTIFY_SOCKET", notify.path().display().to_string())];
    let agent = Agent::start(node, &sim, &containerd, "info", &env);
    wait_for(&notify, GENEROUS, |l| {
        l.starts_with("STATUS=waiting for container runtime")
    })
    .await
    .unwrap_or_else(|| panic!("no waiting status: {:?}", lines(&notify)));
    assert_eq!(agent.terminate().await, Some(0));
    let seen = lines(&notify);
    assert!(seen.contains(&"STOPPING=1".to_string()), "{seen:?}");
    assert!(!seen.contains(&"READY=1".to_string()), "{seen:?}");
}
