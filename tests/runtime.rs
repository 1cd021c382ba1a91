//! The runtime clients against a real private containerd (CRI) and dockerd (run as root).
//!
//! Sandboxes are created the way the kubelet creates them (CRI `RunPodSandbox` with the
//! `io.kubernetes.pod.*` labels, or a dockershim-style pause container), then resolved by pod
//! UID through podagent's own client, and their namespaces are read with the netns observer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use podagent::netns;
use podagent::pod::PodRef;
use podagent::runtime::{self, AnyRuntime, Runtime, RuntimeError, RuntimeKind, Sandbox, Settings};
use testkit::host::{Containerd, Dockerd};
use testkit::netns::unique_name;

fn pod(name: &str) -> PodRef {
    PodRef {
        uid: format!("{}-5e1c-4d2a-9b7f", unique_name("uid")),
        namespace: "default".to_owned(),
        name: name.to_owned(),
    }
}

fn settings(kind: RuntimeKind, socket: &Path) -> Settings {
    Settings {
        kind,
        endpoint: Some(socket.to_owned()),
        timeout: Duration::from_secs(5),
    }
}

async fn connect(kind: RuntimeKind, socket: &Path) -> AnyRuntime {
    runtime::connect(&settings(kind, socket))
        .await
        .unwrap_or_else(|err| panic!("connect to {}: {err}", socket.display()))
}

async fn resolve(runtime: &AnyRuntime, pod: &PodRef) -> Sandbox {
    runtime
        .sandbox(pod)
        .await
        .unwrap_or_else(|err| panic!("resolve {pod}: {err}"))
}

