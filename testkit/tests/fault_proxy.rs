//! The fault proxy against the real kube-apiserver of `testkit::control_plane`: requests and
//! watches pass through unchanged, and each fault does what it says.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use serde_json::json;
use testkit::fault_proxy::FaultProxy;
use tokio::time::timeout;

/// Long enough for a loaded machine; no test asserts a speed bound tighter than this.
const PATIENCE: Duration = Duration::from_secs(30);

type Events = Pin<Box<dyn Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Send>>;

struct Setup {
    proxy: FaultProxy,
    /// Talks to the API server through the proxy.
    client: Client,
    /// Talks to the API server directly.
    admin: Client,
    namespace: String,
    dir: tempfile::TempDir,
}

async fn setup(prefix: &str) -> Setup {
    let cp = testkit::control_plane::shared();
    let namespace = cp.create_namespace(prefix);
    let proxy = FaultProxy::start(cp.server(), &cp.ca_pem())
        .await
        .expect("start fault proxy");
    let dir = tempfile::tempdir().expect("tempdir");
    let client = proxy_client(&proxy, &dir).await;
    Setup {
        proxy,
        client,
        admin: cp.client().await,
        namespace,
        dir,
    }
}

/// A new kube client (own connection pool) through `proxy`, from its kubeconfig.
async fn proxy_client(proxy: &FaultProxy, dir: &tempfile::TempDir) -> Client {
    let path = dir
        .path()
        .join(format!("proxy-{}.kubeconfig", proxy.requests().len()));
    proxy
        .write_kubeconfig(testkit::control_plane::shared().kubeconfig(), &path)
        .expect("write proxy kubeconfig");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read proxy kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("load proxy kubeconfig");
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        proxy.url()
    );
    Client::try_from(config).expect("proxy client")
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}}))
        .expect("config map")
}

async fn create_config_map(client: &Client, namespace: &str, name: &str) {
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &config_map(name))
        .await
        .unwrap_or_else(|err| panic!("creating config map {name}: {err}"));
}

/// A watch of the namespace's ConfigMaps through `client`, from now on.
async fn watch_config_maps(client: &Client, namespace: &str) -> Events {
    let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default()).await.expect("list");
    let version = list
        .metadata
        .resource_version
        .expect("list resourceVersion");
    let events = api
        .watch(&WatchParams::default(), &version)
        .await
        .expect("watch");
    Box::pin(events)
}

/// Waits for the ADDED event of `name`, skipping bookmarks; panics if the watch ends first.
async fn added(events: &mut Events, name: &str) {
    while let Some(event) = events.next().await {
        match event.expect("watch event") {
            WatchEvent::Added(cm) if cm.metadata.name.as_deref() == Some(name) => return,
            WatchEvent::Error(status) => panic!("watch error: {status:?}"),
            _ => {}
        }
    }
    panic!("the watch ended before {name} was added");
}

#[tokio::test]
async fn requests_pass_through_to_the_api_server() {
    let s = setup("fp-pass").await;
    let names: Vec<String> = Api::<Namespace>::all(s.client.clone())
        .list(&ListParams::default())
        .await
        .expect("list namespaces through the proxy")
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect();
    assert!(names.contains(&s.namespace), "{names:?}");
    assert!(names.contains(&"default".to_string()), "{names:?}");
    // A POST with a body, authenticated by the copied token, reaches the server intact.
    create_config_map(&s.client, &s.namespace, "through-proxy").await;
    let stored = Api::<ConfigMap>::namespaced(s.admin.clone(), &s.namespace)
        .get("through-proxy")
        .await
        .expect("the config map created through the proxy");
    assert_eq!(stored.data.expect("data")["k"], "v");
    assert!(
        s.proxy.requests().len() >= 2,
        "{}",
        s.proxy.requests().len()
    );
}

#[tokio::test]
async fn a_watch_through_the_proxy_delivers_events() {
    let s = setup("fp-watch").await;
    let mut events = watch_config_maps(&s.client, &s.namespace).await;
    create_config_map(&s.admin, &s.namespace, "watched").await;
    timeout(PATIENCE, added(&mut events, "watched"))
        .await
        .expect("the ADDED event through the proxy");
}

