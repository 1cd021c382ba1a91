//! A restarted kube-apiserver, in a test binary of its own: the restart drops every client of
//! the process's control plane, so no other test may share it.

use podagent::annotation::ifname;
use serde_json::json;
use testkit::node::Node;

/// A restarted kube-apiserver drops every watch; with etcd's history compacted past the
/// resourceVersion podagent watches from (the fixture compacts during the restart, as the
/// server's own compactor does every five minutes), the real server answers 410 Gone,
/// podagent re-lists and goes on serving the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_answers_410_and_podagent_relists() {
    let node = Node::with_containerd(env!("CARGO_BIN_EXE_podagent")).await;
    let (_, sandbox) = node
        .pod("default", "steady", Some(r#"[{"name":"green"}]"#))
        .await;
    let netns = node.netns(&sandbox).await;
    let _agent = node.start_agent();
    let green = ifname("green");
    node.eventually("green", || {
        testkit::node::has_link(&netns, &green).then_some(())
    })
    .await;
    // A write podagent's watch does not see (another namespace's object): the server's
    // revision moves past the resourceVersion podagent holds.
    let admin = node.cluster().admin();
    admin
        .create(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "bump", "namespace": node.ns("elsewhere")}}))
        .expect("create a config map");
    node.cluster().restart_apiserver();

    node.set_networks(
        "default",
        "steady",
        Some(r#"[{"name":"green"},{"name":"blue"}]"#),
    );
    let blue = ifname("blue");
    node.eventually("blue after the restart", || {
        testkit::node::has_link(&netns, &blue).then_some(())
    })
    .await;
    let log = node.log();
    assert!(
        log.contains("410 Gone") && log.contains("re-listing"),
        "podagent saw no 410 from the restarted server:\n{log}"
    );
}
