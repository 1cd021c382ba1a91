//! The API-server side of feedback: Events on the pod and the status annotation.
//!
//! What to say is decided in `controller::report`; this module only delivers it, through the
//! [`Feedback`] trait so the reconciler can be tested against a recorder.
//!
//! Events are aggregated: the same (pod, reason, note) is one Event object whose `series`
//! count goes up on each repeat, so a plugin failing on every retry does not flood the API
//! server. Its name is derived from that triple with md5, a hash that never changes between
//! Rust releases, so a restarted or upgraded podagent finds and counts on the same object
//! instead of creating a second one.
//!
//! One function builds an Event object ([`event_object`]): the permission check's dry run
//! (`podagent check`) goes through it too, so what the check proves the API server admits is
//! exactly what podagent records.
//!
//! The status annotation is written with a JSON merge patch that names only its own key, so
//! other annotations (including the `networks` one a user may be editing at the same moment)
//! are never overwritten.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use md5::{Digest, Md5};
use serde_json::json;

use super::{KubeClient, KubeError, Request};
use crate::controller::report::{Notice, Severity};
use crate::pod::PodRef;

/// `reportingController` of every Event podagent records.
const REPORTING_COMPONENT: &str = "podagent";
/// The API server refuses Event notes longer than this (bytes).
const MAX_NOTE_BYTES: usize = 1024;
/// Room left in an Event name for the pod name (names are at most 253 characters).
const MAX_NAME_PREFIX: usize = 200;
/// Hex digits of the md5 digest in an Event name.
const NAME_HASH_HEX_CHARS: usize = 16;
const EVENTS: &str = "events.events.k8s.io";

/// Why feedback could not be delivered. Never fatal to a reconcile: the attachment itself is
/// what matters, the feedback is retried on the next reconcile.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    #[error("recording Event {reason} on pod {pod}: {source}")]
    Event {
        pod: String,
        reason: &'static str,
        source: KubeError,
    },
    #[error("writing the {key} annotation of pod {pod}: {source}")]
    Status {
        pod: String,
        key: &'static str,
        source: KubeError,
    },
}

/// Where feedback goes: the API server in the daemon, a recorder in unit tests.
pub(crate) trait Feedback: Send + Sync {
    /// Records `notice` on the pod, aggregating repeats.
    fn event<'a>(
        &'a self,
        pod: &'a PodRef,
        notice: Notice,
    ) -> BoxFuture<'a, Result<(), ReportError>>;

    /// Sets (`Some`) or removes (`None`) a status annotation.
    fn status<'a>(
        &'a self,
        pod: &'a PodRef,
        write: StatusWrite<'a>,
    ) -> BoxFuture<'a, Result<(), ReportError>>;

    /// Drops what is remembered about a pod that is gone.
    fn forget(&self, uid: &str);
}

/// One status annotation write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatusWrite<'a> {
    pub(crate) key: &'static str,
    /// `None` removes the annotation.
    pub(crate) value: Option<&'a str>,
    /// The pod's resourceVersion the value was computed from: the write fails with 409 if the
    /// pod changed since (a read-modify-write of an annotation others write too).
    pub(crate) precondition: Option<&'a str>,
}

impl ReportError {
    /// Whether the API server refused a status write because the pod changed meanwhile.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(
            self,
            ReportError::Status {
                source: KubeError::Api { code: 409, .. },
                ..
            }
        )
    }
}

