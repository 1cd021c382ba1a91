//! The real `podagent run` under a stand-in systemd: the notify protocol (readiness, status,
//! watchdog driven by liveness, stopping) and native journald logging, against the real control
//! plane (through the fault proxy where a test needs a slow or stalled API server) and a
//! private containerd, with podagent on its own service-account token.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::fault_proxy::FaultProxy;
use testkit::journal::{Journald, NotifySocket};
use testkit::node::{Agent, Node, has_link};

const BINARY: &str = env!("CARGO_BIN_EXE_podagent");
/// The watchdog timeout the tests announce: pings every 6 s, watches renewed every 5 s (the
/// shortest podagent makes: on a quiet cluster the watch's only item is the bookmark the server
/// sends 2 s before a watch's `timeoutSeconds` deadline), a loop counts as stalled after 15 s
/// of silence.
const WATCHDOG_USEC: &str = "12000000";
const PING_INTERVAL: Duration = Duration::from_secs(6);
const GENEROUS: Duration = Duration::from_secs(30);

/// A node whose cluster has one running pod of it, `team/web`, with one attachment of
/// podagent's (and a primary entry that is not).
async fn node_with_pod() -> Node {
    testkit::prereq::require_path(Path::new("/usr/lib/cni"), "containernetworking-plugins");
    let node = Node::with_containerd(BINARY).await;
    add_pod(
        &node,
        "web",
        "[{\"name\":\"green\"},{\"name\":\"eth\",\"isPrimary\":true}]",
    );
    node
}

/// A pod the kubelet reports Running (no sandbox: podagent's count does not need one).
fn add_pod(node: &Node, name: &str, networks: &str) {
    node.create_pod("team", name, json!({ "networks": networks }));
    node.report_running("team", name, "first", 0);
}

/// Starts podagent on `node` with `log_level` and `env`, through `proxy` when given.
fn start(
    node: &Node,
    log_level: &str,
    env: &[(&str, String)],
    proxy: Option<&FaultProxy>,
) -> Agent {
    let mut config = node.agent_config();
    config.log_level = log_level.to_string();
    config.shutdown_grace = "5s".to_string();
    config.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    if let Some(proxy) = proxy {
        node.through_proxy(&mut config, proxy);
    }
    node.start_agent_with(&config)
}

