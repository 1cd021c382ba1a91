//! The daemon: startup order, the watch and work loops, the watchdog, and graceful shutdown.
//!
//! Startup is ordered so that `READY=1` means something: the API server has answered the
//! initial list of this node's pods and the container runtime has answered a version call.
//! Until then podagent keeps retrying with backoff and says what it is waiting for in
//! `STATUS=`, because at boot the API server or the runtime are often simply not up yet, and
//! exiting would only make systemd restart it into the same wait. A kubeconfig that cannot be
//! read is different: no retry fixes it, so it ends the process.
//!
//! Shutdown is handled once (SIGTERM or SIGINT, also during startup): `STOPPING=1`, stop the
//! watch, let the work loop finish what it is doing within the configured grace period, exit 0.
//!
//! In direct mode the cluster's `Network` objects are listed before `READY=1` too, so no pod
//! is told a network is missing that merely had not been read yet; their watch then runs
//! beside the pod watch and wakes the pods whose networks change.
//!
//! The work loop is the hot-plug controller (`crate::controller`): it starts from the durable
//! records and the initial list, so attachments already in place are adopted rather than added
//! again, and records of pods that disappeared while podagent was down are forgotten. Stopping
//! closes its event stream; it then starts nothing new and waits for the reconciles (and CNI
//! calls) in flight, which the grace period bounds.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::cni::{HostRootError, Invoker};
use crate::config::Config;
use crate::controller::report::NPWG_STATUS_ANNOTATION;
use crate::controller::{Context, Controller, Summary};
use crate::error_chain;
use crate::kubeapi::events::KubeFeedback;
use crate::kubeapi::{
    self, Credentials, KubeClient, KubeError, NetworkWatcher, PodView, PodWatcher,
};
use crate::metrics::Metrics;
use crate::metrics::server::{self, Health, ListenError};
use crate::netns::Netlink;
use crate::networks::{Mode, Networks};
use crate::runtime::{self, AnyRuntime, Runtime};
use crate::store::{Store, StoreError};
use crate::systemd::{self, Liveness, Message, Notifier};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("cannot use the state dir: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    HostRoot(#[from] HostRootError),
}

const RETRY_START: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(30);
/// Longest watch request: kube-apiserver's own default range ends near five minutes.
const MAX_WATCH_TIMEOUT: Duration = Duration::from_secs(290);
/// The shortest watch whose before-deadline bookmark still comes reliably (see [`Cadence`]).
const MIN_WATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Events from the watch waiting for the work loop; a full channel blocks the watch, which the
/// watchdog then notices.
const EVENT_BACKLOG: usize = 256;

/// How often the loops must show progress, derived from systemd's watchdog timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cadence {
    /// `timeoutSeconds` of each watch request: the server answers at least this often.
    pub(crate) watch_timeout: Duration,
    /// How often the idle work loop beats.
    pub(crate) work_tick: Duration,
    /// Silence after which a loop counts as stalled.
    pub(crate) stale_after: Duration,
}

impl Cadence {
    /// With a watchdog timeout W, the watch is renewed every W/4 (5 s to 290 s), so the
    /// server's before-deadline bookmark comes at least that often, and a loop is stalled after
    /// three such periods (the unit's 60 s renews watches every 15 s). kube-apiserver sends that
    /// bookmark about 2 s before the deadline from a once-a-second timer, so a shorter watch
    /// leaves it no slack: with 3 s watches (`WatchdogSec=12`) a loaded 2-core node once went
    /// 10 s without one, and systemd would have restarted a healthy podagent. A short
    /// `WatchdogSec=` therefore detects a stall later than W, never falsely. Without a
    /// watchdog, watches last the usual five minutes.
    pub(crate) fn for_watchdog(timeout: Option<Duration>) -> Cadence {
        let watch_timeout = timeout.map_or(MAX_WATCH_TIMEOUT, |w| {
            Duration::from_secs((w / 4).as_secs()).clamp(MIN_WATCH_TIMEOUT, MAX_WATCH_TIMEOUT)
        });
        Cadence {
            watch_timeout,
            work_tick: (watch_timeout / 2).max(Duration::from_millis(500)),
            stale_after: watch_timeout * 3,
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl Future<Output = &'static str>, DaemonError> {
    let install = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| DaemonError::Signal {
            signal: name,
            source,
        })
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// The status annotation each pod view keeps: in npwg mode podagent merges into the NPWG one.
fn status_key(config: &Config) -> Option<&'static str> {
    (config.networks.mode == Mode::Npwg).then_some(NPWG_STATUS_ANNOTATION)
}

/// Runs `attempt` until it succeeds, reporting each failure in the log and in `STATUS=`.
async fn retry<T, E: std::error::Error, F: Future<Output = Result<T, E>>>(
    notifier: &dyn Notifier,
    waiting_for: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let mut delay = RETRY_START;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => {
                let error = error_chain::render(&e);
                tracing::warn!(error = %error, retry_in = ?delay, "waiting for {waiting_for}");
                notifier.notify(Message::Status(format!(
                    "waiting for {waiting_for}: {error}"
                )));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_CAP);
            }
        }
    }
}

