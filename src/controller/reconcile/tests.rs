//! One pod, reconciled against the fakes: which CNI calls happen, what is recorded, what the
//! user is told.

use super::*;
use crate::controller::fakes::{Fakes, context, view};

const GREEN: &str = "net9f27410725ab";
const BLUE: &str = "net48d6215903df";

struct Pod {
    fakes: Fakes,
    ctx: Context,
    view: PodView,
    record: Option<PodRecord>,
    memo: Memo,
    _dir: tempfile::TempDir,
}

impl Pod {
    fn new(networks: Option<&str>) -> Pod {
        let fakes = Fakes::default();
        fakes.sandbox("u1", "s1");
        let dir = tempfile::tempdir().expect("temp dir");
        Pod {
            ctx: context(&fakes, dir.path()),
            fakes,
            view: view("u1", networks),
            record: None,
            memo: Memo::default(),
            _dir: dir,
        }
    }

    fn want(&mut self, networks: &str) {
        self.view.networks = Some(networks.to_owned());
    }

    async fn reconcile(&mut self) -> Verdict {
        let outcome = reconcile(
            &self.ctx,
            Job {
                pod: PodRef {
                    uid: self.view.uid.clone(),
                    namespace: self.view.namespace.clone(),
                    name: self.view.name.clone(),
                },
                view: Some(self.view.clone()),
                record: self.record.take(),
                memo: self.memo.clone(),
                seen: std::time::Instant::now(),
            },
        )
        .await;
        self.record = outcome.record;
        self.memo = outcome.memo;
        outcome.verdict
    }

    fn stored(&self) -> Vec<PodRecord> {
        self.ctx.store.load_all().expect("load").records
    }

    fn phases(&self) -> Vec<(String, Phase)> {
        self.record
            .iter()
            .flat_map(|r| r.attachments.values())
            .map(|a| (a.ifname.clone(), a.phase))
            .collect()
    }
}

#[tokio::test]
async fn added_network_is_recorded_attached_with_its_result_and_reported() {
    let mut pod = Pod::new(Some(r#"[{"name":"green"}]"#));
    assert!(matches!(pod.reconcile().await, Verdict::Settled));
    assert_eq!(pod.fakes.cni_calls(), ["ADD pod-u1 net9f27410725ab"]);
    assert_eq!(pod.phases(), [(GREEN.to_owned(), Phase::Attached)]);
    let stored = pod.stored();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].attachments[GREEN].result.is_some());
    assert_eq!(pod.fakes.reasons(), ["AddedInterface"]);
    let statuses = pod.fakes.node().statuses.clone();
    assert_eq!(statuses.len(), 1);
    let status = statuses[0].1.as_deref().expect("status written");
    assert!(
        status.contains(GREEN) && status.contains("198.18.200.2"),
        "{status}"
    );
}

