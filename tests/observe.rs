//! Observing podagent from outside: its `/metrics`, `/healthz` and `/readyz` scraped from the
//! real binary during real hot-plugs (real control plane, containerd, the Debian plugins behind
//! the logging wrapper), a listener that cannot bind ending startup, and `podagent status`
//! reading the real records and netns before and after a hand-made change.
//!
//! Every count is checked against what really happened, read from the wrapper's call log and
//! the pod's netns: one ADD is one attach sample, one plugin run is one plugin sample.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testkit::node::{Agent, Node, has_link, ipv4, sample};

const GREEN: &str = "net9f27410725ab";
const BLUE: &str = "net48d6215903df";
/// A link of podagent's name shape that no network of these tests maps to.
const STRAY: &str = "net000000000000";
const PODAGENT: &str = env!("CARGO_BIN_EXE_podagent");

/// The `/metrics` text once the agent is ready.
async fn scrape(host: &Node, agent: &Agent) -> String {
    host.eventually("podagent ready on /readyz", || {
        agent.get("/readyz").filter(|a| a.status == 200)
    })
    .await;
    let answer = agent.get("/metrics").expect("/metrics answers");
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// The first `/metrics` text for which `counted` holds.
async fn metrics_once(
    host: &Node,
    agent: &Agent,
    what: &str,
    counted: impl Fn(&str) -> bool,
) -> String {
    host.eventually(what, || {
        let text = agent.get("/metrics")?.body;
        counted(&text).then_some(text)
    })
    .await
}

/// `podagent_cni_plugin_duration_seconds_count` for one plugin, command and outcome (0 when
/// the series does not exist yet).
fn plugin_runs(text: &str, plugin: &str, command: &str, outcome: &str) -> f64 {
    sample(
        text,
        "podagent_cni_plugin_duration_seconds_count",
        &[
            ("plugin", plugin),
            ("command", command),
            ("outcome", outcome),
        ],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_a_hot_plug_did() {
    let host = Node::with_containerd(PODAGENT).await;
    let (_, sandbox) = host.pod("default", "web", None).await;
    let netns = host.netns(&sandbox).await;
    let config = host.agent_config();
    let address = config.metrics_listen.clone();
    let agent = host.start_agent_with(&config);
    let healthz = host
        .eventually("/healthz answers", || agent.get("/healthz"))
        .await;
    assert_eq!(healthz.status, 200, "{}", healthz.body);

    let before = scrape(&host, &agent).await;
    assert_eq!(
        sample(&before, "podagent_attach_duration_seconds_count", &[]),
        Some(0.0)
    );
    assert_eq!(sample(&before, "podagent_pods", &[]), Some(1.0), "{before}");
    assert!(
        sample(
            &before,
            "podagent_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )
        .is_some(),
        "{before}"
    );

    host.set_networks("default", "web", Some(r#"[{"name":"green"}]"#));
    host.eventually("green added", || has_link(&netns, GREEN).then_some(()))
        .await;
    // The attach is counted during the reconcile, the attachment once it has ended.
    let green_attached = [("network", "green"), ("phase", "attached")];
    let added = metrics_once(
        &host,
        &agent,
        "the attach and the attachment counted",
        |text| {
            sample(text, "podagent_attach_duration_seconds_count", &[]) == Some(1.0)
                && sample(text, "podagent_attachments", &green_attached) == Some(1.0)
        },
    )
    .await;
    // The node's primary is wrap-bridge (which runs host-local itself) and tuning: one run each.
    assert_eq!(host.count("ADD", "web"), 1);
    assert_eq!(
        plugin_runs(&added, "wrap-bridge", "ADD", "success"),
        1.0,
        "{added}"
    );
    assert_eq!(
        plugin_runs(&added, "tuning", "ADD", "success"),
        1.0,
        "{added}"
    );
    assert_eq!(plugin_runs(&added, "wrap-bridge", "DEL", "success"), 0.0);
    assert!(
        sample(
            &added,
            "podagent_reconciles_total",
            &[("outcome", "settled")]
        )
        .is_some_and(|n| n >= 1.0),
        "{added}"
    );

    host.set_networks("default", "web", None);
    host.eventually("green removed", || (!has_link(&netns, GREEN)).then_some(()))
        .await;
    let removed = metrics_once(
        &host,
        &agent,
        "the detach counted and the attachment gone",
        |text| {
            sample(text, "podagent_detach_duration_seconds_count", &[]) == Some(1.0)
                && sample(text, "podagent_attachments", &[("network", "green")]).is_none()
        },
    )
    .await;
    assert_eq!(host.count("DEL", "web"), 1);
    assert_eq!(
        plugin_runs(&removed, "wrap-bridge", "DEL", "success"),
        1.0,
        "{removed}"
    );
    assert_eq!(
        plugin_runs(&removed, "tuning", "DEL", "success"),
        1.0,
        "{removed}"
    );
    assert_eq!(
        sample(&removed, "podagent_attach_duration_seconds_count", &[]),
        Some(1.0),
        "no second attach"
    );

    // A plugin that fails: each failed run is one error sample, and the pod is in backoff.
    host.set_switch("fail-pods", Some("web\n"));
    host.set_networks("default", "web", Some(r#"[{"name":"green"}]"#));
    host.eventually("two failed ADDs", || {
        (host.count("ADD", "web") >= 3).then_some(())
    })
    .await;
    // Each failed reconcile is one failed ADD run, counted once the reconcile has ended.
    let failing = metrics_once(
        &host,
        &agent,
        "the failures counted as the plugin log has them",
        |text| {
            let failed = (host.count("ADD", "web") - 1) as f64;
            plugin_runs(text, "wrap-bridge", "ADD", "error") == failed
                && sample(text, "podagent_reconciles_total", &[("outcome", "retry")])
                    == Some(failed)
                && sample(text, "podagent_pods_in_backoff", &[]) == Some(1.0)
        },
    )
    .await;
    assert!(
        sample(&failing, "podagent_longest_backoff_seconds", &[]).is_some_and(|s| s > 0.0),
        "{failing}"
    );
    assert_eq!(
        sample(&failing, "podagent_attach_duration_seconds_count", &[]),
        Some(1.0),
        "a failed ADD is no attach"
    );

    // Fixed: the next retry attaches, and the backoff is over.
    host.set_switch("fail-pods", None);
    host.eventually("green added after the fix", || {
        has_link(&netns, GREEN).then_some(())
    })
    .await;
    let fixed = metrics_once(
        &host,
        &agent,
        "the second attach counted and the backoff over",
        |text| {
            sample(text, "podagent_attach_duration_seconds_count", &[]) == Some(2.0)
                && sample(text, "podagent_pods_in_backoff", &[]) == Some(0.0)
        },
    )
    .await;
    let sum = sample(&fixed, "podagent_attach_duration_seconds_sum", &[]).unwrap_or(0.0);
    assert!(
        sum > 0.5,
        "the retried attach counts its backoff too: sum {sum} s"
    );
    assert_eq!(agent.get("/nowhere").map(|a| a.status), Some(404));
    // Garbage and other methods are refused without hurting the listener.
    for junk in [
        "POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc".to_owned(),
        "\u{0}\u{1}GARBAGE\r\n\r\n".to_owned(),
        format!("GET /{} HTTP/1.0\r\n\r\n", "a".repeat(100_000)),
    ] {
        if let Ok(mut stream) = std::net::TcpStream::connect(&address) {
            use std::io::{Read, Write};
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.write_all(junk.as_bytes());
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
    assert_eq!(agent.get("/healthz").map(|a| a.status), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_port_fails_startup_naming_the_key() {
    let host = Node::with_containerd(PODAGENT).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let address = taken.local_addr().expect("address").to_string();
    let mut config = host.agent_config();
    config.metrics_listen.clone_from(&address);
    let mut agent = host.start_agent_with(&config);
    let status = agent.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", host.log());
    let log = host.log();
    assert!(
        log.contains(&format!(
            "cannot listen on {address} (key `metrics.listen`)"
        )) && log.contains("in use"),
        "{log}"
    );
}

/// `podagent status` with the node's config file and `args`: exit code and stdout.
fn status(host: &Node, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(PODAGENT)
        .arg("status")
        .arg("--config")
        .arg(host.path("podagent.toml"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("podagent status runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.is_empty() || out.status.code() == Some(2),
        "{stderr}"
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn in_netns(netns: &Path, args: &[&str]) {
    let done = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .status()
        .expect("nsenter runs");
    assert!(done.success(), "{args:?} in {}", netns.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_what_is_held_and_the_drift_a_hand_made_change_caused() {
    let host = Node::with_containerd(PODAGENT).await;
    let (uid, sandbox) = host
        .pod(
            "default",
            "web",
            Some(r#"[{"name":"green"},{"name":"blue"}]"#),
        )
        .await;
    let netns = host.netns(&sandbox).await;
    let agent = host.start_agent();
    let green_ip = host
        .eventually("green with an address", || ipv4(&netns, GREEN))
        .await;
    host.eventually("blue added", || has_link(&netns, BLUE).then_some(()))
        .await;
    host.eventually("both recorded as attached", || {
        let record = host.record(&uid)?;
        let attachments = record["record"]["attachments"].as_object()?.clone();
        attachments
            .values()
            .all(|a| a["phase"] == "Attached")
            .then_some(())
            .filter(|()| attachments.len() == 2)
    })
    .await;
    let pod = format!("{}/web", host.ns("default"));

    let (code, table) = status(&host, &[]);
    assert_eq!(code, Some(0), "{table}");
    let green_row = table
        .lines()
        .find(|l| l.contains(GREEN))
        .unwrap_or_else(|| panic!("a line for green: {table}"));
    for shown in [pod.as_str(), "green", "attached", green_ip.as_str()] {
        assert!(green_row.contains(shown), "{shown:?} in {green_row:?}");
    }
    assert!(table.ends_with("no drift\n"), "{table}");

    let (code, json) = status(&host, &["-o", "json", "--pod", &pod]);
    assert_eq!(code, Some(0));
    let report: Value = serde_json::from_str(&json).expect("JSON report");
    assert_eq!(report["drift"], 0);
    assert_eq!(report["pods"][0]["uid"], uid.as_str());
    assert_eq!(
        report["pods"][0]["interfaces"].as_array().map(Vec::len),
        Some(2)
    );
    let (code, other) = status(&host, &["--pod", "nowhere/nothing"]);
    assert_eq!(code, Some(0));
    assert!(
        other.contains("no record of pod nowhere/nothing"),
        "{other}"
    );

    // By hand, with the agent stopped so nothing repairs it: green deleted, a stray link
    // of podagent's name shape added.
    agent.stop();
    in_netns(&netns, &["ip", "link", "del", GREEN]);
    in_netns(
        &netns,
        &[
            "ip",
            "link",
            "add",
            STRAY,
            "type",
            "veth",
            "peer",
            "name",
            "straypeer",
        ],
    );
    let (code, table) = status(&host, &[]);
    assert_eq!(code, Some(1), "{table}");
    let row = |ifname: &str| {
        table
            .lines()
            .find(|l| l.contains(ifname))
            .unwrap_or_else(|| panic!("a line for {ifname}: {table}"))
            .to_owned()
    };
    assert!(row(GREEN).ends_with("missing"), "{table}");
    assert!(row(STRAY).ends_with("unrecorded"), "{table}");
    assert!(row(BLUE).ends_with('-'), "blue as recorded: {table}");
    assert!(table.contains("2 drifted"), "{table}");
    let (_, json) = status(&host, &["-o", "json"]);
    let report: Value = serde_json::from_str(&json).expect("JSON report");
    assert_eq!(report["drift"], 2);

    // Not root: told why, exit 2.
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            PODAGENT,
            "status",
        ])
        .output()
        .expect("setpriv runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs root to enter network namespaces"),
        "{out:?}"
    );
}