fn status_line(summary: &Summary, node: &str) -> String {
    format!(
        "watching {} pods on {node}, {} attachments",
        summary.pods, summary.wanted
    )
}

/// Runs podagent until SIGTERM/SIGINT.
pub async fn run(config: Config, notifier: Arc<dyn Notifier>) -> Result<(), DaemonError> {
    let shutdown = shutdown_signal()?;
    tokio::pin!(shutdown);
    let node = config.node_name.clone();
    tracing::info!(
        node = %node,
        annotation_key = %config.annotation_key,
        networks_mode = config.networks.mode.as_str(),
        "podagent starting"
    );

    config.cni.check_host_root()?;
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    let listener = match config.metrics_listen {
        Some(addr) => {
            let listener = server::bind(addr).await?;
            tracing::info!(address = %addr, "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(server::serve(
                listener,
                metrics.clone(),
                health.clone(),
            )))
        }
        None => None,
    };
    let watchdog = systemd::watchdog_ping_interval();
    let cadence = Cadence::for_watchdog(watchdog.map(|ping| ping * 2));
    let startup = start(&config, notifier.as_ref(), &cadence, &metrics);
    let Started {
        kube,
        pods,
        version,
        runtime,
        catalog,
    } = tokio::select! {
        started = startup => started?,
        signal = &mut shutdown => {
            tracing::info!(signal, "stopping during startup");
            notifier.notify(Message::Stopping);
            return Ok(());
        }
    };

    let store = Store::open(&config.state_dir)?;
    let loaded = store.load_all()?;
    for bad in &loaded.bad_files {
        tracing::warn!(error = %error_chain::render(&bad.error), moved_to = ?bad.moved_to, "unusable state file set aside");
    }
    tracing::info!(
        pods = pods.len(),
        records = loaded.records.len(),
        node = %node,
        "ready"
    );
    notifier.notify(Message::Ready);

    let networks = Networks::new(config.networks.clone(), &config.cni.conf_dir);
    let (network_changes, changed_networks) = mpsc::channel(EVENT_BACKLOG);
    let network_watch = match catalog {
        Some(catalog) => {
            networks.replace(catalog);
            let watcher = NetworkWatcher::new(kube.clone(), networks.mode());
            Some(tokio::spawn(watcher.run(networks.clone(), network_changes)))
        }
        None => None,
    };
    let invoker = Invoker::new(config.cni.clone()).with_metrics(metrics.clone());
    if networks.mode() == Mode::Kactus
        && let Ok(primary) = invoker.primary_config().await
        && let Err(problem) =
            crate::check::kactus_primary(&primary, config.networks.accept_other_primary)
    {
        tracing::warn!(problem = %problem, "the primary CNI config is not kactus");
    }
    let context = Context {
        runtime: Arc::new(runtime),
        cni: Arc::new(invoker),
        netns: Arc::new(Netlink),
        store,
        feedback: Arc::new(KubeFeedback::new(kube.clone(), &node)),
        networks,
        settings: config.reconcile.clone(),
        metrics,
    };
    let controller = Controller::new(context, loaded.records, pods);

    let liveness = Liveness::new(cadence.stale_after);
    health.started(liveness.clone());
    let (events, receiver) = mpsc::channel(EVENT_BACKLOG);
    let watcher = PodWatcher::new(
        kube,
        &node,
        &config.annotation_key,
        status_key(&config),
        cadence.watch_timeout,
    );
    let watch = tokio::spawn(watcher.run(version, events, liveness.clone()));
    let beat = {
        let (liveness, notifier) = (liveness.clone(), notifier.clone());
        let mut status = String::new();
        move |summary: Summary| {
            liveness.work_beat();
            let fresh = status_line(&summary, &node);
            if fresh != status {
                notifier.notify(Message::Status(fresh.clone()));
                status = fresh;
            }
        }
    };
    let mut work =
        tokio::spawn(controller.run(receiver, changed_networks, cadence.work_tick, beat));
    let watchdog = watchdog
        .map(|interval| tokio::spawn(systemd::watchdog(notifier.clone(), liveness, interval)));

    let signal = tokio::select! {
        signal = &mut shutdown => signal,
        ended = &mut work => {
            // The work loop only ends when the watch does, which only happens on shutdown.
            tracing::error!(?ended, "work loop ended unexpectedly");
            "work loop ended"
        }
    };
    tracing::info!(signal, grace = ?config.shutdown_grace, "stopping");
    notifier.notify(Message::Stopping);
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    // Ending the watch closes the event channel: the work loop drains it and returns.
    watch.abort();
    if let Some(network_watch) = network_watch {
        network_watch.abort();
    }
    if let Some(listener) = listener {
        listener.abort();
    }
    if tokio::time::timeout(config.shutdown_grace, &mut work)
        .await
        .is_err()
    {
        tracing::warn!(grace = ?config.shutdown_grace, "work still running after the grace period, exiting anyway");
        work.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// What startup waited for.
struct Started {
    kube: KubeClient,
    pods: Vec<PodView>,
    /// The resourceVersion of the pod list.
    version: String,
    runtime: AnyRuntime,
    /// Direct mode: every `Network` object at startup.
    catalog: Option<crate::networks::Catalog>,
}

/// Connects to the API server and the runtime; returns once both have answered (and, in
/// direct mode, the network objects are listed).
async fn start(
    config: &Config,
    notifier: &dyn Notifier,
    cadence: &Cadence,
    metrics: &Metrics,
) -> Result<Started, DaemonError> {
    let credentials = Credentials::resolve(&config.kube);
    let kube = kubeapi::connect(&credentials, metrics).await?;
    tracing::info!(url = %kube.url, credentials = %credentials, "connecting to the API server");
    notifier.notify(Message::Status(format!("connecting to {}", kube.url)));
    let watcher = PodWatcher::new(
        kube.clone(),
        &config.node_name,
        &config.annotation_key,
        status_key(config),
        cadence.watch_timeout,
    );
    let waiting = format!("API server {}", kube.url);
    let (pods, version) = retry(notifier, &waiting, || watcher.list()).await;
    tracing::info!(pods = pods.len(), node = %config.node_name, "listed this node's pods");
    let catalog = match config.networks.mode {
        Mode::Kactus => None,
        mode @ (Mode::Direct | Mode::Npwg) => {
            let watcher = NetworkWatcher::new(kube.clone(), mode);
            let what = format!("the {} objects", mode.object_kind());
            let catalog = retry(notifier, &what, || watcher.list()).await;
            tracing::info!(
                networks = catalog.len(),
                kind = mode.object_kind(),
                "listed the network objects"
            );
            Some(catalog)
        }
    };

    let settings = &config.runtime;
    let target = settings.endpoint.as_ref().map_or_else(
        || format!("{} (default sockets)", settings.kind),
        |endpoint| endpoint.display().to_string(),
    );
    notifier.notify(Message::Status(format!(
        "waiting for container runtime at {target}"
    )));
    let waiting = format!("container runtime at {target}");
    let (runtime, version_info) = retry(notifier, &waiting, || async {
        let runtime = runtime::connect(settings).await?;
        let version = runtime.version().await?;
        Ok::<_, runtime::RuntimeError>((runtime, version))
    })
    .await;
    let endpoint = runtime.endpoint().to_path_buf();
    tracing::info!(
        runtime = %version_info.name,
        version = %version_info.version,
        endpoint = %endpoint.display(),
        "container runtime answered"
    );
    Ok(Started {
        kube,
        pods,
        version,
        runtime,
        catalog,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cadence_follows_the_watchdog() {
        let c = Cadence::for_watchdog(Some(Duration::from_secs(120)));
        assert_eq!(c.watch_timeout, Duration::from_secs(30));
        assert_eq!(c.stale_after, Duration::from_secs(90));
        assert!(c.stale_after < Duration::from_secs(120) + c.watch_timeout);
        let short = Cadence::for_watchdog(Some(Duration::from_secs(12)));
        assert_eq!(
            short.watch_timeout, MIN_WATCH_TIMEOUT,
            "long enough for the bookmark"
        );
        assert_eq!(short.stale_after, Duration::from_secs(15));
        let none = Cadence::for_watchdog(None);
        assert_eq!(none.watch_timeout, MAX_WATCH_TIMEOUT);
    }
}
