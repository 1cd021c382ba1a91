//! kube-sim driven by the real clients it stands in for: kube-rs (Api, watcher, Recorder) and
//! kubectl against the `kube-sim` binary.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod, Secret};
use k8s_openapi::api::events::v1::Event as NewEvent;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, VersionMatch, WatchEvent,
    WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event as RecordedEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use testkit::kube_sim::{KubeSim, Options};

const WAIT: Duration = Duration::from_secs(10);

async fn client_for(kubeconfig: &Path) -> Client {
    let kubeconfig =
        Kubeconfig::read_from(kubeconfig).expect("kubeconfig written by kube-sim parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig usable by kube-rs");
    Client::try_from(config).expect("client")
}

fn pod_json(name: &str, node: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "labels": labels},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:1"}]},
           "status": {"phase": "Running"}})
}

fn pod(name: &str, node: &str, labels: Value) -> Pod {
    serde_json::from_value(pod_json(name, node, labels)).expect("pod fixture")
}

fn api_code(err: kube::Error) -> u16 {
    match err {
        kube::Error::Api(status) => status.code,
        other => panic!("expected an API error, got {other}"),
    }
}

/// What a watcher consumer would hold: the pods of the last complete list plus later events.
#[derive(Default)]
struct Mirror {
    pods: BTreeSet<String>,
    relisting: BTreeSet<String>,
    inits: usize,
    errors: usize,
}

impl Mirror {
    fn apply(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => {
                self.inits += 1;
                self.relisting.clear();
            }
            watcher::Event::InitApply(p) => {
                self.relisting.insert(p.name_any());
            }
            watcher::Event::InitDone => self.pods = std::mem::take(&mut self.relisting),
            watcher::Event::Apply(p) => {
                self.pods.insert(p.name_any());
            }
            watcher::Event::Delete(p) => {
                self.pods.remove(&p.name_any());
            }
        }
    }

    async fn until<S>(&mut self, stream: &mut S, want: &[&str])
    where
        S: Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin,
    {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let deadline = Instant::now() + WAIT;
        while self.pods != want || !self.relisting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.next()).await {
                Ok(Some(Ok(event))) => self.apply(event),
                Ok(Some(Err(_))) => self.errors += 1,
                Ok(None) => panic!("watcher stream ended"),
                Err(_) => panic!("watcher state {:?} never became {want:?}", self.pods),
            }
        }
    }
}

