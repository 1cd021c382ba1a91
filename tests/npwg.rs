//! NPWG mode end to end: podagent reads the `k8s.v1.cni.cncf.io/networks` annotation in both of
//! its forms, resolves each element to a `k8s.cni.cncf.io/v1` NetworkAttachmentDefinition
//! (its `spec.config`, else the conf dir's config of its name) and runs that config itself.
//! Real control plane (with the NAD CRD applied as Multus would have it), real containerd
//! sandboxes, real bridge and host-local plugins; each network leases from its own quarter of
//! the node's subnet into a directory of its own, so the tests read outcomes from the pod's
//! netns and the lease files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use podagent::annotation::ifname;
use serde_json::{Value, json};
use testkit::netns::{HostLinks, unique_name};
use testkit::node::{Agent, Node, WAIT, has_link, ipv4};

const PODAGENT: &str = env!("CARGO_BIN_EXE_podagent");
const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

/// A containerd node with the NetworkAttachmentDefinition CRD installed.
async fn npwg_node() -> Node {
    let host = Node::with_containerd(PODAGENT).await;
    host.cluster().install_attachment_definition_crd();
    host
}

/// podagent in npwg mode: it reads the NPWG annotation without being told.
fn start_npwg(host: &Node) -> Agent {
    let mut config = host.agent_config();
    config.networks = "mode = \"npwg\"\n".to_owned();
    host.start_agent_with(&config)
}

/// A pod whose NPWG annotation is `networks`; returns (uid, netns path).
async fn npwg_pod(host: &Node, namespace: &str, name: &str, networks: &str) -> (String, PathBuf) {
    let (uid, sandbox) = host
        .pod_with_annotations(namespace, name, json!({NETWORKS: networks}))
        .await;
    (uid, host.netns(&sandbox).await)
}

