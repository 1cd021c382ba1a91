//! Direct mode end to end: podagent resolves each annotation entry to a `kaloom.com/v1`
//! `Network` on the real control plane and runs that network's own plugins (the Debian bridge
//! through the logging wrapper, macvlan, host-local), with no kactus anywhere.
//!
//! Each node's conf dir starts with a decoy primary config (`00-decoy.conflist`, a plugin that
//! records every call and fails): in direct mode it must never run. Every Network keeps its
//! host-local leases in a directory of its own, so a test counts the leases podagent's
//! attachments hold by listing files. Outcomes are read from the pod's netns, the lease files,
//! the plugin logs and the API (Events, the status annotation), never from podagent's log.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use podagent::annotation::ifname;
use serde_json::{Value, json};
use testkit::netns::HostLinks;
use testkit::netns::unique_name;
use testkit::node::{Node, has_link, ipv4};

const PODAGENT: &str = env!("CARGO_BIN_EXE_podagent");

/// A containerd node with the Network CRD installed and the decoy primary in its conf dir.
async fn direct_node() -> Node {
    let host = Node::with_containerd(PODAGENT).await;
    host.cluster().install_network_crd();
    let decoy = host.path("bin/decoy");
    fs::write(
        &decoy,
        "#!/bin/sh\necho \"$CNI_COMMAND $CNI_IFNAME\" >>\"$(dirname \"$0\")/decoy.log\"\n\
         echo '{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"the decoy primary ran\"}'\nexit 1\n",
    )
    .expect("write the decoy plugin");
    fs::set_permissions(&decoy, fs::Permissions::from_mode(0o755)).expect("chmod decoy");
    fs::write(
        host.path("conf/00-decoy.conflist"),
        json!({"cniVersion": "1.0.0", "name": "decoy", "plugins": [{"type": "decoy"}]}).to_string(),
    )
    .expect("write the decoy config");
    host
}

/// The decoy primary's calls: none, in direct mode.
fn decoy_calls(host: &Node) -> String {
    fs::read_to_string(host.path("bin/decoy.log")).unwrap_or_default()
}

/// podagent in direct mode, with `networks` keys added to the `[networks]` table.
fn start_direct(host: &Node, networks: &str) -> testkit::node::Agent {
    let mut config = host.agent_config();
    config.networks = format!(
        "mode = \"direct\"\nfallback_namespace = \"{}\"\n{networks}",
        host.ns("default")
    );
    host.start_agent_with(&config)
}

/// Network `name` in the node's namespace `namespace`, with `spec.plugin` and `spec.config`.
fn put_network(host: &Node, namespace: &str, name: &str, plugin: &str, config: &str) {
    host.put_network(namespace, name, json!({"plugin": plugin, "config": config}));
}

