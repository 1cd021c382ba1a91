//! The runtime clients against a real private containerd and CRI-O (CRI) and dockerd (run as
//! root).
//!
//! Sandboxes are created the way the kubelet creates them (CRI `RunPodSandbox` with the
//! `io.kubernetes.pod.*` labels, or a dockershim-style pause container), then resolved by pod
//! UID through podagent's own client, and their namespaces are read with the netns observer.
//! The CRI scenarios run once on each CRI runtime (test modules `containerd` and `crio`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use podagent::netns;
use podagent::pod::PodRef;
use podagent::runtime::{self, AnyRuntime, Runtime, RuntimeError, RuntimeKind, Sandbox, Settings};
use testkit::host::{CRIO_NAMESPACES_DIR, Containerd, CriDaemon, Crio, Dockerd};
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

/// One CRI runtime under test: the daemon, the kind it must report, its name in CRI
/// `Version`, and the directory its sandboxes' netns files are in.
struct Cri<'a> {
    daemon: &'a mut CriDaemon,
    kind: RuntimeKind,
    name: &'static str,
    netns_dir: PathBuf,
}

impl Cri<'_> {
    async fn run(&self, pod: &PodRef, name: &str) -> String {
        self.daemon
            .run_pod_sandbox(&pod.uid, name, &pod.namespace)
            .await
    }

    async fn connect(&self, kind: RuntimeKind) -> AnyRuntime {
        connect(kind, self.daemon.socket()).await
    }
}

/// Each scenario below, once on a private containerd and once on a private CRI-O.
macro_rules! on_every_cri_runtime {
    ($($scenario:ident),* $(,)?) => {
        mod containerd {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let mut containerd = Containerd::start().await;
                    super::$scenario(Cri {
                        daemon: &mut containerd,
                        kind: RuntimeKind::Containerd,
                        name: "containerd",
                        // containerd bind-mounts `cni-<uuid>` there.
                        netns_dir: PathBuf::from("/var/run/netns"),
                    })
                    .await;
                }
            )*
        }
        mod crio {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let mut crio = Crio::start().await;
                    super::$scenario(Cri {
                        daemon: &mut crio,
                        kind: RuntimeKind::Crio,
                        name: "cri-o",
                        // pinns pins `<id>` there; no infra process holds the netns.
                        netns_dir: Path::new(CRIO_NAMESPACES_DIR).join("netns"),
                    })
                    .await;
                }
            )*
        }
    };
}

on_every_cri_runtime!(
    sandbox_is_found_by_uid_with_eth0_in_its_netns,
    stopped_sandbox_is_not_ready_and_removed_one_is_gone,
    client_recovers_after_the_runtime_restarts,
    ready_sandbox_wins_over_an_older_stopped_one,
    newest_of_two_ready_sandboxes_wins,
    auto_selects_the_cri_runtime_on_an_explicit_socket,
);