#[tokio::test]
async fn fail_next_fails_exactly_that_many_requests_without_upstream() {
    let s = setup("fp-fail").await;
    let api = Api::<ConfigMap>::namespaced(s.client.clone(), &s.namespace);
    let before = s.proxy.requests().len();
    s.proxy.faults().fail_next(2, 500);
    for attempt in 1..=2 {
        match api.list(&ListParams::default()).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 500, "attempt {attempt}: {status:?}");
                assert_eq!(status.reason, "InternalError", "attempt {attempt}");
                assert_eq!(status.message, "injected by the fault proxy");
            }
            other => panic!("attempt {attempt}: expected an injected 500, got {other:?}"),
        }
    }
    api.list(&ListParams::default())
        .await
        .expect("the third request reaches the server");
    assert_eq!(s.proxy.requests().len() - before, 3, "one request per call");
}

#[tokio::test]
async fn latency_delays_each_request() {
    let s = setup("fp-latency").await;
    let api = Api::<ConfigMap>::namespaced(s.client.clone(), &s.namespace);
    let latency = Duration::from_millis(1500);
    s.proxy.faults().set_latency(latency);
    for _ in 0..2 {
        let started = Instant::now();
        api.list(&ListParams::default()).await.expect("list");
        let took = started.elapsed();
        assert!(took >= latency, "took {took:?}, latency {latency:?}");
    }
    s.proxy.faults().clear();
    api.list(&ListParams::default())
        .await
        .expect("list after clear");
}

#[tokio::test]
async fn stall_holds_a_watch_event_until_unstalled() {
    let s = setup("fp-stall").await;
    let mut events = watch_config_maps(&s.client, &s.namespace).await;
    create_config_map(&s.admin, &s.namespace, "before-stall").await;
    timeout(PATIENCE, added(&mut events, "before-stall"))
        .await
        .expect("the watch is live before the stall");

    s.proxy.faults().stall(true);
    create_config_map(&s.admin, &s.namespace, "during-stall").await;
    let held = timeout(Duration::from_secs(3), events.next()).await;
    assert!(held.is_err(), "a frame got through the stall: {held:?}");

    s.proxy.faults().stall(false);
    timeout(PATIENCE, added(&mut events, "during-stall"))
        .await
        .expect("the held event arrives once unstalled");
}

#[tokio::test]
async fn stall_holds_new_requests_until_unstalled() {
    let s = setup("fp-stall-req").await;
    let api = Api::<ConfigMap>::namespaced(s.client.clone(), &s.namespace);
    s.proxy.faults().stall(true);
    let mut list = tokio::spawn(async move { api.list(&ListParams::default()).await });
    let held = timeout(Duration::from_secs(3), &mut list).await;
    assert!(held.is_err(), "the request got through the stall");
    s.proxy.faults().stall(false);
    timeout(PATIENCE, list)
        .await
        .expect("the held request completes once unstalled")
        .expect("list task")
        .expect("list");
}

#[tokio::test]
async fn cut_connections_ends_open_watches_and_later_connections_work() {
    let s = setup("fp-cut").await;
    let mut events = watch_config_maps(&s.client, &s.namespace).await;
    create_config_map(&s.admin, &s.namespace, "before-cut").await;
    timeout(PATIENCE, added(&mut events, "before-cut"))
        .await
        .expect("the watch is live before the cut");

    s.proxy.faults().cut_connections();
    let ended = timeout(PATIENCE, async {
        loop {
            match events.next().await {
                None => return "ended",
                Some(Err(_)) => return "failed",
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the watch ends after the cut");
    eprintln!("watch {ended} after the cut");

    let fresh = proxy_client(&s.proxy, &s.dir).await;
    Api::<ConfigMap>::namespaced(fresh, &s.namespace)
        .get("before-cut")
        .await
        .expect("a new connection after the cut works");
}

#[tokio::test]
async fn fail_next_under_fails_only_requests_under_its_prefix() {
    let s = setup("fp-prefix").await;
    let maps = Api::<ConfigMap>::namespaced(s.client.clone(), &s.namespace);
    let namespaces = Api::<Namespace>::all(s.client.clone());
    s.proxy
        .faults()
        .fail_next_under(1, 403, &format!("/api/v1/namespaces/{}/", s.namespace));
    namespaces
        .list(&ListParams::default())
        .await
        .expect("a request outside the prefix passes and keeps the failure pending");
    match maps.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected an injected 403, got {other:?}"),
    }
    maps.list(&ListParams::default())
        .await
        .expect("the failure was used up");
}