/// How an Event object is named.
enum Naming {
    /// A fixed name, so repeats find the object.
    Fixed(String),
    /// A prefix the API server completes (a dry run that is never looked up again).
    Generated(&'static str),
}

/// The Event object for `notice` about `regarding`, recorded by podagent on `node`.
fn event_object(
    naming: Naming,
    namespace: &str,
    regarding: ObjectReference,
    notice: &Notice,
    node: &str,
) -> Event {
    let (name, generate_name) = match naming {
        Naming::Fixed(name) => (Some(name), None),
        Naming::Generated(prefix) => (None, Some(prefix.to_owned())),
    };
    Event {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        event_time: Some(now()),
        action: Some(notice.action.into()),
        reason: Some(notice.reason.into()),
        note: Some(truncate(&notice.note, MAX_NOTE_BYTES)),
        type_: Some(severity_type(notice.severity).into()),
        reporting_controller: Some(REPORTING_COMPONENT.into()),
        reporting_instance: Some(node.to_owned()),
        regarding: Some(regarding),
        ..Event::default()
    }
}

/// The Event `type` of a severity.
fn severity_type(severity: Severity) -> &'static str {
    match severity {
        Severity::Normal => "Normal",
        Severity::Warning => "Warning",
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Proves podagent may record Events: a server-side dry-run create of one, which checks
/// authentication, RBAC and admission without storing anything.
pub(crate) async fn can_create_events(kube: &KubeClient, node: &str) -> Result<(), KubeError> {
    let namespace = "default";
    let request = Request {
        verb: "create",
        resource: EVENTS,
        scope: format!("namespace {namespace}"),
    };
    let notice = Notice {
        severity: Severity::Normal,
        reason: "PermissionCheck",
        action: "Check",
        note: "podagent check: dry-run, never stored".into(),
    };
    let regarding = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.into()),
        ..ObjectReference::default()
    };
    let event = event_object(
        Naming::Generated("podagent-check-"),
        namespace,
        regarding,
        &notice,
        node,
    );
    let api: Api<Event> = Api::namespaced(kube.client.clone(), namespace);
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    api.create(&params, &event)
        .await
        .map(drop)
        .map_err(|e| request.error(&kube.url, e))
}

/// (reason, note): what makes two Events on one pod the same Event.
type EventKey = (&'static str, String);

/// What is known about one aggregated Event.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    count: i32,
}

/// Feedback through the API server.
pub(crate) struct KubeFeedback {
    kube: KubeClient,
    node: String,
    /// Keyed by pod uid, then by (reason, note).
    seen: Mutex<HashMap<String, BTreeMap<EventKey, Seen>>>,
}

impl KubeFeedback {
    pub(crate) fn new(kube: KubeClient, node: &str) -> KubeFeedback {
        KubeFeedback {
            kube,
            node: node.to_owned(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn seen(&self, uid: &str, key: &EventKey) -> Option<Seen> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(uid).and_then(|m| m.get(key)).cloned()
    }

    fn remember(&self, uid: &str, key: EventKey, entry: Seen) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.entry(uid.to_owned()).or_default().insert(key, entry);
    }

    async fn record(&self, pod: &PodRef, mut notice: Notice) -> Result<(), ReportError> {
        notice.note = truncate(&notice.note, MAX_NOTE_BYTES);
        let key = (notice.reason, notice.note.clone());
        let api: Api<Event> = Api::namespaced(self.kube.client.clone(), &pod.namespace);
        let fail = |verb: &'static str, e: kube::Error| ReportError::Event {
            pod: pod.to_string(),
            reason: notice.reason,
            source: Request {
                verb,
                resource: EVENTS,
                scope: format!("namespace {}", pod.namespace),
            }
            .error(&self.kube.url, e),
        };
        let seen = match self.seen(&pod.uid, &key) {
            Some(seen) => seen,
            None => {
                let name = event_name(pod, notice.reason, &notice.note);
                let regarding = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.name.clone()),
                    namespace: Some(pod.namespace.clone()),
                    uid: Some(pod.uid.clone()),
                    ..ObjectReference::default()
                };
                let event = event_object(
                    Naming::Fixed(name.clone()),
                    &pod.namespace,
                    regarding,
                    &notice,
                    &self.node,
                );
                match api.create(&PostParams::default(), &event).await {
                    Ok(_) => {
                        self.remember(&pod.uid, key, Seen { name, count: 1 });
                        return Ok(());
                    }
                    // Recorded by an earlier run of podagent: count on the same object.
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        let existing = api.get(&name).await.map_err(|e| fail("get", e))?;
                        let count = existing.series.map_or(1, |s| s.count);
                        Seen { name, count }
                    }
                    Err(e) => return Err(fail("create", e)),
                }
            }
        };
        let count = seen.count.saturating_add(1);
        let series = EventSeries {
            count,
            last_observed_time: now(),
        };
        let patch = json!({ "series": series });
        match api
            .patch(&seen.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.remember(
                    &pod.uid,
                    key,
                    Seen {
                        name: seen.name,
                        count,
                    },
                );
                Ok(())
            }
            Err(e) => {
                // Expired or deleted: the next repeat creates it again.
                self.forget_one(&pod.uid, &key);
                Err(fail("patch", e))
            }
        }
    }

    fn forget_one(&self, uid: &str, key: &EventKey) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = seen.get_mut(uid) {
            m.remove(key);
        }
    }
}

