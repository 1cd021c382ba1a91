//! The hot-plug controller end to end: the real `podagent` binary against the real control
//! plane (on the credentials the shipped RBAC grants), a private containerd (or CRI-O, or
//! dockerd) with real pod sandboxes, and the Debian `bridge`, `host-local` and `tuning` plugins
//! as the node's primary CNI network (run as root).
//!
//! Each test has its own node (`testkit::node`): node name, namespaces, runtime, CNI config
//! dir, plugin dir, bridge, address range and state dir; the control plane is shared by the
//! tests of this binary. The bridge plugin is reached through the wrapper
//! `testkit/plugins/wrap-bridge`, which logs every invocation (so a test can count CNI calls
//! and their spacing) and can be made slow or failing per pod. Outcomes are read from the
//! pod's netns (`nsenter … ip`) and from the API (Events, the status annotation), never from
//! podagent's own logs.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::node::{Node, has_link as has, ipv4, links, mac};

const GREEN: &str = "net9f27410725ab";
const BLUE: &str = "net48d6215903df";
const RED: &str = "netbda9643ac660";
const PODAGENT: &str = env!("CARGO_BIN_EXE_podagent");

async fn containerd_node() -> Node {
    Node::with_containerd(PODAGENT).await
}

fn status_names(status: &Option<Value>) -> Vec<String> {
    status
        .as_ref()
        .and_then(Value::as_array)
        .map(|entries| {
            let mut names: Vec<String> = entries
                .iter()
                .filter_map(|e| e["name"].as_str().map(str::to_owned))
                .collect();
            names.sort();
            names
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_added_to_a_running_pod_appear_and_removed_ones_go() {
    let host = containerd_node().await;
    let (uid, sandbox) = host.pod("default", "web", None).await;
    let netns = host.netns(&sandbox).await;
    let _agent = host.start_agent();

    host.set_networks("default", "web", Some(r#"[{"name":"green"}]"#));
    let address = host
        .eventually("green with an address", || ipv4(&netns, GREEN))
        .await;
    assert!(address.starts_with(&host.address_prefix()), "{address}");
    assert!(has(&netns, "eth0"), "the pod's own interface is untouched");
    assert_eq!(
        host.netns(&sandbox).await,
        netns,
        "same sandbox: no restart"
    );
    let record = host.record(&uid).expect("record");
    assert_eq!(record["record"]["sandboxId"], sandbox);
    let added = host
        .eventually("an AddedInterface Event", || {
            host.events("default", &uid, "AddedInterface").pop()
        })
        .await;
    assert_eq!(added["type"], "Normal");
    assert_eq!(added["reportingController"], "podagent");
    assert_eq!(added["reportingInstance"], host.name());
    let note = added["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("green") && note.contains(GREEN) && note.contains(&address),
        "{note}"
    );
    let status = host
        .eventually("the status annotation", || host.status("default", "web"))
        .await;
    assert_eq!(status[0]["name"], "green");
    assert_eq!(status[0]["interface"], GREEN);
    assert_eq!(status[0]["ips"][0], address.as_str());

    host.set_networks("default", "web", None);
    host.eventually("green gone", || (!has(&netns, GREEN)).then_some(()))
        .await;
    host.eventually("a RemovedInterface Event", || {
        host.events("default", &uid, "RemovedInterface").pop()
    })
    .await;
    host.eventually("the status annotation removed", || {
        host.status("default", "web").is_none().then_some(())
    })
    .await;

    host.set_networks(
        "default",
        "web",
        Some(r#"[{"name":"red"},{"name":"blue"}]"#),
    );
    host.eventually("red and blue", || {
        (ipv4(&netns, RED).is_some() && ipv4(&netns, BLUE).is_some()).then_some(())
    })
    .await;
    host.set_networks("default", "web", Some(r#"[{"name":"blue"}]"#));
    host.eventually("red gone, blue kept", || {
        (!has(&netns, RED) && has(&netns, BLUE)).then_some(())
    })
    .await;
    host.eventually("status lists blue only", || {
        (status_names(&host.status("default", "web")) == ["blue"]).then_some(())
    })
    .await;
    assert_eq!(host.count("ADD", "web"), 3, "{:?}", host.calls());
    assert_eq!(host.count("DEL", "web"), 2, "{:?}", host.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_pod_name_in_two_namespaces_is_independent() {
    let host = containerd_node().await;
    let (uid_a, sandbox_a) = host
        .pod("team-a", "web", Some(r#"[{"name":"green"}]"#))
        .await;
    let (uid_b, sandbox_b) = host
        .pod("team-b", "web", Some(r#"[{"name":"blue"}]"#))
        .await;
    let (netns_a, netns_b) = (host.netns(&sandbox_a).await, host.netns(&sandbox_b).await);
    let _agent = host.start_agent();

    host.eventually("green in a, blue in b", || {
        (has(&netns_a, GREEN) && has(&netns_b, BLUE)).then_some(())
    })
    .await;
    assert!(!has(&netns_a, BLUE) && !has(&netns_b, GREEN));
    assert!(host.record(&uid_a).is_some() && host.record(&uid_b).is_some());

    host.set_networks("team-a", "web", None);
    host.eventually("green gone from a", || {
        (!has(&netns_a, GREEN)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(has(&netns_b, BLUE), "b is untouched");
    assert_eq!(status_names(&host.status("team-b", "web")), ["blue"]);
    assert_eq!(host.count("DEL", "web"), 1, "{:?}", host.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_mac_is_applied_and_changing_it_replugs() {
    let host = containerd_node().await;
    let (_, sandbox) = host
        .pod(
            "default",
            "mac",
            Some(r#"[{"name":"green","ifMac":"02:00:00:00:aa:01"}]"#),
        )
        .await;
    let netns = host.netns(&sandbox).await;
    let _agent = host.start_agent();

    host.eventually("green with the first MAC", || {
        (mac(&netns, GREEN).as_deref() == Some("02:00:00:00:aa:01")).then_some(())
    })
    .await;
    host.set_networks(
        "default",
        "mac",
        Some(r#"[{"name":"green","ifMac":"02:00:00:00:aa:02"}]"#),
    );
    host.eventually("green re-plugged with the second MAC", || {
        (mac(&netns, GREEN).as_deref() == Some("02:00:00:00:aa:02")).then_some(())
    })
    .await;
    let commands: Vec<String> = host.calls().into_iter().map(|c| c.command).collect();
    assert_eq!(commands, ["ADD", "DEL", "ADD"]);
    host.eventually("status shows the new MAC", || {
        let status = host.status("default", "mac")?;
        (status[0]["mac"] == "02:00:00:00:aa:02").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_annotations_warn_and_change_nothing_until_fixed() {
    let host = containerd_node().await;
    let (uid, sandbox) = host
        .pod("default", "typo", Some(r#"[{"name":"green"}]"#))
        .await;
    let netns = host.netns(&sandbox).await;
    let _agent = host.start_agent();
    host.eventually("green", || has(&netns, GREEN).then_some(()))
        .await;

    let bad = [
        r#"[{"name":"green"}"#,
        r#"[{"name":"green"},{"name":"green"}]"#,
        r#"[{"name":"green","ifMac":"01:00:5e:00:00:01"}]"#,
    ];
    for (i, value) in bad.iter().enumerate() {
        host.set_networks("default", "typo", Some(value));
        host.eventually("an InvalidNetworksAnnotation Event", || {
            let events = host.events("default", &uid, "InvalidNetworksAnnotation");
            (events.len() == i + 1).then_some(())
        })
        .await;
    }
    let warnings = host.events("default", &uid, "InvalidNetworksAnnotation");
    assert!(warnings.iter().all(|e| e["type"] == "Warning"));
    let notes: Vec<&str> = warnings.iter().filter_map(|e| e["note"].as_str()).collect();
    assert!(notes.iter().any(|n| n.contains("JSON")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("multicast")), "{notes:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(has(&netns, GREEN), "an invalid annotation changes nothing");
    assert_eq!(host.calls().len(), 1, "{:?}", host.calls());

    host.set_networks("default", "typo", Some(r#"[{"name":"blue"}]"#));
    host.eventually("the fix applied", || {
        (has(&netns, BLUE) && !has(&netns, GREEN)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_converges_and_an_unchanged_restart_calls_no_plugin() {
    let host = containerd_node().await;
    let (_, sandbox) = host
        .pod(
            "default",
            "steady",
            Some(r#"[{"name":"green"},{"name":"red"}]"#),
        )
        .await;
    let netns = host.netns(&sandbox).await;
    let agent = host.start_agent();
    host.eventually("green and red", || {
        (has(&netns, GREEN) && has(&netns, RED)).then_some(())
    })
    .await;
    agent.stop();

    host.set_networks(
        "default",
        "steady",
        Some(r#"[{"name":"green"},{"name":"blue"}]"#),
    );
    let agent = host.start_agent();
    host.eventually("red removed and blue added while podagent was down", || {
        (!has(&netns, RED) && has(&netns, BLUE) && has(&netns, GREEN)).then_some(())
    })
    .await;
    let commands: Vec<(String, String)> = host
        .calls()
        .into_iter()
        .map(|c| (c.command, c.ifname))
        .collect();
    assert_eq!(commands.len(), 4, "no call for green: {commands:?}");
    agent.stop();

    let before = host.calls().len();
    let agent = host.start_agent();
    host.past_startup("green", GREEN).await;
    let steady = host.calls_for("steady", before);
    assert!(
        steady.is_empty(),
        "restart with nothing changed called: {steady:?}"
    );
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_slow_add_leaves_exactly_one_link() {
    let host = containerd_node().await;
    let (uid, sandbox) = host.pod("default", "crash", None).await;
    let netns = host.netns(&sandbox).await;
    host.set_switch("sleep", Some("3"));
    let agent = host.start_agent();
    host.set_networks("default", "crash", Some(r#"[{"name":"green"}]"#));
    host.eventually("the ADD started", || {
        (host.count("ADD", "crash") == 1).then_some(())
    })
    .await;
    let record = host.record(&uid).expect("recorded before the ADD");
    assert_eq!(record["record"]["attachments"][GREEN]["phase"], "Adding");
    agent.kill();
    // The orphaned plugin finishes its ADD after podagent died.
    host.eventually("the orphaned ADD completes", || {
        ipv4(&netns, GREEN).map(drop)
    })
    .await;
    host.set_switch("sleep", None);

    // The link alone cannot tell a finished chain from half of one, so the interrupted
    // attachment is deleted (releasing its address) and added again.
    let _agent = host.start_agent();
    host.eventually("the attachment re-plugged and attached", || {
        let record = host.record(&uid)?;
        (record["record"]["attachments"][GREEN]["phase"] == "Attached").then_some(())
    })
    .await;
    host.eventually("the status annotation", || host.status("default", "crash"))
        .await;
    let names: Vec<String> = links(&netns)
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names.iter().filter(|n| *n == GREEN).count(), 1, "{names:?}");
    assert_eq!(host.count("DEL", "crash"), 1, "{:?}", host.calls());
    assert_eq!(host.count("ADD", "crash"), 2, "{:?}", host.calls());
    assert!(
        ipv4(&netns, GREEN).is_some(),
        "the re-plugged link has an address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_plugin_warns_backs_off_and_spares_other_pods() {
    let host = containerd_node().await;
    host.set_switch("fail-pods", Some("broken\n"));
    let (broken_uid, _) = host
        .pod("default", "broken", Some(r#"[{"name":"green"}]"#))
        .await;
    let agent = host.start_agent();
    host.eventually("the first failure", || {
        (host.count("ADD", "broken") >= 1).then_some(())
    })
    .await;
    let cpu_before = agent.cpu_ticks();
    let started = Instant::now();

    let (_, healthy) = host
        .pod("default", "healthy", Some(r#"[{"name":"green"}]"#))
        .await;
    let healthy_netns = host.netns(&healthy).await;
    host.eventually("the healthy pod plugged meanwhile", || {
        has(&healthy_netns, GREEN).then_some(())
    })
    .await;

    host.eventually("four attempts on the broken pod", || {
        (host.count("ADD", "broken") >= 4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = started.elapsed();
    let attempts: Vec<f64> = host
        .calls()
        .into_iter()
        .filter(|c| c.command == "ADD" && c.pod == "broken")
        .map(|c| c.at)
        .collect();
    // retry_base 1 s, cap 4 s, jitter in the upper half: gaps ≥ 0.5, ≥ 1, ≥ 2, ≥ 2 … s.
    let gaps: Vec<f64> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g >= 0.45), "{gaps:?}");
    assert!(
        gaps[2] >= 1.9,
        "the third retry waits at least 2 s: {gaps:?}"
    );
    let bound = 2 + (window.as_secs_f64() / 2.0).ceil() as usize + 2;
    assert!(
        attempts.len() <= bound,
        "{} attempts in {window:?}",
        attempts.len()
    );

    let ticks = agent.cpu_ticks() - cpu_before;
    let seconds = ticks as f64 / 100.0;
    assert!(
        seconds < window.as_secs_f64() * 0.5,
        "podagent used {seconds} s of CPU in {window:?} while backing off"
    );

    let warnings = host.events("default", &broken_uid, "FailedAddingInterface");
    assert_eq!(warnings.len(), 1, "one aggregated Event: {warnings:?}");
    let warning = &warnings[0];
    assert_eq!(warning["type"], "Warning");
    let note = warning["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("999") && note.contains("refused by the test plugin"),
        "{note}"
    );
    assert!(
        warning["series"]["count"].as_i64().unwrap_or(1) >= 2,
        "repeats are counted: {warning}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreated_sandbox_drops_old_records_and_plugs_the_new_netns() {
    let host = containerd_node().await;
    let (uid, first) = host
        .pod("default", "phoenix", Some(r#"[{"name":"green"}]"#))
        .await;
    let first_netns = host.netns(&first).await;
    let _agent = host.start_agent();
    host.eventually("green in the first sandbox", || {
        has(&first_netns, GREEN).then_some(())
    })
    .await;

    let containerd = host.containerd();
    containerd.stop_pod_sandbox(&first).await;
    containerd.remove_pod_sandbox(&first).await;
    let second = host.run_sandbox(&uid, "default", "phoenix").await;
    let second_netns = host.netns(&second).await;
    // What the kubelet reports after re-creating a sandbox: new container ids.
    host.report_running("default", "phoenix", "second", 1);

    host.eventually("green in the new sandbox", || {
        ipv4(&second_netns, GREEN).map(drop)
    })
    .await;
    host.eventually("the record follows the new sandbox", || {
        let record = host.record(&uid)?;
        (record["record"]["sandboxId"] == second
            && record["record"]["attachments"][GREEN]["phase"] == "Attached")
            .then_some(())
    })
    .await;
    assert_eq!(
        host.count("DEL", "phoenix"),
        0,
        "no DEL into the dead sandbox"
    );
    assert_eq!(host.count("ADD", "phoenix"), 2);
    let cache = fs::read_dir(host.path("state/cni-results"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        cache.iter().all(|name| !name.contains(&first)),
        "cached results of the old sandbox are dropped: {cache:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_deleted_during_an_add_is_forgotten() {
    let host = containerd_node().await;
    let (uid, _) = host.pod("default", "brief", None).await;
    host.set_switch("sleep", Some("3"));
    let mut agent = host.start_agent();
    host.set_networks("default", "brief", Some(r#"[{"name":"green"}]"#));
    host.eventually("the ADD started", || {
        (host.count("ADD", "brief") == 1).then_some(())
    })
    .await;
    host.delete_pod("default", "brief", None).await;
    host.eventually("the record forgotten", || {
        host.record(&uid).is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(agent.running(), "podagent survived");
    assert!(host.record(&uid).is_none());
}

/// Kactus mode on a primary that is not kactus is the trap of running podagent on a Calico or
/// Flannel node: the startup log says so, naming the file, the plugin and the mode to use. The
/// key that acknowledges a deliberate one (every other test sets it) silences it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_is_not_kactus_is_warned_about_at_startup() {
    let host = containerd_node().await;
    let mut config = host.agent_config();
    config.networks = String::new();
    let agent = host.start_agent_with(&config);
    let warning = host
        .eventually("the startup warning", || {
            host.log()
                .lines()
                .find(|l| l.contains("the primary CNI config is not kactus"))
                .map(str::to_owned)
        })
        .await;
    assert!(
        warning.contains("10-hotplug.conflist (network hotplug) runs `wrap-bridge` first")
            && warning.contains("networks.mode = \"direct\""),
        "{warning}"
    );
    agent.stop();
    let before = host
        .log()
        .matches("the primary CNI config is not kactus")
        .count();
    let agent = host.start_agent();
    host.eventually("the second start ready", || {
        (host.log().matches("podagent::daemon: ready").count() == 2).then_some(())
    })
    .await;
    agent.stop();
    assert_eq!(
        host.log()
            .matches("the primary CNI config is not kactus")
            .count(),
        before,
        "acknowledged with networks.accept_other_primary: no warning"
    );
}

/// A watch request refused outright with 410 Gone (in its response, not in its stream)
/// means the same as the in-stream 410: podagent lists afresh instead of retrying the stale
/// resourceVersion. Seen from outside, in the requests that reach the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_refused_with_410_lists_afresh() {
    let host = containerd_node().await;
    let (uid, sandbox) = host
        .pod("default", "relisted", Some(r#"[{"name":"green"}]"#))
        .await;
    let netns = host.netns(&sandbox).await;
    let proxy = host.fault_proxy().await;
    let mut config = host.agent_config();
    host.through_proxy(&mut config, &proxy);
    let agent = host.start_agent_with(&config);
    // Quiet before the fault: green plugged, its status written and its Event posted.
    host.eventually("green's AddedInterface Event", || {
        host.events("default", &uid, "AddedInterface").pop()
    })
    .await;
    let before = proxy.requests().len();
    proxy.faults().fail_next(1, 410);
    proxy.faults().cut_connections();
    host.set_networks(
        "default",
        "relisted",
        Some(r#"[{"name":"green"},{"name":"blue"}]"#),
    );
    host.eventually("blue", || has(&netns, BLUE).then_some(()))
        .await;
    let after = proxy.requests().split_off(before);
    let is_pods = |r: &String| r.starts_with("GET /api/v1/pods?");
    assert!(
        after
            .first()
            .is_some_and(|r| is_pods(r) && r.contains("watch=true")),
        "the request answered 410 is the watch that follows the cut: {after:#?}"
    );
    assert!(
        after[1..]
            .iter()
            .any(|r| is_pods(r) && !r.contains("watch=")),
        "no list of pods after the watch was refused with 410: {after:#?}"
    );
    // Its metrics say so too: one re-list of the pod watch, the refused watch request counted.
    let metrics = agent.get("/metrics").expect("/metrics answers").body;
    assert!(
        metrics.contains("podagent_watch_relists_total{watch=\"pods\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("podagent_api_request_errors_total{verb=\"watch\"} ")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_sandbox_gets_and_loses_green() {
    // A dockershim-style sandbox's netns is its pause process's.
    sandbox_gets_and_loses_green(Node::with_docker(PODAGENT).await, Path::new("/proc")).await;
}

/// CRI-O pins the netns with pinns and runs no infra process: podagent enters the pinned file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crio_sandbox_gets_and_loses_green() {
    let pinned = Path::new(testkit::host::CRIO_NAMESPACES_DIR).join("netns");
    sandbox_gets_and_loses_green(Node::with_crio(PODAGENT).await, &pinned).await;
}

/// On a runtime other than the containerd of every other test: green comes and goes in the
/// netns the runtime reports (a file under `netns_under`), with its Events, and the record
/// names the runtime's sandbox.
async fn sandbox_gets_and_loses_green(host: Node, netns_under: &Path) {
    let (uid, sandbox) = host.pod("default", "dock", None).await;
    let netns = host.netns(&sandbox).await;
    assert!(
        netns.starts_with(netns_under),
        "the sandbox's netns {} is under {}",
        netns.display(),
        netns_under.display()
    );
    let _agent = host.start_agent();

    host.set_networks("default", "dock", Some(r#"[{"name":"green"}]"#));
    host.eventually("green with an address", || ipv4(&netns, GREEN))
        .await;
    host.eventually("an AddedInterface Event", || {
        host.events("default", &uid, "AddedInterface").pop()
    })
    .await;
    let record = host.record(&uid).expect("record");
    assert_eq!(record["record"]["sandboxId"], sandbox);

    host.set_networks("default", "dock", None);
    host.eventually("green gone", || (!has(&netns, GREEN)).then_some(()))
        .await;
    host.eventually("a RemovedInterface Event", || {
        host.events("default", &uid, "RemovedInterface").pop()
    })
    .await;
}