#[tokio::test]
async fn removed_network_is_deleted_once() {
    let mut pod = Pod::new(Some(r#"[{"name":"green"},{"name":"blue"}]"#));
    pod.reconcile().await;
    pod.want(r#"[{"name":"blue"}]"#);
    pod.reconcile().await;
    pod.reconcile().await;
    assert_eq!(
        pod.fakes.cni_calls(),
        [
            "ADD pod-u1 net48d6215903df",
            "ADD pod-u1 net9f27410725ab",
            "DEL pod-u1 net9f27410725ab"
        ]
    );
    assert_eq!(pod.phases(), [(BLUE.to_owned(), Phase::Attached)]);
    assert!(pod.fakes.reasons().contains(&"RemovedInterface"));
    let last = pod.fakes.node().statuses.last().cloned().expect("status");
    let last = last.1.expect("blue still attached");
    assert!(last.contains(BLUE) && !last.contains(GREEN), "{last}");
}

#[tokio::test]
async fn last_network_removed_deletes_the_record_and_the_status() {
    let mut pod = Pod::new(Some(r#"[{"name":"green"}]"#));
    pod.reconcile().await;
    pod.want("[]");
    pod.reconcile().await;
    assert!(pod.record.is_none());
    assert!(pod.stored().is_empty());
    assert_eq!(
        pod.fakes.node().statuses.last().cloned().expect("status").1,
        None
    );
}

#[tokio::test]
async fn attachment_in_place_after_restart_makes_no_cni_call() {
    let mut pod = Pod::new(Some(r#"[{"name":"green"}]"#));
    pod.reconcile().await;
    // A restart: memory gone, the record comes back from disk.
    pod.record = pod.stored().pop();
    pod.memo = Memo::default();
    pod.reconcile().await;
    assert_eq!(
        pod.fakes.cni_calls().len(),
        1,
        "{:?}",
        pod.fakes.cni_calls()
    );
}

#[tokio::test]
async fn present_unrecorded_interface_is_adopted_without_cni() {
    let mut pod = Pod::new(Some(r#"[{"name":"green"}]"#));
    let netns = pod.fakes.sandbox("u1", "s1");
    pod.fakes
        .node()
        .links
        .get_mut(&netns)
        .expect("netns")
        .insert(GREEN.into());
    pod.reconcile().await;
    assert!(pod.fakes.cni_calls().is_empty());
    assert_eq!(pod.phases(), [(GREEN.to_owned(), Phase::Attached)]);
}

#[tokio::test]
async fn sandbox_restart_drops_old_records() {
    let mut pod = Pod::new(Some(r#"[{"name":"green"}]"#));
    pod.reconcile().await;
    pod.fakes.sandbox("u1", "s2");
    // kubelet starts the pod's containers again in the new sandbox.
    pod.view.container_ids = vec!["containerd://c2".into()];
    pod.reconcile().await;
    assert_eq!(
        pod.fakes.cni_calls(),
        ["ADD pod-u1 net9f27410725ab", "ADD pod-u1 net9f27410725ab"],
        "no DEL into the dead sandbox"
    );
    assert_eq!(pod.fakes.node().forgotten_sandboxes, ["s1"]);
    assert_eq!(pod.record.as_ref().expect("record").sandbox_id, "s2");
}

#[tokio::test]
async fn known_sandbox_spares_the_runtime_until_the_containers_change() {
    let mut pod = Pod::new(Some(r#"[{"name":"green"}]"#));
    pod.fakes.node().failing.insert("pod-u1".into(), 7);
    for _ in 0..3 {
        assert!(matches!(pod.reconcile().await, Verdict::Retry(_)));
    }
    assert_eq!(
        pod.fakes.node().runtime_calls,
        1,
        "retries reuse the answer"
    );
    assert_eq!(pod.fakes.cni_calls().len(), 5, "ADD, then DEL + ADD twice");

    pod.fakes.node().failing.clear();
    pod.view.container_ids.push("containerd://sidecar".into());
    assert!(matches!(pod.reconcile().await, Verdict::Settled));
    assert_eq!(
        pod.fakes.node().runtime_calls,
        2,
        "new containers: asked again"
    );
    assert_eq!(pod.phases(), [(GREEN.to_owned(), Phase::Attached)]);
}

#[tokio::test]
async fn netns_path_leading_elsewhere_sends_podagent_back_to_the_runtime() {
    let mut pod = Pod::new(Some(r#"[{"name":"green"}]"#));
    assert!(matches!(pod.reconcile().await, Verdict::Settled));
    let netns = pod.record.as_ref().expect("record").netns.clone();

    // The same path now leads to another namespace (say, a reused pid in /proc/<pid>/ns/net).
    pod.fakes.node().namespaces.insert(netns.clone(), 99);
    assert!(matches!(pod.reconcile().await, Verdict::Settled));
    assert_eq!(pod.fakes.node().runtime_calls, 2);

    // The namespace is gone and the runtime has a new sandbox, containers not yet reported.
    pod.fakes.node().links.remove(&netns);
    pod.fakes.sandbox("u1", "s2");
    assert!(matches!(pod.reconcile().await, Verdict::Settled));
    assert_eq!(pod.fakes.node().runtime_calls, 3);
    assert_eq!(pod.record.as_ref().expect("record").sandbox_id, "s2");
    assert_eq!(
        pod.fakes.cni_calls(),
        ["ADD pod-u1 net9f27410725ab", "ADD pod-u1 net9f27410725ab"],
        "plugged again into the new sandbox, no DEL into the dead one"
    );
}

#[tokio::test]
async fn pod_without_reported_containers_asks_the_runtime_every_time() {
    let mut pod = Pod::new(Some(r#"[{"name":"green"}]"#));
    pod.view.container_ids.clear();
    pod.reconcile().await;
    pod.reconcile().await;
    assert_eq!(pod.fakes.node().runtime_calls, 2);
}

#[tokio::test]
async fn failed_add_is_reported_and_left_adding_for_the_retry() {
    let mut pod = Pod::new(Some(r#"[{"name":"green"}]"#));
    pod.fakes.node().failing.insert("pod-u1".into(), 7);
    let Verdict::Retry(error) = pod.reconcile().await else {
        panic!("a failed ADD must be retried");
    };
    assert!(!error.is_retry_later());
    assert_eq!(pod.phases(), [(GREEN.to_owned(), Phase::Adding)]);
    assert_eq!(pod.fakes.reasons(), ["FailedAddingInterface"]);
    let note = pod.fakes.node().events[0].1.note.clone();
    assert!(
        note.contains("code 7") && note.contains("refused"),
        "{note}"
    );

    pod.fakes.node().failing.insert("pod-u1".into(), 11);
    let Verdict::Retry(error) = pod.reconcile().await else {
        panic!("still failing");
    };
    assert!(error.is_retry_later());

    pod.fakes.node().failing.clear();
    assert!(matches!(pod.reconcile().await, Verdict::Settled));
    assert_eq!(pod.phases(), [(GREEN.to_owned(), Phase::Attached)]);
}

#[tokio::test]
async fn cleanup_del_of_a_failed_add_leaves_the_record_adding() {
    let mut pod = Pod::new(Some(r#"[{"name":"green"}]"#));
    pod.fakes.node().failing.insert("pod-u1".into(), 7);
    assert!(matches!(pod.reconcile().await, Verdict::Retry(_)));
    pod.fakes.node().failing_del.insert("pod-u1".into(), 7);
    assert!(matches!(pod.reconcile().await, Verdict::Retry(_)));
    assert_eq!(
        pod.fakes.cni_calls(),
        ["ADD pod-u1 net9f27410725ab", "DEL pod-u1 net9f27410725ab"]
    );
    // `Adding` already means "DEL first": no `Removing` write went before the clean-up DEL.
    assert_eq!(pod.phases(), [(GREEN.to_owned(), Phase::Adding)]);
    let stored = pod.stored();
    assert_eq!(stored[0].attachments[GREEN].phase, Phase::Adding);
}

#[tokio::test]
async fn invalid_annotation_changes_nothing_and_is_reported_once_per_value() {
    let mut pod = Pod::new(Some(r#"[{"name":"green"}]"#));
    pod.reconcile().await;
    for bad in [
        r#"[{"name":"green"}"#,
        r#"[{"name":"green"}"#,
        r#"[{"name":"a"},{"name":"a"}]"#,
    ] {
        pod.want(bad);
        assert!(matches!(pod.reconcile().await, Verdict::Settled));
    }
    assert_eq!(pod.fakes.cni_calls().len(), 1, "nothing changed");
    let warnings: Vec<_> = pod
        .fakes
        .reasons()
        .into_iter()
        .filter(|r| *r == "InvalidNetworksAnnotation")
        .collect();
    assert_eq!(warnings.len(), 2, "one per distinct value");
    pod.want(r#"[{"name":"blue"}]"#);
    pod.reconcile().await;
    assert_eq!(pod.phases(), [(BLUE.to_owned(), Phase::Attached)]);
}

#[tokio::test]
async fn pod_without_networks_costs_no_runtime_call() {
    let mut pod = Pod::new(None);
    pod.reconcile().await;
    pod.want(r#"[{"name":"green","podagentSkip":true}]"#);
    pod.reconcile().await;
    let node = pod.fakes.node();
    assert_eq!(node.runtime_calls, 0);
    assert!(
        node.statuses.is_empty(),
        "a pod never managed is not annotated"
    );
}

#[tokio::test]
async fn host_network_pod_is_not_touched() {
    let mut pod = Pod::new(Some(r#"[{"name":"green"}]"#));
    pod.view.host_network = true;
    assert!(matches!(pod.reconcile().await, Verdict::Settled));
    pod.reconcile().await;
    assert!(pod.fakes.cni_calls().is_empty());
    assert_eq!(pod.fakes.node().runtime_calls, 0);
    assert_eq!(pod.fakes.reasons(), ["HostNetworkPod"], "warned once");
}

#[tokio::test]
async fn npwg_mode_rejects_a_host_network_pod_with_the_reason_multus_tools_watch() {
    use crate::networks::{Mode, Networks, Settings};
    let mut pod = Pod::new(Some("green"));
    let settings = Settings {
        mode: Mode::Npwg,
        ..Settings::default()
    };
    pod.ctx.networks = Networks::new(settings, "/nonexistent");
    pod.view.host_network = true;
    assert!(matches!(pod.reconcile().await, Verdict::Settled));
    assert!(pod.fakes.cni_calls().is_empty());
    assert_eq!(pod.fakes.reasons(), ["InterfaceAddRejected"]);
}

#[tokio::test]
async fn npwg_entries_of_attachments_forgotten_before_a_crash_are_still_removed() {
    use crate::networks::{Mode, Networks, Settings};
    let mut pod = Pod::new(Some(""));
    let settings = Settings {
        mode: Mode::Npwg,
        ..Settings::default()
    };
    pod.ctx.networks = Networks::new(settings, "/nonexistent");
    // What a crash between forgetting a DELed attachment and the status write leaves: no
    // attachment, and its interface still among those podagent's last write showed.
    let netns = pod.fakes.sandbox("u1", "s1");
    let record = PodRecord {
        status_interfaces: ["eth9".to_owned()].into(),
        uid: "u1".into(),
        namespace: "ns".into(),
        name: "pod-u1".into(),
        sandbox_id: "s1".into(),
        netns,
        attachments: BTreeMap::new(),
    };
    pod.ctx.store.put(&record).expect("store the record");
    pod.record = Some(record);
    let multus = serde_json::json!({"name": "cbr0", "interface": "eth0", "default": true});
    pod.view.network_status = Some(
        serde_json::json!([multus, {"name": "ns/data", "interface": "eth9", "default": false}])
            .to_string(),
    );
    assert!(matches!(pod.reconcile().await, Verdict::Settled));
    let written = pod.fakes.node().statuses.last().cloned().expect("a write");
    let written: serde_json::Value =
        serde_json::from_str(&written.1.expect("a value")).expect("JSON");
    assert_eq!(
        written,
        serde_json::json!([multus]),
        "only podagent's entry went"
    );
    assert!(pod.fakes.cni_calls().is_empty());
    assert!(pod.record.is_none(), "nothing left to keep");
    assert!(pod.stored().is_empty());
}