fn note_of(event: &Value) -> String {
    event["note"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_forms_attach_from_spec_config_and_from_the_conf_dir() {
    let host = npwg_node().await;
    let (red_bridge, blue_bridge) = (unique_name("nrb"), unique_name("nbb"));
    let _links = HostLinks(vec![red_bridge.clone(), blue_bridge.clone()]);
    host.put_bridge_definition("default", "red", "red", &red_bridge, 1);
    // No spec.config: the conf dir's config named `blue` is the one run.
    host.put_attachment_definition("default", "blue", json!({}));
    let mut blue = host.bridge_config("blue", &blue_bridge, &host.quarter(2));
    blue["name"] = json!("blue");
    fs::write(host.path("conf/50-blue.conf"), blue.to_string()).expect("write blue's config");

    let (uid, netns) = npwg_pod(&host, "default", "web", "red@eth9, blue").await;
    let _agent = start_npwg(&host);
    let red_ip = host
        .eventually("red on eth9", || ipv4(&netns, "eth9"))
        .await;
    let blue_ip = host
        .eventually("blue on its derived name", || ipv4(&netns, &ifname("blue")))
        .await;
    assert!(host.in_quarter(&red_ip, 1), "{red_ip}");
    assert!(host.in_quarter(&blue_ip, 2), "{blue_ip}");
    let record = host.record(&uid).expect("record");
    assert_eq!(
        record["record"]["attachments"]["eth9"]["selection"]["name"],
        "red"
    );

    // The JSON form, blue moved to an interface of its own: its old one goes, red stays.
    let namespace = host.ns("default");
    let json_form = json!([
        {"name": "red", "interface": "eth9"},
        {"name": "blue", "namespace": namespace, "interface": "eth10", "unknown-key": 1},
    ]);
    host.annotate("default", "web", NETWORKS, Some(&json_form.to_string()));
    host.eventually("blue on eth10, off its old name", || {
        (ipv4(&netns, "eth10").is_some() && !has_link(&netns, &ifname("blue"))).then_some(())
    })
    .await;
    assert_eq!(ipv4(&netns, "eth9").as_deref(), Some(red_ip.as_str()));
    assert_eq!(host.leases("blue").len(), 1, "the old lease was released");

    // Everything removed: both DELs release their leases.
    host.annotate("default", "web", NETWORKS, None);
    host.eventually("both gone, leases released", || {
        (!has_link(&netns, "eth9")
            && !has_link(&netns, "eth10")
            && host.leases("red").is_empty()
            && host.leases("blue").is_empty())
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_in_two_namespaces_and_one_network_on_two_interfaces() {
    let host = npwg_node().await;
    let (a_bridge, b_bridge) = (unique_name("nab"), unique_name("nbb"));
    let _links = HostLinks(vec![a_bridge.clone(), b_bridge.clone()]);
    host.put_bridge_definition("team-a", "data", "a", &a_bridge, 1);
    host.put_bridge_definition("team-b", "data", "b", &b_bridge, 2);
    let other = host.ns("team-b");
    let (_, netns) = npwg_pod(
        &host,
        "team-a",
        "web",
        &format!("data, {other}/data@eth10, data@eth11"),
    )
    .await;
    let _agent = start_npwg(&host);
    let own = host
        .eventually("team-a's data", || ipv4(&netns, &ifname("data")))
        .await;
    let far = host
        .eventually("team-b's data on eth10", || ipv4(&netns, "eth10"))
        .await;
    let again = host
        .eventually("team-a's data again on eth11", || ipv4(&netns, "eth11"))
        .await;
    assert!(host.in_quarter(&own, 1), "{own}");
    assert!(host.in_quarter(&far, 2), "{far}");
    assert!(host.in_quarter(&again, 1), "{again}");
    assert_ne!(own, again, "two attachments, two leases");
    assert_eq!(host.leases("a").len(), 2);
    assert_eq!(host.leases("b").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotation_whose_names_clash_is_refused_and_changes_nothing() {
    let host = npwg_node().await;
    let bridge = unique_name("ncb");
    let _links = HostLinks(vec![bridge.clone()]);
    host.put_bridge_definition("default", "data", "data", &bridge, 1);
    let (uid, netns) = npwg_pod(&host, "default", "web", "data@eth9").await;
    let _agent = start_npwg(&host);
    let kept = host
        .eventually("data on eth9", || ipv4(&netns, "eth9"))
        .await;
    let calls = host.calls().len();

    let refusals = [
        ("data@eth9, data, data", "would get interface"),
        ("data@eth9, data@lo", "lo already exists in the pod"),
        (
            "data@eth9, data@eth9",
            "eth9 is already used by element [0]",
        ),
        ("data@../x", "interface names are letters"),
    ];
    for (annotation, why) in refusals {
        host.annotate("default", "web", NETWORKS, Some(annotation));
        let event = host
            .eventually(&format!("a Warning for {annotation:?}"), || {
                host.events("default", &uid, "InvalidNetworksAnnotation")
                    .into_iter()
                    .find(|e| note_of(e).contains(why))
            })
            .await;
        assert_eq!(event["type"], "Warning");
    }
    // A pod has one default route per family: two elements asking for it are refused.
    let prefix = host.address_prefix();
    let routed = json!([
        {"name": "data", "interface": "eth9", "default-route": [format!("{prefix}65")]},
        {"name": "data", "interface": "eth10", "default-route": [format!("{prefix}66")]},
    ]);
    host.annotate("default", "web", NETWORKS, Some(&routed.to_string()));
    let event = host
        .eventually("two default routes refused", || {
            host.events("default", &uid, "InvalidNetworksAnnotation")
                .into_iter()
                .find(|e| note_of(e).contains("already asks for the IPv4 default route"))
        })
        .await;
    assert_eq!(event["type"], "Warning");
    assert!(!has_link(&netns, "eth10"));
    assert_eq!(
        host.calls().len(),
        calls,
        "no plugin ran for a refused annotation"
    );
    assert_eq!(ipv4(&netns, "eth9").as_deref(), Some(kept.as_str()));
    assert_eq!(host.leases("data").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_ips_are_assigned_or_the_attachment_is_rolled_back() {
    let host = npwg_node().await;
    let (static_bridge, fixed_bridge) = (unique_name("nsb"), unique_name("nfb"));
    let _links = HostLinks(vec![static_bridge.clone(), fixed_bridge.clone()]);
    let prefix = host.address_prefix();
    // Static IPAM takes its address from the element's `ips` (the `ips` capability).
    let static_net = json!({"cniVersion": "1.0.0", "type": "wrap-bridge", "bridge": static_bridge,
        "isGateway": false, "capabilities": {"ips": true}, "ipam": {"type": "static"}});
    host.put_attachment_definition(
        "default",
        "pinned",
        json!({"config": static_net.to_string()}),
    );
    // An IPAM that ignores every request and always answers one address.
    let fixed_ipam = host.path("bin/fixed-ipam");
    fs::write(
        &fixed_ipam,
        format!(
            "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] || exit 0\n\
             echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"{prefix}9/24\"}}]}}'\n"
        ),
    )
    .expect("write the fixed IPAM");
    fs::set_permissions(
        &fixed_ipam,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod the fixed IPAM");
    let fixed_net = json!({"cniVersion": "1.0.0", "type": "wrap-bridge", "bridge": fixed_bridge,
        "isGateway": false, "ipam": {"type": "fixed-ipam"}});
    host.put_attachment_definition("default", "deaf", json!({"config": fixed_net.to_string()}));

    let wanted = format!("{prefix}5");
    let elements = json!([
        {"name": "pinned", "interface": "eth9", "ips": [format!("{wanted}/24")]},
        {"name": "deaf", "interface": "eth10", "ips": [format!("{prefix}6/24")]},
    ]);
    let (uid, netns) = npwg_pod(&host, "default", "web", &elements.to_string()).await;
    let _agent = start_npwg(&host);
    let got = host
        .eventually("the pinned address on eth9", || ipv4(&netns, "eth9"))
        .await;
    assert_eq!(got, wanted);
    let event = host
        .eventually("the rollback reported", || {
            host.events("default", &uid, "FailedAddingInterface")
                .into_iter()
                .find(|e| note_of(e).contains("did not get the requested ips"))
        })
        .await;
    assert_eq!(event["type"], "Warning");
    assert!(
        note_of(&event).contains(&format!("{prefix}6/24")),
        "{}",
        note_of(&event)
    );
    host.eventually("the rolled-back interface gone and unrecorded", || {
        let record = host.record(&uid)?;
        (!has_link(&netns, "eth10") && record["record"]["attachments"].get("eth10").is_none())
            .then_some(())
    })
    .await;
    let dels = host
        .calls()
        .into_iter()
        .filter(|c| c.command == "DEL" && c.ifname == "eth10")
        .count();
    assert_eq!(dels, 1, "one rollback DEL: {:?}", host.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_status_is_merged_and_a_concurrent_writer_loses_nothing() {
    let host = npwg_node().await;
    let bridge = unique_name("nmb");
    let _links = HostLinks(vec![bridge.clone()]);
    host.put_bridge_definition("default", "red", "red", &bridge, 1);
    // The default network's entry, as Multus writes it at pod creation.
    let default_entry = json!({"name": "cbr0", "interface": "eth0", "ips": ["10.244.0.5"],
        "mac": "0a:58:0a:f4:00:05", "default": true, "dns": {}});
    let annotations = json!({
        NETWORKS: "red@eth9",
        STATUS: json!([default_entry]).to_string(),
    });
    let (_, sandbox) = host
        .pod_with_annotations("default", "web", annotations)
        .await;
    let netns = host.netns(&sandbox).await;

    // podagent's first status write is held at the proxy while another writer changes the
    // pod: the held write then reaches the API server with a stale resourceVersion.
    let proxy = host.fault_proxy().await;
    let pod_path = format!("/api/v1/namespaces/{}/pods/web", host.ns("default"));
    proxy.faults().hold_next("PATCH", &pod_path);
    let mut config = host.agent_config();
    config.networks = "mode = \"npwg\"\n".to_owned();
    host.through_proxy(&mut config, &proxy);
    let _agent = host.start_agent_with(&config);
    let address = host
        .eventually("red on eth9", || ipv4(&netns, "eth9"))
        .await;
    tokio::time::timeout(WAIT, proxy.faults().held(1))
        .await
        .expect("podagent's status write reached the proxy");
    host.annotate("default", "web", "example.com/owner", Some("team-a"));
    proxy.faults().release();

    let namespace = host.ns("default");
    let status = host
        .eventually("the merged network-status", || {
            let pod = host.get_pod("default", "web")?;
            let text = pod["metadata"]["annotations"][STATUS].as_str()?.to_owned();
            let entries: Value = serde_json::from_str(&text).ok()?;
            (entries.as_array()?.len() == 2).then_some(entries)
        })
        .await;
    assert_eq!(status[0], default_entry, "the default entry is untouched");
    assert_eq!(status[1]["name"], format!("{namespace}/red"));
    assert_eq!(status[1]["interface"], "eth9");
    assert_eq!(status[1]["default"], false);
    assert_eq!(status[1]["ips"], json!([address.clone()]));
    // host-local's gateway is the subnet's first address; the entry shows what the result had.
    let gateway = host.quarter(1).replace("64/26", "65");
    assert_eq!(status[1]["gateway"], json!([gateway]), "{status}");
    let pod = host.get_pod("default", "web").expect("pod");
    assert_eq!(
        pod["metadata"]["annotations"]["example.com/owner"], "team-a",
        "the concurrent writer's change survived"
    );
    let answers = proxy.faults().held_answers();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(
        answers[0].1, 409,
        "the held write was refused as stale: {answers:?}"
    );

    // Removing the attachment removes exactly podagent's entry.
    host.annotate("default", "web", NETWORKS, None);
    host.eventually("only the default entry left", || {
        let pod = host.get_pod("default", "web")?;
        let text = pod["metadata"]["annotations"][STATUS].as_str()?.to_owned();
        let entries: Value = serde_json::from_str(&text).ok()?;
        (entries == json!([default_entry])).then_some(())
    })
    .await;
    assert!(!has_link(&netns, "eth9"));
}

/// Plays Multus at sandbox creation: runs `config`'s plugin (a single config) for the ADD of
/// `ifname` in the sandbox, the way a runtime calls a CNI plugin; returns its result.
fn cold_plug(host: &Node, sandbox: &str, netns: &Path, ifname: &str, config: &Value) -> Value {
    let mut child = Command::new(host.path(&format!("bin/{}", config["type"].as_str().unwrap())))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", sandbox)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env(
            "CNI_PATH",
            format!("{}:/usr/lib/cni", host.path("bin").display()),
        )
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(config.to_string().as_bytes())
        .expect("write the config");
    let out = child.wait_with_output().expect("the plugin ends");
    assert!(
        out.status.success(),
        "cold-plug ADD failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("a CNI result")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multus_cold_plugged_interfaces_are_adopted_and_forged_claims_change_nothing() {
    let host = npwg_node().await;
    let bridge = unique_name("nab");
    let _links = HostLinks(vec![bridge.clone()]);
    host.put_bridge_definition("default", "red", "red", &bridge, 1);
    let namespace = host.ns("default");
    let mut red = host.bridge_config("red", &bridge, &host.quarter(1));
    red["name"] = json!("red");

    // Multus attached red as net1 when the sandbox was made, and wrote network-status.
    let (uid, sandbox) = host
        .pod_with_annotations("default", "cold", json!({NETWORKS: "red"}))
        .await;
    let netns = host.netns(&sandbox).await;
    let result = cold_plug(&host, &sandbox, &netns, "net1", &red);
    let address = result["ips"][0]["address"]
        .as_str()
        .expect("an address")
        .to_owned();
    let status = json!([
        {"name": "cbr0", "interface": "eth0", "ips": ["10.244.0.7"], "default": true, "dns": {}},
        {"name": format!("{namespace}/red"), "interface": "net1",
         "ips": [address.split('/').next()], "default": false, "dns": {}},
    ]);
    host.annotate("default", "cold", STATUS, Some(&status.to_string()));
    // A forger claims red is the pod's eth0, or a link that is not there.
    let (forged_uid, forged_sandbox) = host
        .pod_with_annotations("default", "forged", json!({NETWORKS: "red"}))
        .await;
    let forged_netns = host.netns(&forged_sandbox).await;
    let forged = json!([
        {"name": format!("{namespace}/red"), "interface": "eth0", "ips": [address.split('/').next()]},
        {"name": format!("{namespace}/red"), "interface": "ghost0"},
    ]);
    host.annotate("default", "forged", STATUS, Some(&forged.to_string()));
    let calls_before = host.calls().len();

    let _agent = start_npwg(&host);
    host.eventually("the cold-plugged red adopted", || {
        let record = host.record(&uid)?;
        (record["record"]["attachments"]["net1"]["phase"] == "Attached").then_some(())
    })
    .await;
    let forged_ip = host
        .eventually("the forged pod's red really added", || {
            ipv4(&forged_netns, &ifname("red"))
        })
        .await;
    assert!(!has_link(&forged_netns, "ghost0"));
    assert_ne!(forged_ip, address.split('/').next().unwrap());
    let calls: Vec<_> = host.calls().into_iter().skip(calls_before).collect();
    assert!(
        calls.iter().all(|c| c.pod != "cold"),
        "adoption ran no plugin for the cold pod: {calls:?}"
    );
    assert_eq!(host.leases("red").len(), 2, "the cold and the forged pod's");
    assert!(host.record(&forged_uid).is_some());

    // Removing the adopted attachment DELs it with the definition's config: its lease goes.
    host.annotate("default", "cold", NETWORKS, None);
    host.eventually("net1 removed and its lease released", || {
        let held: Vec<String> = host.leases("red").into_iter().map(|l| l.1).collect();
        (!has_link(&netns, "net1") && held.len() == 1 && !held.contains(&sandbox)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_the_network_behind_an_interface_is_del_then_add() {
    let host = npwg_node().await;
    let (a_bridge, b_bridge) = (unique_name("nsa"), unique_name("nsb"));
    let _links = HostLinks(vec![a_bridge.clone(), b_bridge.clone()]);
    host.put_bridge_definition("default", "a", "a", &a_bridge, 1);
    host.put_bridge_definition("default", "b", "b", &b_bridge, 2);
    let (_, netns) = npwg_pod(&host, "default", "web", "a@eth9").await;
    let _agent = start_npwg(&host);
    let before = host.eventually("a on eth9", || ipv4(&netns, "eth9")).await;
    assert!(host.in_quarter(&before, 1), "{before}");
    let calls_before = host.calls().len();

    host.annotate("default", "web", NETWORKS, Some("b@eth9"));
    let after = host
        .eventually("b on eth9", || {
            ipv4(&netns, "eth9").filter(|ip| host.in_quarter(ip, 2))
        })
        .await;
    assert!(host.leases("a").is_empty(), "a's lease released");
    assert_eq!(host.leases("b").len(), 1);
    let calls: Vec<(String, String)> = host
        .calls()
        .into_iter()
        .skip(calls_before)
        .map(|c| (c.command, c.ifname))
        .collect();
    let eth9 = |command: &str| (command.to_owned(), "eth9".to_owned());
    assert_eq!(
        calls,
        [eth9("DEL"), eth9("ADD")],
        "one DEL of a, then one ADD of b ({after})"
    );
}

/// `ip route show default` in `netns`: (gateway, device) of each IPv4 default route.
fn default_routes(netns: &Path) -> Vec<(String, String)> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-j", "-4", "route", "show", "default"])
        .output()
        .expect("run nsenter ip route");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let routes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    routes
        .iter()
        .map(|r| {
            let field = |key: &str| r[key].as_str().unwrap_or_default().to_owned();
            (field("gateway"), field("dev"))
        })
        .collect()
}

/// `default-route` moves the pod's IPv4 default route onto the new interface, and removing
/// the element puts the one it replaced back; a gateway the interface cannot reach rolls the
/// ADD back (its lease released) and leaves the pod's route as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_route_moves_the_pods_route_and_removing_it_puts_the_old_one_back() {
    let host = npwg_node().await;
    let bridge = unique_name("ndb");
    let _links = HostLinks(vec![bridge.clone()]);
    host.put_bridge_definition("default", "red", "red", &bridge, 1);
    let (uid, netns) = npwg_pod(&host, "default", "web", "").await;
    // The cluster network's default route, as the primary CNI plugin would have set it: via
    // a neighbour in eth0's subnet.
    let eth0 = ipv4(&netns, "eth0").expect("eth0 has an address");
    let (net, last) = eth0.rsplit_once('.').expect("an IPv4 address");
    let neighbour = format!("{net}.{}", if last == "1" { 2 } else { 1 });
    let status = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            "ip", "route", "replace", "default", "via", &neighbour, "dev", "eth0",
        ])
        .status()
        .expect("run nsenter ip route replace");
    assert!(status.success(), "the pod's default route could not be set");
    let cluster_route = vec![(neighbour.clone(), "eth0".to_owned())];
    assert_eq!(default_routes(&netns), cluster_route);
    let _agent = start_npwg(&host);

    // A gateway outside eth9's subnet: the kernel refuses the route, the ADD is undone.
    let unreachable =
        json!([{"name": "red", "interface": "eth9", "default-route": ["203.0.113.1"]}]);
    host.annotate("default", "web", NETWORKS, Some(&unreachable.to_string()));
    let event = host
        .eventually("the unreachable gateway reported", || {
            host.events("default", &uid, "FailedAddingInterface")
                .into_iter()
                .find(|e| note_of(e).contains("203.0.113.1"))
        })
        .await;
    assert!(
        note_of(&event).contains("cannot carry the requested default route via 203.0.113.1"),
        "{}",
        note_of(&event)
    );
    host.eventually("eth9 rolled back, its lease released", || {
        (!has_link(&netns, "eth9") && host.leases("red").is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        default_routes(&netns),
        cluster_route,
        "the pod's route is as it was"
    );

    // host-local's gateway for quarter 1 is in eth9's subnet: the default route moves there.
    let gateway = host.quarter(1).replace("64/26", "65");
    let reachable = json!([{"name": "red", "interface": "eth9", "default-route": [gateway]}]);
    host.annotate("default", "web", NETWORKS, Some(&reachable.to_string()));
    host.eventually("the default route via eth9", || {
        (default_routes(&netns) == [(gateway.clone(), "eth9".to_owned())]).then_some(())
    })
    .await;
    let record = host.record(&uid).expect("a record");
    assert_eq!(
        record["record"]["attachments"]["eth9"]["replacedRoutes"],
        json!([{"ipv6": false, "via": neighbour, "dev": "eth0"}]),
        "{record}"
    );

    // Removing the element removes eth9 and puts the cluster network's route back.
    host.annotate("default", "web", NETWORKS, None);
    host.eventually("the cluster route back", || {
        (!has_link(&netns, "eth9") && default_routes(&netns) == cluster_route).then_some(())
    })
    .await;
    assert!(host.leases("red").is_empty());
}