async fn run(containerd: &Containerd, pod: &PodRef, name: &str) -> String {
    containerd
        .run_pod_sandbox(&pod.uid, name, &pod.namespace)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_sandbox_is_found_by_uid_with_eth0_in_its_netns() {
    let containerd = Containerd::start().await;
    let web = pod("web");
    let id = run(&containerd, &web, "web").await;

    let runtime = connect(RuntimeKind::Containerd, containerd.socket()).await;
    assert!(matches!(runtime, AnyRuntime::Cri(_)));
    let version = runtime.version().await.expect("version");
    assert_eq!(version.kind, RuntimeKind::Containerd);
    assert_eq!(version.name, "containerd");
    assert!(!version.version.is_empty() && !version.api_version.is_empty());

    let sandbox = resolve(&runtime, &web).await;
    assert_eq!(sandbox.id, id);
    // Verbatim from the runtime: the bind-mounted `cni-<uuid>` file, not a rewritten path.
    assert_eq!(sandbox.netns, containerd.sandbox_netns(&id).await);
    assert!(
        sandbox.netns.starts_with("/var/run/netns") || sandbox.netns.starts_with("/run/netns"),
        "{}",
        sandbox.netns.display()
    );

    let links = netns::inspect(&sandbox.netns)
        .await
        .map(|found| found.links)
        .expect("sandbox links");
    let eth0 = links
        .iter()
        .find(|link| link.name == "eth0")
        .unwrap_or_else(|| panic!("no eth0 in the sandbox: {links:?}"));
    assert!(eth0.mac.as_deref().is_some_and(|mac| mac.len() == 17));
    let subnet = containerd.subnet();
    let prefix = subnet
        .rsplit_once(".0/")
        .map_or(subnet.as_str(), |(p, _)| p);
    assert!(
        eth0.addresses
            .iter()
            .any(|a| a.ip.to_string().starts_with(prefix)),
        "eth0 has no address in {subnet}: {eth0:?}"
    );

    let stranger = runtime.sandbox(&pod("stranger")).await;
    assert!(
        matches!(stranger, Err(RuntimeError::NoSandbox { .. })),
        "{stranger:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_sandbox_is_not_ready_and_removed_one_is_gone() {
    let containerd = Containerd::start().await;
    let web = pod("web");
    let id = run(&containerd, &web, "web").await;
    let runtime = connect(RuntimeKind::Containerd, containerd.socket()).await;
    assert_eq!(resolve(&runtime, &web).await.id, id);

    containerd.stop_pod_sandbox(&id).await;
    match runtime.sandbox(&web).await {
        Err(RuntimeError::NotReady {
            sandbox_id, reason, ..
        }) => {
            assert_eq!(sandbox_id, id);
            assert_eq!(reason, "SANDBOX_NOTREADY");
        }
        other => panic!("expected NotReady, got {other:?}"),
    }

    containerd.remove_pod_sandbox(&id).await;
    let gone = runtime.sandbox(&web).await;
    assert!(
        matches!(gone, Err(RuntimeError::NoSandbox { .. })),
        "{gone:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_recovers_after_containerd_restarts() {
    let mut containerd = Containerd::start().await;
    let web = pod("web");
    let id = run(&containerd, &web, "web").await;
    let runtime = connect(RuntimeKind::Containerd, containerd.socket()).await;
    let before = resolve(&runtime, &web).await;

    containerd.stop_daemon().await;
    match runtime.sandbox(&web).await {
        // Which one depends on whether the daemon removed its socket and how far the
        // connection had got.
        Err(
            RuntimeError::NoSocket { endpoint, .. }
            | RuntimeError::NotListening { endpoint, .. }
            | RuntimeError::Unreachable { endpoint, .. },
        ) => {
            assert_eq!(endpoint, containerd.socket());
        }
        other => panic!("expected an unreachable runtime while containerd is down, got {other:?}"),
    }

    containerd.start_daemon().await;
    // The very first call after the restart must succeed on the same client: the channel
    // re-dials the socket by itself.
    let after = resolve(&runtime, &web).await;
    assert_eq!(after.id, id);
    assert_eq!(after.netns, before.netns);

    containerd.restart().await;
    assert_eq!(resolve(&runtime, &web).await.id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_sandbox_wins_over_an_older_stopped_one() {
    let containerd = Containerd::start().await;
    let web = pod("web");
    let old = run(&containerd, &web, "web").await;
    containerd.stop_pod_sandbox(&old).await;
    // The kubelet re-creates the sandbox under a new attempt; a new name gives the same effect
    // (a second sandbox with the same pod UID label).
    let new = run(&containerd, &web, "web-again").await;
    let runtime = connect(RuntimeKind::Containerd, containerd.socket()).await;

    let sandbox = resolve(&runtime, &web).await;
    assert_eq!(sandbox.id, new);
    assert_eq!(sandbox.netns, containerd.sandbox_netns(&new).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_of_two_ready_sandboxes_wins() {
    let containerd = Containerd::start().await;
    let web = pod("web");
    let first = run(&containerd, &web, "web").await;
    let second = run(&containerd, &web, "web-twin").await;
    let runtime = connect(RuntimeKind::Containerd, containerd.socket()).await;

    let sandbox = resolve(&runtime, &web).await;
    assert_ne!(first, second);
    assert_eq!(sandbox.id, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_selects_the_cri_runtime_on_an_explicit_socket() {
    let containerd = Containerd::start().await;
    let runtime = connect(RuntimeKind::Auto, containerd.socket()).await;
    assert!(matches!(runtime, AnyRuntime::Cri(_)));
    assert_eq!(runtime.endpoint(), containerd.socket());
    let version = runtime.version().await.expect("version");
    assert_eq!(version.kind, RuntimeKind::Containerd);
}

#[tokio::test]
async fn a_missing_explicit_socket_is_named_once_for_both_protocols() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("nobody.sock");
    let uri = PathBuf::from(format!("unix://{}", socket.display()));
    let error = runtime::connect(&settings(RuntimeKind::Auto, &uri))
        .await
        .expect_err("nothing listens there");
    match &error {
        RuntimeError::NoneAnswered { kind, tried } => {
            assert_eq!(*kind, RuntimeKind::Auto);
            assert_eq!(
                *tried,
                format!("container runtime: no socket at {}", socket.display())
            );
        }
        other => panic!("expected NoneAnswered, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stale_docker_socket_is_nothing_listening_said_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stale = dir.path().join("stale.sock");
    // Binding and dropping the listener leaves the socket file with nobody accepting.
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let uri = PathBuf::from(format!("unix://{}", stale.display()));
    let error = runtime::connect(&settings(RuntimeKind::Docker, &uri))
        .await
        .expect_err("nobody accepts there");
    assert_eq!(
        error.to_string(),
        format!(
            "no container runtime answered a version call (kind docker); tried: docker: \
             nothing listening on {}",
            stale.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_sandbox_resolves_to_its_process_netns_until_stopped() {
    let dockerd = Dockerd::start().await;
    let web = pod("web");
    let id = dockerd
        .run_sandbox(&web.uid, &web.name, &web.namespace)
        .await;

    let runtime = connect(RuntimeKind::Docker, dockerd.socket()).await;
    assert!(matches!(runtime, AnyRuntime::Docker(_)));
    let version = runtime.version().await.expect("version");
    assert_eq!(version.kind, RuntimeKind::Docker);
    assert!(!version.api_version.is_empty());

    let sandbox = resolve(&runtime, &web).await;
    assert_eq!(sandbox.id, id);
    assert_eq!(sandbox.netns, dockerd.sandbox_netns(&id).await);
    let pid = sandbox
        .netns
        .strip_prefix("/proc")
        .ok()
        .and_then(|rest| rest.iter().next())
        .and_then(|pid| pid.to_str()?.parse::<u32>().ok());
    assert!(
        pid.is_some_and(|pid| pid > 0),
        "{}",
        sandbox.netns.display()
    );
    let links = netns::inspect(&sandbox.netns)
        .await
        .map(|found| found.links)
        .expect("sandbox links");
    assert_eq!(
        links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        vec!["lo"],
        "--network none leaves only lo"
    );

    dockerd.stop(&id).await;
    match runtime.sandbox(&web).await {
        Err(RuntimeError::NotReady { sandbox_id, .. }) => assert_eq!(sandbox_id, id),
        other => panic!("expected NotReady for a stopped container, got {other:?}"),
    }
    let stranger = runtime.sandbox(&pod("stranger")).await;
    assert!(
        matches!(stranger, Err(RuntimeError::NoSandbox { .. })),
        "{stranger:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_the_docker_engine_api() {
    let dockerd = Dockerd::start().await;
    let runtime = connect(RuntimeKind::Auto, dockerd.socket()).await;
    assert!(
        matches!(runtime, AnyRuntime::Docker(_)),
        "a Docker Engine socket does not speak CRI"
    );
}
