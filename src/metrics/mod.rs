//! What podagent counts and measures, for Prometheus: how long hot-plugs take, which plugin
//! fails, how many attachments the node holds, and how the API server and the loops are doing.
//!
//! An operator should see that at a glance instead of reading the journal; neither the Go
//! podagent nor Multus' dynamic-networks controller exposes any of it. [`Metrics`] is a cheap
//! handle cloned into each part that has something to count (the controller, the CNI invoker,
//! the API client and the watches); [`server`] serves it with the health endpoints.
//!
//! Labels stay bounded whatever the cluster does: no pod names, fixed sets for commands,
//! outcomes and verbs, and network and plugin names admitted up to a cap, the rest folded into
//! `other`. Network objects and annotations are written by users, so without the cap a loop
//! creating networks would grow the exposition without end.

pub(crate) mod server;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// Distinct network names that get their own label value; later ones are `other`.
const MAX_NETWORK_LABELS: usize = 64;
/// Distinct plugin types that get their own label value; later ones are `other`.
const MAX_PLUGIN_LABELS: usize = 32;
/// The label value every name past a cap shares.
const OTHER: &str = "other";

/// 5 ms to about 82 s: a plugin run, or a hot-plug including retries.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

type Latencies<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
    command: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, Ord, PartialOrd, EncodeLabelSet)]
struct AttachmentLabels {
    network: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabel {
    watch: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabel {
    verb: &'static str,
}

/// How a reconcile ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReconcileOutcome {
    Settled,
    Retry,
    Gone,
    /// The reconcile task panicked; the pod is retried.
    Aborted,
}

impl ReconcileOutcome {
    fn as_str(self) -> &'static str {
        match self {
            ReconcileOutcome::Settled => "settled",
            ReconcileOutcome::Retry => "retry",
            ReconcileOutcome::Gone => "gone",
            ReconcileOutcome::Aborted => "aborted",
        }
    }
}

/// Which watch restarted or re-listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watch {
    Pods,
    Networks,
}

impl Watch {
    fn as_str(self) -> &'static str {
        match self {
            Watch::Pods => "pods",
            Watch::Networks => "networks",
        }
    }
}

/// Names admitted as label values, up to a limit; the set only grows, so a name keeps its
/// series for the life of the process.
#[derive(Debug)]
struct Cap {
    limit: usize,
    admitted: Mutex<BTreeSet<String>>,
}

impl Cap {
    fn new(limit: usize) -> Cap {
        Cap {
            limit,
            admitted: Mutex::new(BTreeSet::new()),
        }
    }

    fn label(&self, name: &str) -> String {
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        if admitted.contains(name) {
            return name.to_owned();
        }
        if admitted.len() < self.limit && name != OTHER {
            admitted.insert(name.to_owned());
            return name.to_owned();
        }
        OTHER.to_owned()
    }
}

/// The attachments on the node, by network and phase, as the controller counts them.
pub(crate) type AttachmentCounts<'a> = std::collections::BTreeMap<(&'a str, &'static str), i64>;

struct Inner {
    registry: Registry,
    attach: Histogram,
    detach: Histogram,
    plugin_runs: Latencies<PluginLabels>,
    reconciles: Family<OutcomeLabel, Counter>,
    pods_in_backoff: Gauge,
    longest_backoff: Gauge<f64, std::sync::atomic::AtomicU64>,
    pods: Gauge,
    attachments: Family<AttachmentLabels, Gauge>,
    /// The attachment series last set, so the ones that went can be removed.
    attachment_series: Mutex<BTreeSet<AttachmentLabels>>,
    watch_restarts: Family<WatchLabel, Counter>,
    relists: Family<WatchLabel, Counter>,
    api_errors: Family<VerbLabel, Counter>,
    events_dropped: Counter,
    networks: Cap,
    plugins: Cap,
}