#[tokio::test]
async fn watcher_on_a_node_sees_only_its_pods_and_recovers_from_closed_watches_and_410() {
    let sim = KubeSim::start(Options::default()).await.expect("start");
    for (name, node) in [("a1", "node-a"), ("a2", "node-a"), ("b1", "node-b")] {
        sim.create(pod_json(name, node, json!({}))).expect("seed");
    }
    let client = client_for(sim.kubeconfig_path()).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let config = watcher::Config::default().fields("spec.nodeName=node-a");
    let mut stream = watcher(Api::<Pod>::all(client), config).boxed();
    let mut mirror = Mirror::default();
    mirror.until(&mut stream, &["a1", "a2"]).await;
    assert_eq!(mirror.inits, 1);

    pods.create(&PostParams::default(), &pod("a3", "node-a", json!({})))
        .await
        .expect("create a3");
    pods.create(&PostParams::default(), &pod("b2", "node-b", json!({})))
        .await
        .expect("create b2");
    pods.delete("a2", &DeleteParams::default())
        .await
        .expect("delete a2");
    mirror.until(&mut stream, &["a1", "a3"]).await;
    let patch = json!({"metadata": {"annotations": {"networks": "[{\"name\":\"green\"}]"}}});
    pods.patch("a1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate a1");
    let modified = loop {
        match tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("MODIFIED in time")
        {
            Some(Ok(watcher::Event::Apply(p))) => break p,
            Some(Ok(other)) => mirror.apply(other),
            _ => panic!("watcher failed"),
        }
    };
    assert_eq!(modified.annotations()["networks"], "[{\"name\":\"green\"}]");

    // A dropped watch resumes from the last resourceVersion without relisting.
    sim.faults().close_all_watches();
    sim.delete("v1", "Pod", Some("default"), "a3")
        .expect("delete a3");
    sim.create(pod_json("a4", "node-a", json!({})))
        .expect("create a4");
    mirror.until(&mut stream, &["a1", "a4"]).await;
    assert_eq!(mirror.inits, 1, "a closed watch is resumed, not relisted");

    // 410 Gone forces a relist, which must produce the current state.
    sim.faults().force_gone_on_next_watch();
    sim.faults().close_all_watches();
    sim.create(pod_json("a5", "node-a", json!({})))
        .expect("create a5");
    sim.delete("v1", "Pod", Some("default"), "a1")
        .expect("delete a1");
    mirror.until(&mut stream, &["a4", "a5"]).await;
    let deadline = Instant::now() + WAIT;
    while mirror.inits < 2 && Instant::now() < deadline {
        if let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(200), stream.next()).await
        {
            match item {
                Ok(event) => mirror.apply(event),
                Err(_) => mirror.errors += 1,
            }
        }
    }
    assert_eq!(mirror.inits, 2, "410 makes the watcher relist");
    assert!(mirror.errors >= 1, "the 410 reached the watcher");
    assert_eq!(
        mirror.pods,
        BTreeSet::from(["a4".to_string(), "a5".to_string()])
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn pod_api_covers_create_get_selectors_patches_status_conflict_and_delete() {
    let sim = KubeSim::start(Options::default()).await.expect("start");
    let client = client_for(sim.kubeconfig_path()).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    for (name, labels) in [
        ("web", json!({"app": "web", "tier": "front"})),
        ("db", json!({"app": "db", "tier": "back"})),
        ("job", json!({"app": "batch"})),
    ] {
        let created = pods
            .create(&PostParams::default(), &pod(name, "n1", labels))
            .await
            .expect("create");
        assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
        assert_eq!(
            created.status.and_then(|s| s.phase).as_deref(),
            Some("Pending"),
            "status is the server's"
        );
    }
    assert_eq!(
        pods.get("web")
            .await
            .expect("get")
            .spec
            .and_then(|s| s.node_name)
            .as_deref(),
        Some("n1")
    );
    let names = |list: kube::api::ObjectList<Pod>| {
        list.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    };
    for (selector, expected) in [
        ("app=web", vec!["web"]),
        ("app!=web", vec!["db", "job"]),
        ("tier in (front,back)", vec!["db", "web"]),
        ("tier notin (front),app", vec!["db", "job"]),
        ("!tier", vec!["job"]),
    ] {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .expect(selector);
        assert_eq!(names(list), expected, "{selector}");
    }
    let bad = pods
        .list(&ListParams::default().fields("spec.image=x"))
        .await
        .expect_err("unsupported field");
    assert_eq!(api_code(bad), 400);

    let merge = json!({"metadata": {"annotations": {"a": "1", "b": "2"}}});
    pods.patch("web", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .expect("merge");
    let strategic = json!({"metadata": {"annotations": {"a": null, "c": "3"}}});
    let patched = pods
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(&strategic),
        )
        .await
        .expect("smp");
    assert_eq!(patched.annotations().keys().collect::<Vec<_>>(), ["b", "c"]);

    let status = json!({"status": {"phase": "Running", "podIP": "198.18.0.5"},
                        "metadata": {"annotations": {"via-status": "yes"}}});
    pods.patch_status("web", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
    let web = pods.get("web").await.expect("get");
    assert_eq!(
        web.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    assert_eq!(
        web.annotations()["via-status"],
        "yes",
        "pods/status writes annotations too"
    );
    let ignored = json!({"status": {"phase": "Failed"}});
    pods.patch("web", &PatchParams::default(), &Patch::Merge(&ignored))
        .await
        .expect("main patch");
    let web = pods.get_status("web").await.expect("get status");
    assert_eq!(
        web.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running"),
        "status ignored on main resource"
    );

    let mut stale = web.clone();
    pods.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .expect("bump");
    stale.labels_mut().insert("z".into(), "1".into());
    let conflict = pods
        .replace("web", &PostParams::default(), &stale)
        .await
        .expect_err("stale rv");
    assert_eq!(api_code(conflict), 409);
    let fresh = pods.get("web").await.expect("get");
    let mut update = fresh.clone();
    update.labels_mut().insert("z".into(), "1".into());
    let replaced = pods
        .replace("web", &PostParams::default(), &update)
        .await
        .expect("replace current rv");
    let rv = |p: &Pod| {
        p.resource_version()
            .and_then(|rv| rv.parse::<u64>().ok())
            .expect("numeric rv")
    };
    assert!(rv(&replaced) > rv(&fresh));

    pods.delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(api_code(pods.get("web").await.expect_err("gone")), 404);
    let missing = pods
        .delete("web", &DeleteParams::default())
        .await
        .expect_err("delete again");
    assert_eq!(api_code(missing), 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn events_written_through_either_api_are_read_through_the_other() {
    let sim = KubeSim::start(Options::default()).await.expect("start");
    let client = client_for(sim.kubeconfig_path()).await;
    let core: Api<CoreEvent> = Api::default_namespaced(client.clone());
    let new: Api<NewEvent> = Api::default_namespaced(client.clone());
    let legacy: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "legacy.1"}, "message": "old style", "reason": "Attached", "type": "Normal",
        "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
        "source": {"component": "podagent", "host": "n1"}, "count": 1}))
    .expect("event");
    core.create(&PostParams::default(), &legacy)
        .await
        .expect("core create");
    let listed = new
        .list(&ListParams::default())
        .await
        .expect("events.k8s.io list");
    let seen = listed
        .items
        .iter()
        .find(|e| e.name_any() == "legacy.1")
        .expect("visible in events.k8s.io");
    assert_eq!(seen.note.as_deref(), Some("old style"));
    assert_eq!(
        seen.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("web")
    );
    assert_eq!(
        seen.deprecated_source
            .as_ref()
            .and_then(|s| s.component.as_deref()),
        Some("podagent")
    );

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let web = pods
        .create(&PostParams::default(), &pod("web", "n1", json!({})))
        .await
        .expect("pod");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "podagent".into(),
            instance: Some("n1".into()),
        },
    );
    let reported = RecordedEvent {
        type_: EventType::Warning,
        reason: "InvalidAnnotation".into(),
        note: Some("networks annotation is not JSON".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder
        .publish(&reported, &web.object_ref(&()))
        .await
        .expect("publish");
    recorder
        .publish(&reported, &web.object_ref(&()))
        .await
        .expect("publish again (series patch)");
    let listed = core
        .list(&ListParams::default().fields("involvedObject.name=web,type=Warning"))
        .await
        .expect("core list");
    let seen = listed
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("InvalidAnnotation"))
        .expect("visible in v1");
    assert_eq!(
        seen.message.as_deref(),
        Some("networks annotation is not JSON")
    );
    assert_eq!(seen.reporting_component.as_deref(), Some("podagent"));
    assert_eq!(seen.series.as_ref().and_then(|s| s.count), Some(2));
    let invalid: NewEvent =
        serde_json::from_value(json!({"metadata": {"name": "bad"}, "note": "x"})).expect("event");
    assert_eq!(
        api_code(
            new.create(&PostParams::default(), &invalid)
                .await
                .expect_err("invalid")
        ),
        422
    );

    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut probe = legacy.clone();
    probe.metadata.name = Some("dry.1".into());
    let answered = core.create(&dry, &probe).await.expect("dry-run create");
    assert_eq!(answered.name_any(), "dry.1");
    assert!(
        core.get_opt("dry.1").await.expect("get").is_none(),
        "a dry-run create must not store the event"
    );
    assert_eq!(
        api_code(core.create(&dry, &legacy).await.expect_err("exists")),
        409,
        "a dry-run create still reports a name that is taken"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn https_with_a_token_rejects_a_wrong_token_and_accepts_service_account_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let opts = Options {
        tls: true,
        token: Some("s3cret".into()),
        kubeconfig: Some(kubeconfig.clone()),
        ..Options::default()
    };
    let sim = KubeSim::start(opts).await.expect("start");
    assert!(sim.url().starts_with("https://127.0.0.1:"));
    assert!(
        dir.path().join("kubeconfig-ca.crt").is_file(),
        "CA written next to the kubeconfig"
    );
    let client = client_for(&kubeconfig).await;
    let pods: Api<Pod> = Api::all(client.clone());
    assert!(
        pods.list(&ListParams::default())
            .await
            .expect("list over https")
            .items
            .is_empty()
    );

    let wrong = dir.path().join("wrong");
    let text = std::fs::read_to_string(&kubeconfig)
        .expect("read")
        .replace("s3cret", "wrong");
    std::fs::write(&wrong, text).expect("write");
    let denied = Api::<Pod>::all(client_for(&wrong).await)
        .list(&ListParams::default())
        .await
        .expect_err("401");
    assert_eq!(api_code(denied), 401);

    let secrets: Api<Secret> = Api::default_namespaced(client);
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "agent-token",
        "annotations": {"kubernetes.io/service-account.name": "default"}},
        "type": "kubernetes.io/service-account-token"}))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let filled = secrets.get("agent-token").await.expect("get secret");
    let data = filled.data.expect("token controller filled data");
    let token = String::from_utf8(data["token"].0.clone()).expect("utf8 token");
    assert!(String::from_utf8_lossy(&data["ca.crt"].0).contains("BEGIN CERTIFICATE"));
    let sa_config = std::fs::read_to_string(&kubeconfig)
        .expect("read")
        .replace("s3cret", &token);
    std::fs::write(&wrong, sa_config).expect("write");
    let as_sa = Api::<Pod>::all(client_for(&wrong).await);
    as_sa
        .list(&ListParams::default())
        .await
        .expect("service-account token authenticates");
    sim.shutdown().await;
}