impl Feedback for KubeFeedback {
    fn event<'a>(
        &'a self,
        pod: &'a PodRef,
        notice: Notice,
    ) -> BoxFuture<'a, Result<(), ReportError>> {
        Box::pin(self.record(pod, notice))
    }

    fn status<'a>(
        &'a self,
        pod: &'a PodRef,
        write: StatusWrite<'a>,
    ) -> BoxFuture<'a, Result<(), ReportError>> {
        Box::pin(async move {
            let api: Api<Pod> = Api::namespaced(self.kube.client.clone(), &pod.namespace);
            // Only one key: a merge patch leaves every other annotation as it is, and a null
            // removes it. A resourceVersion in the patch makes the API server refuse it (409)
            // when the pod changed since that version was read.
            let mut patch = json!({"metadata": {"annotations": {write.key: write.value}}});
            if let Some(version) = write.precondition {
                patch["metadata"]["resourceVersion"] = json!(version);
            }
            api.patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
                .map_err(|e| ReportError::Status {
                    pod: pod.to_string(),
                    key: write.key,
                    source: Request {
                        verb: "patch",
                        resource: "pods",
                        scope: format!("namespace {}", pod.namespace),
                    }
                    .error(&self.kube.url, e),
                })
        })
    }

    fn forget(&self, uid: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.remove(uid);
    }
}

/// `<pod name>.<16 hex of md5>`, the same for one (pod uid, reason, note) in every podagent
/// version. Each part is length-prefixed, so no two triples hash the same bytes.
fn event_name(pod: &PodRef, reason: &str, note: &str) -> String {
    let mut hasher = Md5::new();
    for part in [pod.uid.as_str(), reason, note] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let hex: String = digest[..NAME_HASH_HEX_CHARS / 2]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!(
        "{}.{hex}",
        truncate(&pod.name, MAX_NAME_PREFIX).trim_end_matches(['.', '-']),
    )
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> PodRef {
        PodRef {
            uid: "u1".into(),
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn event_names_are_stable_per_reason_and_note_and_valid() {
        let pod = pod(&"x".repeat(250));
        let a = event_name(&pod, "FailedAddingInterface", "boom");
        assert_eq!(a, event_name(&pod, "FailedAddingInterface", "boom"));
        assert_ne!(a, event_name(&pod, "FailedAddingInterface", "bang"));
        assert!(a.len() <= 253, "{}", a.len());
    }

    #[test]
    fn event_name_is_pinned_across_releases() {
        // Pinned on purpose: a restarted podagent finds the Events of the one before it by this
        // name. Changing how it is derived makes every upgrade start new Events instead of
        // counting repeats on the existing ones.
        let name = event_name(
            &PodRef {
                uid: "0b6c2f4e-3a1d-4c5e-9f7a-2d8e6b1c0a93".into(),
                namespace: "team".into(),
                name: "web-0".into(),
            },
            "FailedAddingInterface",
            "network green: adding interface net9f27410725ab failed: refused",
        );
        assert_eq!(name, "web-0.3ff7da089da28abd");
    }

    #[test]
    fn event_name_parts_cannot_run_into_each_other() {
        let joined = |uid: &str, reason: &str| {
            event_name(
                &PodRef {
                    uid: uid.into(),
                    ..pod("web")
                },
                reason,
                "n",
            )
        };
        assert_ne!(joined("ab", "c"), joined("a", "bc"));
    }

    #[test]
    fn one_builder_for_every_event() {
        let notice = Notice {
            severity: Severity::Warning,
            reason: "FailedAddingInterface",
            action: "AddInterface",
            note: "é".repeat(MAX_NOTE_BYTES),
        };
        let regarding = ObjectReference {
            name: Some("web".into()),
            ..ObjectReference::default()
        };
        let event = event_object(
            Naming::Fixed("web.0".into()),
            "ns",
            regarding,
            &notice,
            "node-1",
        );
        assert_eq!(event.metadata.name.as_deref(), Some("web.0"));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(
            event.reporting_controller.as_deref(),
            Some(REPORTING_COMPONENT)
        );
        assert_eq!(event.reporting_instance.as_deref(), Some("node-1"));
        assert!(event.note.is_some_and(|n| n.len() <= MAX_NOTE_BYTES));
    }

    #[test]
    fn truncate_cuts_at_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