/// Waits for a notification, without blocking the test's runtime.
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
    let node = node_with_pod().await;
    let proxy = node.fault_proxy().await;
    let notify = NotifySocket::bind();
    let latency = Duration::from_millis(1500);
    proxy.faults().set_latency(latency);

    let agent = start(
        &node,
        "info",
        &[
            ("NOTIFY_SOCKET", notify.path().display().to_string()),
            ("WATCHDOG_USEC", WATCHDOG_USEC.to_string()),
        ],
        Some(&proxy),
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
    proxy.faults().set_latency(Duration::ZERO);
    let status = wait_for(&notify, GENEROUS, |l| l.starts_with("STATUS=watching"))
        .await
        .expect("watching status");
    assert_eq!(
        status.line,
        format!("STATUS=watching 1 pods on {}, 1 attachments", node.name()),
        "the primary entry is not podagent's"
    );

    // A new pod shows up in the status: the watch feeds the cache.
    add_pod(&node, "db", "[{\"name\":\"red\"},{\"name\":\"blue\"}]");
    wait_for(&notify, GENEROUS, |l| {
        l == format!("STATUS=watching 2 pods on {}, 3 attachments", node.name())
    })
    .await
    .unwrap_or_else(|| panic!("status did not follow the watch: {:?}", lines(&notify)));

    // The watchdog keeps pinging while the watch delivers (bookmarks, on a quiet cluster).
    let since = Instant::now();
    tokio::time::sleep(PING_INTERVAL * 2 + Duration::from_secs(2)).await;
    let pings = notify.count_since("WATCHDOG=1", since);
    assert!(
        pings >= 2,
        "only {pings} pings in 14 s with a 6 s interval: {:?}\npodagent log:\n{}",
        lines(&notify),
        node.log()
    );

    // A hung watch (connected, on time, but delivering nothing) stops the pings.
    proxy.faults().stall(true);
    let stalled = wait_for(&notify, GENEROUS, |l| {
        l.starts_with("STATUS=stalled: pod watch")
    })
    .await
    .unwrap_or_else(|| panic!("stall not detected: {:?}", lines(&notify)));
    tokio::time::sleep(PING_INTERVAL + Duration::from_secs(1)).await;
    assert_eq!(
        notify.count_since("WATCHDOG=1", stalled.at),
        0,
        "pings continued after the stall was reported"
    );

    // Once the watch delivers again, so does the watchdog.
    proxy.faults().stall(false);
    let resumed = Instant::now();
    while notify.count_since("WATCHDOG=1", resumed) == 0 {
        assert!(
            resumed.elapsed() < GENEROUS,
            "pings did not resume: {:?}\npodagent log:\n{}",
            lines(&notify),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stop_sent = Instant::now();
    agent.stop();
    assert!(
        notify.count_since("STOPPING=1", stop_sent) == 1,
        "no STOPPING=1: {:?}",
        lines(&notify)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_go_to_journald_with_structured_fields() {
    let journald = Journald::ensure();
    let node = node_with_pod().await;
    let agent = start(&node, "info,podagent=debug", &[], None);
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
    assert_eq!(ready[0]["NODE"], node.name(), "{:?}", ready[0]);
    assert_eq!(ready[0]["PODS"], "1", "{:?}", ready[0]);
    assert_eq!(ready[0]["PRIORITY"], "6", "info");

    add_pod(&node, "cache", "[]");
    let namespace = node.ns("team");
    let changed = matches(&[&format!("POD={namespace}/cache")]);
    let entries = {
        let journald = journald.clone();
        tokio::task::spawn_blocking(move || {
            journald.wait_for(&changed, GENEROUS, |e| !e.is_empty())
        })
        .await
        .expect("journal reader")
    };
    assert!(!entries.is_empty(), "no entry with POD={namespace}/cache");
    assert_eq!(entries[0]["NAMESPACE"], namespace, "{:?}", entries[0]);
    assert_eq!(entries[0]["MESSAGE"], "pod changed");

    agent.stop();
}

/// Every value of a journal field: `journalctl -o json` prints a field an entry carries more
/// than once (a span's field and its parent's) as an array.
fn field_values(entry: &Value, field: &str) -> Vec<String> {
    match &entry[field] {
        Value::String(value) => vec![value.clone()],
        Value::Array(values) => values
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_hot_plug_is_found_in_the_journal_by_its_pod_field_with_its_uid() {
    let journald = Journald::ensure();
    testkit::prereq::require_path(Path::new("/usr/lib/cni"), "containernetworking-plugins");
    let node = Node::with_containerd(BINARY).await;
    let (uid, sandbox) = node.pod("team", "web", None).await;
    let netns = node.netns(&sandbox).await;
    // Debug too: the controller's and the runtime's lines about the pod must match as well.
    let agent = start(&node, "info,podagent=debug", &[], None);

    node.set_networks("team", "web", Some(r#"[{"name":"green"}]"#));
    node.eventually("green plugged in", || {
        has_link(&netns, "net9f27410725ab").then_some(())
    })
    .await;

    // What an operator types: `journalctl SYSLOG_IDENTIFIER=podagent POD=<namespace>/web`.
    let namespace = node.ns("team");
    let by_pod = vec![
        "SYSLOG_IDENTIFIER=podagent".to_string(),
        format!("_PID={}", agent.pid()),
        format!("POD={namespace}/web"),
    ];
    let has_message = |entries: &[Value], message: &str| {
        entries
            .iter()
            .any(|e| field_values(e, "MESSAGE").iter().any(|m| m == message))
    };
    let entries = {
        let journald = journald.clone();
        tokio::task::spawn_blocking(move || {
            journald.wait_for(&by_pod, GENEROUS, |e| has_message(e, "interface added"))
        })
        .await
        .expect("journal reader")
    };
    for message in ["CNI ADD", "interface added"] {
        assert!(
            has_message(&entries, message),
            "no {message:?} line with POD={namespace}/web: {entries:?}"
        );
    }
    for entry in &entries {
        let uids = field_values(entry, "UID");
        assert!(
            !uids.is_empty() && uids.iter().all(|u| *u == uid),
            "a line of pod {namespace}/web without its UID {uid}: {entry:?}"
        );
    }

    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_container_runtime_and_sigterm_during_startup_is_clean() {
    let mut node = node_with_pod().await;
    node.containerd_mut().stop_daemon().await;
    let notify = NotifySocket::bind();
    let env = [("NOTIFY_SOCKET", notify.path().display().to_string())];
    let agent = start(&node, "info", &env, None);

    let socket = node.containerd().socket().display().to_string();
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
    node.containerd_mut().start_daemon().await;
    wait_for(&notify, GENEROUS, |l| l == "READY=1")
        .await
        .unwrap_or_else(|| panic!("not ready once the runtime answered: {:?}", lines(&notify)));
    agent.stop();

    // Stopped before it could get ready: still STOPPING=1 and a clean exit.
    node.containerd_mut().stop_daemon().await;
    let notify = NotifySocket::bind();
    let env = [("NOTIFY_SOCKET", notify.path().display().to_string())];
    let agent = start(&node, "info", &env, None);
    wait_for(&notify, GENEROUS, |l| {
        l.starts_with("STATUS=waiting for container runtime")
    })
    .await
    .unwrap_or_else(|| panic!("no waiting status: {:?}", lines(&notify)));
    agent.stop();
    let seen = lines(&notify);
    assert!(seen.contains(&"STOPPING=1".to_string()), "{seen:?}");
    assert!(!seen.contains(&"READY=1".to_string()), "{seen:?}");
}