#[tokio::test]
async fn paging_bookmarks_timeouts_history_and_injected_faults_behave_like_a_server() {
    let opts = Options {
        bookmark_interval: Duration::from_millis(200),
        history: 20,
        ..Options::default()
    };
    let sim = KubeSim::start(opts).await.expect("start");
    for i in 0..7 {
        sim.create(pod_json(&format!("p{i}"), "n1", json!({})))
            .expect("seed");
    }
    let pods: Api<Pod> = Api::default_namespaced(client_for(sim.kubeconfig_path()).await);

    // Paging: every page is served from the first page's snapshot.
    let first = pods
        .list(&ListParams::default().limit(3))
        .await
        .expect("page 1");
    assert_eq!(first.items.len(), 3);
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    sim.create(pod_json("p99", "n1", json!({})))
        .expect("created between pages");
    let mut names: Vec<String> = first.items.iter().map(|p| p.name_any()).collect();
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = pods
            .list(&ListParams::default().limit(3).continue_token(&t))
            .await
            .expect("next page");
        names.extend(page.items.iter().map(|p| p.name_any()));
        token = page.metadata.continue_;
    }
    assert_eq!(names, (0..7).map(|i| format!("p{i}")).collect::<Vec<_>>());

    // Exact list at an older revision shows that revision's state.
    let rv = first.metadata.resource_version.clone().expect("list rv");
    let exact = pods
        .list(&ListParams::default().at(&rv).matching(VersionMatch::Exact))
        .await
        .expect("exact");
    assert_eq!(exact.items.len(), 7);

    // Bookmarks arrive when allowed; timeoutSeconds ends the watch.
    let started = Instant::now();
    let mut events = pods
        .watch(&WatchParams::default().timeout(2), &rv)
        .await
        .expect("watch")
        .boxed();
    let mut bookmarks = 0;
    let mut added = Vec::new();
    while let Some(event) = tokio::time::timeout(WAIT, events.try_next())
        .await
        .expect("watch ends by its timeout")
        .expect("event")
    {
        match event {
            WatchEvent::Bookmark(_) => bookmarks += 1,
            WatchEvent::Added(p) => added.push(p.name_any()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "ended by timeoutSeconds, not earlier"
    );
    assert_eq!(added, ["p99"], "replay from the list revision");
    assert!(bookmarks >= 2, "periodic bookmarks ({bookmarks})");

    // A revision older than the history is 410 Gone, as an ERROR event.
    for i in 0..25 {
        sim.patch_merge(
            "v1",
            "Pod",
            Some("default"),
            "p0",
            json!({"metadata": {"labels": {"i": i.to_string()}}}),
        )
        .expect("churn");
    }
    let mut events = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    match events.try_next().await.expect("event") {
        Some(WatchEvent::Error(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410, got {other:?}"),
    }
    let gone = pods
        .list(&ListParams::default().at(&rv).matching(VersionMatch::Exact))
        .await
        .expect_err("too old");
    assert_eq!(api_code(gone), 410);

    // A restart with an empty watch cache makes every earlier revision too old.
    let now = pods
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    sim.patch_merge(
        "v1",
        "Pod",
        Some("default"),
        "p1",
        json!({"metadata": {"labels": {"x": "1"}}}),
    )
    .expect("write");
    sim.faults().restart_empty_watch_cache();
    let mut events = pods
        .watch(&WatchParams::default(), &now)
        .await
        .expect("watch")
        .boxed();
    assert!(
        matches!(events.try_next().await.expect("event"), Some(WatchEvent::Error(s)) if s.code == 410)
    );

    // Injected failures and latency.
    sim.faults().fail_next(2, 500);
    assert_eq!(api_code(pods.get("p1").await.expect_err("first")), 500);
    assert_eq!(api_code(pods.get("p1").await.expect_err("second")), 500);
    pods.get("p1").await.expect("third succeeds");
    // kube-rs retries 503 by itself: the failures cost requests, not the call.
    let before = sim.request_count();
    sim.faults().fail_next(2, 503);
    pods.get("p1").await.expect("retried past two 503s");
    assert_eq!(sim.request_count() - before, 3);
    sim.faults().set_latency(Duration::from_millis(300));
    let started = Instant::now();
    pods.get("p1").await.expect("slow get");
    assert!(started.elapsed() >= Duration::from_millis(300));
    sim.faults().clear();

    // A stalled watch delivers nothing until released.
    let current = pods
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut events = pods
        .watch(&WatchParams::default().disable_bookmarks(), &current)
        .await
        .expect("watch")
        .boxed();
    sim.faults().stall_watches(true);
    sim.create(pod_json("late", "n1", json!({})))
        .expect("create");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), events.try_next())
            .await
            .is_err(),
        "stalled"
    );
    sim.faults().stall_watches(false);
    match tokio::time::timeout(WAIT, events.try_next())
        .await
        .expect("resumes")
        .expect("event")
    {
        Some(WatchEvent::Added(p)) => assert_eq!(p.name_any(), "late"),
        other => panic!("expected ADDED late, got {other:?}"),
    }
    assert!(sim.request_count() > 10);
    sim.shutdown().await;
}