/// The handle every part counts through; clones share one registry.
#[derive(Clone)]
pub(crate) struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("podagent");
        registry.register(
            "build",
            "podagent's version and the git commit it was built from",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("BUILD_GIT_COMMIT")),
            ]),
        );
        let inner = Inner {
            attach: latency(),
            detach: latency(),
            plugin_runs: Family::new_with_constructor(latency),
            reconciles: Family::default(),
            pods_in_backoff: Gauge::default(),
            longest_backoff: Gauge::default(),
            pods: Gauge::default(),
            attachments: Family::default(),
            attachment_series: Mutex::new(BTreeSet::new()),
            watch_restarts: Family::default(),
            relists: Family::default(),
            api_errors: Family::default(),
            events_dropped: Counter::default(),
            networks: Cap::new(MAX_NETWORK_LABELS),
            plugins: Cap::new(MAX_PLUGIN_LABELS),
            registry: Registry::default(),
        };
        registry.register_with_unit(
            "attach_duration",
            "From seeing an annotation entry added to its interface added (retries included)",
            Unit::Seconds,
            inner.attach.clone(),
        );
        registry.register_with_unit(
            "detach_duration",
            "From seeing an entry removed (or its pod or sandbox gone) to its interface removed",
            Unit::Seconds,
            inner.detach.clone(),
        );
        registry.register_with_unit(
            "cni_plugin_duration",
            "Run time of one CNI plugin run, by plugin type, command and outcome (its exit)",
            Unit::Seconds,
            inner.plugin_runs.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles of one pod, by how they ended (settled, retry, gone, aborted)",
            inner.reconciles.clone(),
        );
        registry.register(
            "pods_in_backoff",
            "Pods waiting for a retry after a failed reconcile",
            inner.pods_in_backoff.clone(),
        );
        registry.register_with_unit(
            "longest_backoff",
            "The longest retry delay now in effect for any pod",
            Unit::Seconds,
            inner.longest_backoff.clone(),
        );
        registry.register(
            "pods",
            "Pods on this node that podagent watches",
            inner.pods.clone(),
        );
        registry.register(
            "attachments",
            "Attachments podagent has recorded, by network and phase (adding, attached, removing)",
            inner.attachments.clone(),
        );
        registry.register(
            "watch_restarts",
            "Watches restarted after a failure or a silent stream, by watch (pods, networks)",
            inner.watch_restarts.clone(),
        );
        registry.register(
            "watch_relists",
            "Fresh lists of a watch after it expired (410 Gone), or for networks after any failure",
            inner.relists.clone(),
        );
        registry.register(
            "api_request_errors",
            "API server requests that failed or were refused, by verb",
            inner.api_errors.clone(),
        );
        registry.register(
            "events_dropped",
            "Kubernetes Events podagent could not record",
            inner.events_dropped.clone(),
        );
        Metrics(Arc::new(Inner { registry, ..inner }))
    }

    /// An added interface, `since` the change that asked for it was seen.
    pub(crate) fn attached(&self, since: Instant) {
        self.0.attach.observe(since.elapsed().as_secs_f64());
    }

    /// A removed interface, `since` the change that asked for it was seen.
    pub(crate) fn detached(&self, since: Instant) {
        self.0.detach.observe(since.elapsed().as_secs_f64());
    }

    /// One plugin run: `command` is the CNI command, `ok` whether the plugin exited 0.
    pub(crate) fn plugin_run(&self, plugin: &str, command: &'static str, ok: bool, took: Duration) {
        let labels = PluginLabels {
            plugin: self.0.plugins.label(plugin),
            command,
            outcome: if ok { "success" } else { "error" },
        };
        self.0
            .plugin_runs
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub(crate) fn reconciled(&self, outcome: ReconcileOutcome) {
        self.0
            .reconciles
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The node as the controller sees it after a reconcile: pods watched, pods in backoff
    /// and the longest delay among them, and the recorded attachments.
    pub(crate) fn node(
        &self,
        pods: usize,
        in_backoff: usize,
        longest: Duration,
        attachments: &AttachmentCounts<'_>,
    ) {
        let inner = &self.0;
        inner.pods.set(gauge_value(pods));
        inner.pods_in_backoff.set(gauge_value(in_backoff));
        inner.longest_backoff.set(longest.as_secs_f64());
        let mut fresh = std::collections::BTreeMap::new();
        for ((network, phase), count) in attachments {
            let labels = AttachmentLabels {
                network: inner.networks.label(network),
                phase,
            };
            *fresh.entry(labels).or_insert(0) += count;
        }
        let mut series = inner
            .attachment_series
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for gone in series.iter().filter(|s| !fresh.contains_key(*s)) {
            inner.attachments.remove(gone);
        }
        for (labels, count) in &fresh {
            inner.attachments.get_or_create(labels).set(*count);
        }
        *series = fresh.into_keys().collect();
    }

    pub(crate) fn watch_restarted(&self, watch: Watch) {
        count(&self.0.watch_restarts, watch);
    }

    pub(crate) fn relisted(&self, watch: Watch) {
        count(&self.0.relists, watch);
    }

    pub(crate) fn api_error(&self, verb: &'static str) {
        self.0.api_errors.get_or_create(&VerbLabel { verb }).inc();
    }

    pub(crate) fn event_dropped(&self) {
        self.0.events_dropped.inc();
    }

    /// The OpenMetrics text exposition of everything.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.0.registry);
        text
    }
}

fn count(family: &Family<WatchLabel, Counter>, watch: Watch) {
    let label = WatchLabel {
        watch: watch.as_str(),
    };
    family.get_or_create(&label).inc();
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_past_the_cap_fold_into_other() {
        let cap = Cap::new(2);
        assert_eq!(cap.label("a"), "a");
        assert_eq!(cap.label("b"), "b");
        assert_eq!(cap.label("c"), OTHER);
        assert_eq!(cap.label("a"), "a", "an admitted name keeps its label");
        assert_eq!(Cap::new(5).label(OTHER), OTHER);
    }

    #[test]
    fn attachment_series_that_went_are_removed() {
        let metrics = Metrics::new();
        let counts = AttachmentCounts::from([(("a", "attached"), 2), (("b", "adding"), 1)]);
        metrics.node(3, 0, Duration::ZERO, &counts);
        let text = metrics.encode();
        assert!(
            text.contains(r#"podagent_attachments{network="a",phase="attached"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"podagent_attachments{network="b",phase="adding"} 1"#),
            "{text}"
        );
        metrics.node(
            3,
            0,
            Duration::ZERO,
            &AttachmentCounts::from([(("a", "attached"), 1)]),
        );
        let text = metrics.encode();
        assert!(
            text.contains(r#"podagent_attachments{network="a",phase="attached"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"network="b""#), "{text}");
        assert!(text.contains("podagent_pods 3"), "{text}");
        assert!(text.contains("podagent_build_info{"), "{text}");
    }
}