fn note_of(event: &Value) -> String {
    event["note"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_network_runs_its_own_plugins_and_the_primary_never_runs() {
    let host = direct_node().await;
    let red_bridge = unique_name("rbr");
    let parent = unique_name("mvp");
    let peer = unique_name("mvq");
    let _links = HostLinks(vec![red_bridge.clone(), parent.clone()]);
    let made = Command::new("ip")
        .args([
            "link", "add", &parent, "type", "veth", "peer", "name", &peer,
        ])
        .status()
        .expect("ip link add");
    assert!(made.success(), "cannot create the macvlan parent veth");
    assert!(
        Command::new("ip")
            .args(["link", "set", &parent, "up"])
            .status()
            .expect("ip link set")
            .success()
    );
    let red = host.bridge_config("red", &red_bridge, &host.quarter(1));
    put_network(&host, "default", "red", "bridge", &red.to_string());
    // A single config without a type: spec.plugin names it.
    let blue = json!({"cniVersion": "1.0.0", "master": parent, "mode": "bridge",
        "ipam": {"type": "host-local", "subnet": host.quarter(2), "dataDir": host.path("ipam-blue")}});
    put_network(&host, "default", "blue", "macvlan", &blue.to_string());

    let (uid, sandbox) = host
        .pod(
            "default",
            "two",
            Some(r#"[{"name":"red"},{"name":"blue"}]"#),
        )
        .await;
    let netns = host.netns(&sandbox).await;
    let agent = start_direct(&host, "");
    let red_ip = host
        .eventually("red's address", || ipv4(&netns, &ifname("red")))
        .await;
    let blue_ip = host
        .eventually("blue's address", || ipv4(&netns, &ifname("blue")))
        .await;
    assert!(host.in_quarter(&red_ip, 1), "red from its range: {red_ip}");
    assert!(
        host.in_quarter(&blue_ip, 2),
        "blue from its range: {blue_ip}"
    );
    assert_eq!(host.leases("red").len(), 1);
    assert_eq!(host.leases("blue").len(), 1);
    let record = host.record(&uid).expect("record");
    let config = record["record"]["attachments"][ifname("red")]["definition"]["config"]
        .as_str()
        .expect("the record keeps the config the ADD ran");
    let config: Value = serde_json::from_str(config).expect("config JSON");
    assert_eq!(config["plugins"][0]["bridge"], red_bridge.as_str());
    let status = host
        .eventually("both in the status annotation", || {
            host.status("default", "two")
                .filter(|s| s.as_array().is_some_and(|a| a.len() == 2))
        })
        .await;
    assert!(
        status
            .to_string()
            .contains(red_ip.split('/').next().unwrap())
    );

    // A restart changes nothing: no plugin runs for this pod.
    let before = host.calls().len();
    agent.stop();
    let agent = start_direct(&host, "");
    host.past_startup("red", &ifname("red")).await;
    let two = host.calls_for("two", before);
    assert!(
        two.is_empty(),
        "a restart with nothing changed called: {two:?}"
    );

    // Dropping blue removes it and releases its lease; red stays.
    host.set_networks("default", "two", Some(r#"[{"name":"red"}]"#));
    host.eventually("blue gone", || {
        (!has_link(&netns, &ifname("blue"))).then_some(())
    })
    .await;
    host.eventually("blue's lease released", || {
        host.leases("blue").is_empty().then_some(())
    })
    .await;
    assert_eq!(host.leases("red").len(), 2, "the pod's and the marker's");

    // The pod goes: podagent's DEL releases red's lease too (nobody else knows it).
    host.delete_pod("default", "two", Some(&sandbox)).await;
    host.eventually("red's lease released with the pod", || {
        let held: Vec<String> = host.leases("red").into_iter().map(|l| l.1).collect();
        (held.len() == 1 && held != [sandbox.clone()]).then_some(())
    })
    .await;
    host.eventually("the record forgotten", || {
        host.record(&uid).is_none().then_some(())
    })
    .await;
    drop(agent);
    assert_eq!(
        decoy_calls(&host),
        "",
        "the decoy primary never runs in direct mode"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_rules_pick_the_object_and_isolation_refuses_others() {
    let host = direct_node().await;
    let (own_bridge, fallback_bridge, other_bridge) =
        (unique_name("obr"), unique_name("fbr"), unique_name("xbr"));
    let _links = HostLinks(vec![
        own_bridge.clone(),
        fallback_bridge.clone(),
        other_bridge.clone(),
    ]);
    let own = host.bridge_config("own", &own_bridge, &host.quarter(1));
    let fallback = host.bridge_config("fallback", &fallback_bridge, &host.quarter(2));
    let other = host.bridge_config("other", &other_bridge, &host.quarter(3));
    put_network(&host, "team", "data", "bridge", &own.to_string());
    put_network(&host, "default", "data", "bridge", &fallback.to_string());
    put_network(&host, "other", "far", "bridge", &other.to_string());

    let (_, in_team) = host
        .pod("team", "member", Some(r#"[{"name":"data"}]"#))
        .await;
    let (_, lonely) = host
        .pod("lonely", "stray", Some(r#"[{"name":"data"}]"#))
        .await;
    let entry = json!([{"name": "far", "namespace": host.ns("other")}]).to_string();
    let (_, crossing) = host.pod("team", "crosser", Some(&entry)).await;
    let (team_netns, lonely_netns, crossing_netns) = (
        host.netns(&in_team).await,
        host.netns(&lonely).await,
        host.netns(&crossing).await,
    );
    let agent = start_direct(&host, "");
    let team_ip = host
        .eventually("the team's own data", || ipv4(&team_netns, &ifname("data")))
        .await;
    assert!(host.in_quarter(&team_ip, 1), "{team_ip}");
    let lonely_ip = host
        .eventually("default's data by fallback", || {
            ipv4(&lonely_netns, &ifname("data"))
        })
        .await;
    assert!(host.in_quarter(&lonely_ip, 2), "{lonely_ip}");
    let far_ip = host
        .eventually("another namespace's network, named", || {
            ipv4(&crossing_netns, &ifname("far"))
        })
        .await;
    assert!(host.in_quarter(&far_ip, 3), "{far_ip}");
    agent.stop();

    // With isolation on, a new pod naming another namespace is refused with an Event, and
    // its other entry is plugged all the same.
    let _agent = start_direct(&host, "namespace_isolation = true\n");
    let entries = json!([{"name": "far", "namespace": host.ns("other")}, {"name": "data"}]);
    let (uid, refused) = host
        .pod("team", "isolated", Some(&entries.to_string()))
        .await;
    let refused_netns = host.netns(&refused).await;
    let event = host
        .eventually("a NetworkRefused Event", || {
            host.events("team", &uid, "NetworkRefused").pop()
        })
        .await;
    assert_eq!(event["type"], "Warning");
    let note = note_of(&event);
    assert!(
        note.contains(&format!("{}/far", host.ns("other")))
            && note.contains("networks.namespace_isolation"),
        "{note}"
    );
    host.eventually("its own-namespace entry plugged", || {
        ipv4(&refused_netns, &ifname("data"))
    })
    .await;
    assert!(!has_link(&refused_netns, &ifname("far")));
    assert!(
        has_link(&crossing_netns, &ifname("far")),
        "an interface made before isolation was turned on stays"
    );
    assert_eq!(decoy_calls(&host), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_network_is_reported_then_plugged_as_soon_as_it_is_created() {
    let host = direct_node().await;
    let late_bridge = unique_name("lbr");
    let _links = HostLinks(vec![late_bridge.clone()]);
    let (uid, sandbox) = host
        .pod("default", "early", Some(r#"[{"name":"late"}]"#))
        .await;
    let netns = host.netns(&sandbox).await;
    let mut config = host.agent_config();
    // No periodic resync and no retry could plug it within the test: only the watch can.
    config.resync_period = "1h".into();
    config.retry_base = "1h".into();
    config.retry_cap = "1h".into();
    config.networks = format!(
        "mode = \"direct\"\nfallback_namespace = \"{}\"\n",
        host.ns("default")
    );
    let _agent = host.start_agent_with(&config);
    let event = host
        .eventually("a NetworkNotFound Event", || {
            host.events("default", &uid, "NetworkNotFound").pop()
        })
        .await;
    assert_eq!(event["type"], "Warning");
    assert!(
        note_of(&event).contains(&format!(
            "no Network late in namespace {}",
            host.ns("default")
        )),
        "{}",
        note_of(&event)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        host.events("default", &uid, "NetworkNotFound").len(),
        1,
        "one Event, no retry storm"
    );
    assert_eq!(host.calls().len(), 0);

    let late = host.bridge_config("late", &late_bridge, &host.quarter(1));
    put_network(&host, "default", "late", "bridge", &late.to_string());
    host.eventually("late plugged once it exists", || {
        ipv4(&netns, &ifname("late"))
    })
    .await;
    assert_eq!(decoy_calls(&host), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_applies_to_new_attachments_and_the_old_one_is_removed_as_it_was_made() {
    let host = direct_node().await;
    let (first_bridge, second_bridge) = (unique_name("ebr"), unique_name("sbr"));
    let _links = HostLinks(vec![first_bridge.clone(), second_bridge.clone()]);
    let before = host.bridge_config("before", &first_bridge, &host.quarter(1));
    put_network(&host, "default", "data", "bridge", &before.to_string());
    let (uid, old_sandbox) = host
        .pod("default", "old", Some(r#"[{"name":"data"}]"#))
        .await;
    let old_netns = host.netns(&old_sandbox).await;
    let _agent = start_direct(&host, "");
    let old_ip = host
        .eventually("data from the first definition", || {
            ipv4(&old_netns, &ifname("data"))
        })
        .await;
    assert!(host.in_quarter(&old_ip, 1), "{old_ip}");

    let after = host.bridge_config("after", &second_bridge, &host.quarter(2));
    put_network(&host, "default", "data", "bridge", &after.to_string());
    let event = host
        .eventually(
            "a NetworkChanged Event on the pod using the old definition",
            || host.events("default", &uid, "NetworkChanged").pop(),
        )
        .await;
    assert!(
        note_of(&event).contains("keeps the config it was added with"),
        "{}",
        note_of(&event)
    );
    assert_eq!(ipv4(&old_netns, &ifname("data")), Some(old_ip), "untouched");

    let (_, new_sandbox) = host
        .pod("default", "new", Some(r#"[{"name":"data"}]"#))
        .await;
    let new_netns = host.netns(&new_sandbox).await;
    let new_ip = host
        .eventually("data from the edited definition", || {
            ipv4(&new_netns, &ifname("data"))
        })
        .await;
    assert!(host.in_quarter(&new_ip, 2), "{new_ip}");

    // Removing the old attachment runs the config it was made with: the first range's
    // lease goes, the second range keeps the new pod's.
    host.set_networks("default", "old", None);
    host.eventually("the first definition's lease released", || {
        host.leases("before").is_empty().then_some(())
    })
    .await;
    assert_eq!(host.leases("after").len(), 1);

    // A deleted Network leaves the interface made from it in place.
    host.cluster()
        .admin()
        .delete(
            "kaloom.com/v1",
            "Network",
            Some(&host.ns("default")),
            "data",
            None,
        )
        .expect("delete the Network");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(has_link(&new_netns, &ifname("data")));
    assert_eq!(decoy_calls(&host), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_released_when_a_sandbox_or_a_pod_goes_even_while_podagent_was_down() {
    let host = direct_node().await;
    let bridge = unique_name("gbr");
    let _links = HostLinks(vec![bridge.clone()]);
    let config = host.bridge_config("data", &bridge, &host.quarter(1));
    put_network(&host, "default", "data", "bridge", &config.to_string());
    let (uid, first) = host
        .pod("default", "phoenix", Some(r#"[{"name":"data"}]"#))
        .await;
    let (gone_uid, doomed) = host
        .pod("default", "doomed", Some(r#"[{"name":"data"}]"#))
        .await;
    let (first_netns, doomed_netns) = (host.netns(&first).await, host.netns(&doomed).await);
    let agent = start_direct(&host, "");
    host.eventually("both plugged", || {
        (ipv4(&first_netns, &ifname("data")).is_some()
            && ipv4(&doomed_netns, &ifname("data")).is_some())
        .then_some(())
    })
    .await;
    assert_eq!(host.leases("data").len(), 2);

    // The sandbox is re-created: the old one's lease is released, the new one holds one.
    let containerd = host.containerd();
    containerd.stop_pod_sandbox(&first).await;
    containerd.remove_pod_sandbox(&first).await;
    let second = host.run_sandbox(&uid, "default", "phoenix").await;
    let second_netns = host.netns(&second).await;
    host.report_running("default", "phoenix", "second", 1);
    host.eventually("data in the new sandbox", || {
        ipv4(&second_netns, &ifname("data"))
    })
    .await;
    host.eventually("the old sandbox's lease released", || {
        let held: Vec<String> = host.leases("data").into_iter().map(|l| l.1).collect();
        (held.len() == 2 && !held.contains(&first)).then_some(())
    })
    .await;

    // podagent is killed; meanwhile a pod goes. The restarted agent releases its lease.
    agent.kill();
    host.delete_pod("default", "doomed", Some(&doomed)).await;
    let _agent = start_direct(&host, "");
    host.eventually("the gone pod's lease released after the restart", || {
        let held: Vec<String> = host.leases("data").into_iter().map(|l| l.1).collect();
        (held == [second.clone()]).then_some(())
    })
    .await;
    host.eventually("its record forgotten", || {
        host.record(&gone_uid).is_none().then_some(())
    })
    .await;
    assert_eq!(decoy_calls(&host), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_network_configs_are_reported_and_nothing_runs() {
    let host = direct_node().await;
    let big = format!(
        r#"{{"cniVersion":"1.0.0","type":"wrap-bridge","pad":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    let cases = [
        ("notjson", "{ not json", "not valid JSON"),
        ("notype", r#"{"cniVersion":"1.0.0"}"#, "no \"type\""),
        (
            "escape",
            r#"{"cniVersion":"1.0.0","type":"../../bin/sh"}"#,
            "is not a plugin file name",
        ),
        ("huge", big.as_str(), "more than the 65536 podagent accepts"),
    ];
    for (name, config, _) in &cases {
        // No spec.plugin: nothing may stand in for the missing or unsafe type.
        let admin = host.cluster().admin();
        admin
            .create(json!({"apiVersion": "kaloom.com/v1", "kind": "Network",
                "metadata": {"name": name, "namespace": host.ns("default")},
                "spec": {"config": config}}))
            .expect("create the Network");
    }
    let entries: Vec<Value> = cases
        .iter()
        .map(|(name, ..)| json!({"name": name}))
        .collect();
    let (uid, sandbox) = host
        .pod("default", "victim", Some(&Value::from(entries).to_string()))
        .await;
    let netns = host.netns(&sandbox).await;
    let _agent = start_direct(&host, "");
    let namespace = host.ns("default");
    for (name, _, why) in &cases {
        let event = host
            .eventually(&format!("an InvalidNetwork Event for {name}"), || {
                host.events("default", &uid, "InvalidNetwork")
                    .into_iter()
                    .find(|e| note_of(e).contains(&format!("Network {namespace}/{name} ")))
            })
            .await;
        assert_eq!(event["type"], "Warning");
        assert!(note_of(&event).contains(why), "{}", note_of(&event));
        assert!(!has_link(&netns, &ifname(name)));
    }
    assert_eq!(host.calls().len(), 0, "no plugin ran");
    assert_eq!(decoy_calls(&host), "");
    assert!(
        !Path::new(&host.path("state"))
            .join(format!("{uid}.json"))
            .exists(),
        "nothing recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_pod_keeps_its_interfaces_until_its_sandbox_goes() {
    let host = direct_node().await;
    let bridge = unique_name("tbr");
    let _links = HostLinks(vec![bridge.clone()]);
    let config = host.bridge_config("data", &bridge, &host.quarter(1));
    put_network(&host, "default", "data", "bridge", &config.to_string());
    let (uid, sandbox) = host
        .pod("default", "graceful", Some(r#"[{"name":"data"}]"#))
        .await;
    let netns = host.netns(&sandbox).await;
    let _agent = start_direct(&host, "");
    host.eventually("data plugged", || ipv4(&netns, &ifname("data")))
        .await;
    host.mark_terminating("default", "graceful");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        has_link(&netns, &ifname("data")),
        "a terminating pod whose containers still run keeps its interfaces"
    );
    assert_eq!(host.leases("data").len(), 1);
    let containerd = host.containerd();
    containerd.stop_pod_sandbox(&sandbox).await;
    containerd.remove_pod_sandbox(&sandbox).await;
    host.remove_pod("default", "graceful");
    host.eventually("the lease released once the pod is gone", || {
        host.leases("data").is_empty().then_some(())
    })
    .await;
    host.eventually("the record forgotten", || {
        host.record(&uid).is_none().then_some(())
    })
    .await;
}

/// The network watch refused after startup (403, as when its RBAC rule goes) costs nothing
/// already known: a pod asking for a known network is plugged meanwhile, the failure shows in
/// the metrics, and once the server answers again a Network created since is plugged too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_network_watch_keeps_the_known_networks_and_recovers() {
    let host = direct_node().await;
    let (red_bridge, blue_bridge) = (unique_name("rbr"), unique_name("bbr"));
    let _links = HostLinks(vec![red_bridge.clone(), blue_bridge.clone()]);
    let red = host.bridge_config("red", &red_bridge, &host.quarter(1));
    put_network(&host, "default", "red", "bridge", &red.to_string());
    let proxy = host.fault_proxy().await;
    let mut config = host.agent_config();
    config.networks = format!(
        "mode = \"direct\"\nfallback_namespace = \"{}\"\n",
        host.ns("default")
    );
    host.through_proxy(&mut config, &proxy);
    let agent = host.start_agent_with(&config);
    host.eventually("podagent ready", || {
        agent.get("/readyz").filter(|a| a.status == 200)
    })
    .await;

    // Two refusals: kube-runtime backs off 0.8 s, then 1.6 s, before it lists again.
    proxy.faults().fail_next_under(2, 403, "/apis/kaloom.com/");
    proxy.faults().cut_connections();
    let (_, sandbox) = host
        .pod("default", "known", Some(r#"[{"name":"red"}]"#))
        .await;
    let netns = host.netns(&sandbox).await;
    host.eventually("red from the networks already known", || {
        ipv4(&netns, &ifname("red"))
    })
    .await;
    host.eventually("the refused network watch in the metrics", || {
        let text = agent.get("/metrics")?.body;
        text.lines()
            .any(|l| l.starts_with("podagent_watch_restarts_total{watch=\"networks\"} "))
            .then_some(())
    })
    .await;

    let blue = host.bridge_config("blue", &blue_bridge, &host.quarter(2));
    put_network(&host, "default", "blue", "bridge", &blue.to_string());
    host.set_networks(
        "default",
        "known",
        Some(r#"[{"name":"red"},{"name":"blue"}]"#),
    );
    host.eventually("blue once the watch is back", || {
        ipv4(&netns, &ifname("blue"))
    })
    .await;
}