async fn sandbox_is_found_by_uid_with_eth0_in_its_netns(cri: Cri<'_>) {
    let web = pod("web");
    let id = cri.run(&web, "web").await;

    let runtime = cri.connect(cri.kind).await;
    assert!(matches!(runtime, AnyRuntime::Cri(_)));
    let version = runtime.version().await.expect("version");
    assert_eq!(version.kind, cri.kind);
    assert_eq!(version.name, cri.name);
    assert!(!version.version.is_empty() && !version.api_version.is_empty());

    let sandbox = resolve(&runtime, &web).await;
    assert_eq!(sandbox.id, id);
    // Verbatim from the runtime: the file it pinned the netns to, not a rewritten path.
    assert_eq!(sandbox.netns, cri.daemon.sandbox_netns(&id).await);
    let netns_dir = sandbox.netns.parent().map(fs::canonicalize);
    assert!(
        netns_dir.is_some_and(|dir| dir.ok() == fs::canonicalize(&cri.netns_dir).ok()),
        "{} is not in {}",
        sandbox.netns.display(),
        cri.netns_dir.display()
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
    let subnet = cri.daemon.subnet();
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

async fn stopped_sandbox_is_not_ready_and_removed_one_is_gone(cri: Cri<'_>) {
    let web = pod("web");
    let id = cri.run(&web, "web").await;
    let runtime = cri.connect(cri.kind).await;
    assert_eq!(resolve(&runtime, &web).await.id, id);

    cri.daemon.stop_pod_sandbox(&id).await;
    match runtime.sandbox(&web).await {
        Err(RuntimeError::NotReady {
            sandbox_id, reason, ..
        }) => {
            assert_eq!(sandbox_id, id);
            assert_eq!(reason, "SANDBOX_NOTREADY");
        }
        other => panic!("expected NotReady, got {other:?}"),
    }

    cri.daemon.remove_pod_sandbox(&id).await;
    let gone = runtime.sandbox(&web).await;
    assert!(
        matches!(gone, Err(RuntimeError::NoSandbox { .. })),
        "{gone:?}"
    );
}

async fn client_recovers_after_the_runtime_restarts(cri: Cri<'_>) {
    let web = pod("web");
    let id = cri.run(&web, "web").await;
    let runtime = cri.connect(cri.kind).await;
    let before = resolve(&runtime, &web).await;

    cri.daemon.stop_daemon().await;
    match runtime.sandbox(&web).await {
        // Which one depends on whether the daemon removed its socket and how far the
        // connection had got.
        Err(
            RuntimeError::NoSocket { endpoint, .. }
            | RuntimeError::NotListening { endpoint, .. }
            | RuntimeError::Unreachable { endpoint, .. },
        ) => {
            assert_eq!(endpoint, cri.daemon.socket());
        }
        other => panic!("expected an unreachable runtime while it is down, got {other:?}"),
    }

    cri.daemon.start_daemon().await;
    // The very first call after the restart must succeed on the same client: the channel
    // re-dials the socket by itself.
    let after = resolve(&runtime, &web).await;
    assert_eq!(after.id, id);
    assert_eq!(after.netns, before.netns);

    cri.daemon.restart().await;
    assert_eq!(resolve(&runtime, &web).await.id, id);
}

async fn ready_sandbox_wins_over_an_older_stopped_one(cri: Cri<'_>) {
    let web = pod("web");
    let old = cri.run(&web, "web").await;
    cri.daemon.stop_pod_sandbox(&old).await;
    // The kubelet re-creates the sandbox under a new attempt; a new name gives the same effect
    // (a second sandbox with the same pod UID label).
    let new = cri.run(&web, "web-again").await;
    let runtime = cri.connect(cri.kind).await;

    let sandbox = resolve(&runtime, &web).await;
    assert_eq!(sandbox.id, new);
    assert_eq!(sandbox.netns, cri.daemon.sandbox_netns(&new).await);
}

async fn newest_of_two_ready_sandboxes_wins(cri: Cri<'_>) {
    let web = pod("web");
    let first = cri.run(&web, "web").await;
    let second = cri.run(&web, "web-twin").await;
    let runtime = cri.connect(cri.kind).await;

    let sandbox = resolve(&runtime, &web).await;
    assert_ne!(first, second);
    assert_eq!(sandbox.id, second);
}

/// `runtime.kind = "auto"` on an explicit socket speaks CRI and tells the runtime by its name.
async fn auto_selects_the_cri_runtime_on_an_explicit_socket(cri: Cri<'_>) {
    let runtime = cri.connect(RuntimeKind::Auto).await;
    assert!(matches!(runtime, AnyRuntime::Cri(_)));
    assert_eq!(runtime.endpoint(), cri.daemon.socket());
    let version = runtime.version().await.expect("version");
    assert_eq!(version.kind, cri.kind);
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
    testkit::host::stale_socket(&stale);
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