#[tokio::test]
async fn starts_and_lists_with_500_seeded_pods_within_a_generous_bound() {
    let started = Instant::now();
    let sim = KubeSim::start(Options::default()).await.expect("start");
    for i in 0..500 {
        sim.create(pod_json(
            &format!("pod-{i:03}"),
            &format!("node-{}", i % 10),
            json!({"i": i.to_string()}),
        ))
        .expect("seed");
    }
    let pods: Api<Pod> = Api::all(client_for(sim.kubeconfig_path()).await);
    let on_node = pods
        .list(&ListParams::default().fields("spec.nodeName=node-3"))
        .await
        .expect("list");
    assert_eq!(on_node.items.len(), 50);
    assert_eq!(sim.list("v1", "Pod", None).len(), 500);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    sim.shutdown().await;
}

/// The `kube-sim` binary, killed by PID if a test fails before it is stopped.
struct SimProcess {
    child: Child,
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn kubectl(kubeconfig: &Path, cache: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .expect("run kubectl");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {stdout}{stderr}"
    );
    stdout.into_owned()
}

#[test]
fn kubectl_manages_pods_and_custom_resources_on_the_binary_which_exits_cleanly_on_sigterm() {
    testkit::prereq::require_command("kubectl", "kubernetes-client");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let cache = dir.path().join("cache");
    let child = Command::new(env!("CARGO_BIN_EXE_kube-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls",
            "--token",
            "t0ken",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn kube-sim");
    let mut sim = SimProcess { child };
    let stdout = sim.child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT).expect("kube-sim prints its address");
    assert!(
        line.starts_with("kube-sim listening on https://127.0.0.1:"),
        "{line}"
    );

    let k = |args: &[&str]| kubectl(&kubeconfig, &cache, args);
    assert!(k(&["get", "pods", "-A"]).is_empty(), "no pods yet");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write manifest");
        path.to_string_lossy().into_owned()
    };
    let pod = write(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  nodeName: node-1\n  containers:\n  - name: c\n    image: busybox:1\n",
    );
    k(&["create", "-f", &pod]);
    k(&[
        "annotate",
        "--overwrite",
        "pod",
        "web",
        r#"networks=[{"name":"green"}]"#,
    ]);
    k(&[
        "annotate",
        "--overwrite",
        "pod",
        "web",
        r#"networks=[{"name":"blue"}]"#,
    ]);
    let annotation = k(&[
        "get",
        "pod",
        "web",
        "-o",
        "jsonpath={.metadata.annotations.networks}",
    ]);
    assert_eq!(annotation, r#"[{"name":"blue"}]"#);
    let listed = k(&["get", "pods", "-A", "-o", "wide"]);
    assert!(
        listed.contains("web") && listed.contains("node-1") && listed.contains("NAMESPACE"),
        "{listed}"
    );

    let crd = write(
        "crd.yaml",
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: networks.kaloom.com\nspec:\n  group: kaloom.com\n  scope: Namespaced\n  names:\n    kind: Network\n    plural: networks\n    singular: network\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n",
    );
    k(&["apply", "-f", &crd]);
    k(&[
        "wait",
        "--for=condition=established",
        "crd/networks.kaloom.com",
        "--timeout=10s",
    ]);
    let network = write(
        "net.yaml",
        "apiVersion: kaloom.com/v1\nkind: Network\nmetadata:\n  name: green\nspec:\n  vlan: 10\n",
    );
    k(&["apply", "-f", &network]);
    k(&["apply", "-f", &network]);
    assert!(k(&["get", "networks"]).contains("green"));
    assert_eq!(
        k(&["get", "network", "green", "-o", "jsonpath={.spec.vlan}"]),
        "10"
    );
    k(&["delete", "-f", &network]);
    k(&["wait", "--for=delete", "network/green", "--timeout=10s"]);
    k(&["delete", "pod", "web"]);
    assert!(k(&["get", "pods", "-A"]).is_empty());

    let pid = nix::unistd::Pid::from_raw(i32::try_from(sim.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = sim.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "kube-sim did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}
