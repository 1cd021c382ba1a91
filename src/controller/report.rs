//! Feedback to the pod's owner: Kubernetes Events and the `network-status` annotation.
//!
//! A user who edits a `networks` annotation looks at the pod, not at a node's journal, so every
//! outcome podagent reaches shows up on the pod itself: an Event per attachment added or
//! removed, a Warning per failure, and an annotation listing what is plugged in now, shaped like
//! the NPWG `network-status` entries that Multus users already read.
//!
//! Events are aggregated: the same (pod, reason, message) is one Event object whose `series`
//! count goes up on each repeat, so a plugin failing on every retry does not flood the API
//! server. Its name is derived from that triple, so a restarted podagent finds and counts on
//! the same object instead of creating a second one.
//!
//! The status annotation is written with a JSON merge patch that names only its own key, so
//! other annotations (including the `networks` one a user may be editing at the same moment)
//! are never overwritten.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::json;

use crate::cni::CniResult;
use crate::kubeapi::{KubeClient, KubeError, Request};
use crate::netns::Link;
use crate::pod::PodRef;
use crate::store::{Phase, PodRecord};

/// The annotation podagent writes the attachments it manages into.
pub(crate) const STATUS_ANNOTATION: &str = "podagent.kaloom.com/network-status";
/// `reportingController` / `reportingComponent` of every Event podagent records.
pub(crate) const REPORTING_COMPONENT: &str = "podagent";
/// The API server refuses Event notes longer than this (bytes).
const MAX_NOTE_BYTES: usize = 1024;
/// Room left in an Event name for the pod name (names are at most 253 characters).
const MAX_NAME_PREFIX: usize = 200;

/// Whether an Event reports something normal or something a person should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Severity {
    Normal,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Normal => "Normal",
            Severity::Warning => "Warning",
        }
    }
}

/// One Event about a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Notice {
    pub(crate) severity: Severity,
    /// `AddedInterface`, `FailedAddingInterface`, …
    pub(crate) reason: &'static str,
    /// What podagent was doing: `AddInterface`, `RemoveInterface`, `ReadAnnotation`, `Plan`.
    pub(crate) action: &'static str,
    pub(crate) note: String,
}

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
    #[error("writing the {STATUS_ANNOTATION} annotation of pod {pod}: {source}")]
    Status { pod: String, source: KubeError },
}

/// Where feedback goes: the API server in the daemon, a recorder in unit tests.
pub(crate) trait Feedback: Send + Sync {
    /// Records `notice` on the pod, aggregating repeats.
    fn event<'a>(
        &'a self,
        pod: &'a PodRef,
        notice: Notice,
    ) -> BoxFuture<'a, Result<(), ReportError>>;

    /// Sets (`Some`) or removes (`None`) the status annotation.
    fn status<'a>(
        &'a self,
        pod: &'a PodRef,
        value: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), ReportError>>;

    /// Drops what is remembered about a pod that is gone.
    fn forget(&self, uid: &str);
}

/// One entry of the status annotation (NPWG `network-status` shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NetworkStatus {
    pub(crate) name: String,
    pub(crate) interface: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) ips: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mac: Option<String>,
}

/// The status annotation value for `record`: its attached networks, with addresses and MAC
/// from the CNI result when there is one (podagent made the attachment), else from the link
/// seen in the netns (an adopted attachment). `None` when podagent manages nothing in the pod.
pub(crate) fn status_value(record: Option<&PodRecord>, links: &[Link]) -> Option<String> {
    let entries: Vec<NetworkStatus> = record
        .into_iter()
        .flat_map(|r| r.attachments.values())
        .filter(|a| a.phase == Phase::Attached)
        .map(|a| {
            let result = a.result.clone().and_then(|raw| CniResult::parse(raw).ok());
            let link = links.iter().find(|l| l.name == a.ifname);
            let (ips, mac) = match &result {
                Some(result) if result.sandbox_interface(&a.ifname).is_some() => (
                    result
                        .ips_of(&a.ifname)
                        .iter()
                        .map(|c| c.addr.to_string())
                        .collect(),
                    result.mac_of(&a.ifname).map(str::to_owned),
                ),
                _ => (
                    link.map(|l| l.addresses.iter().map(|a| a.ip.to_string()).collect())
                        .unwrap_or_default(),
                    link.and_then(|l| l.mac.clone()),
                ),
            };
            NetworkStatus {
                name: a.selection.name.clone(),
                interface: a.ifname.clone(),
                ips,
                mac,
            }
        })
        .collect();
    if entries.is_empty() {
        None
    } else {
        serde_json::to_string(&entries).ok()
    }
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

    async fn record(&self, pod: &PodRef, notice: Notice) -> Result<(), ReportError> {
        let note = truncate(&notice.note, MAX_NOTE_BYTES);
        let key = (notice.reason, note.clone());
        let api: Api<Event> = Api::namespaced(self.kube.client.clone(), &pod.namespace);
        let fail = |verb: &'static str, e: kube::Error| ReportError::Event {
            pod: pod.to_string(),
            reason: notice.reason,
            source: Request {
                verb,
                resource: "events.events.k8s.io",
                scope: format!("namespace {}", pod.namespace),
            }
            .error(&self.kube.url, e),
        };
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seen = match self.seen(&pod.uid, &key) {
            Some(seen) => seen,
            None => {
                let name = event_name(pod, notice.reason, &note);
                let event = Event {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(pod.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    event_time: Some(now.clone()),
                    action: Some(notice.action.into()),
                    reason: Some(notice.reason.into()),
                    note: Some(note),
                    type_: Some(notice.severity.as_str().into()),
                    reporting_controller: Some(REPORTING_COMPONENT.into()),
                    reporting_instance: Some(self.node.clone()),
                    regarding: Some(ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(pod.name.clone()),
                        namespace: Some(pod.namespace.clone()),
                        uid: Some(pod.uid.clone()),
                        ..ObjectReference::default()
                    }),
                    ..Event::default()
                };
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
            last_observed_time: now,
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
        value: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), ReportError>> {
        Box::pin(async move {
            let api: Api<Pod> = Api::namespaced(self.kube.client.clone(), &pod.namespace);
            // Only our key: a merge patch leaves every other annotation as it is, and a null
            // removes ours.
            let patch = json!({"metadata": {"annotations": {STATUS_ANNOTATION: value}}});
            api.patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
                .map_err(|e| ReportError::Status {
                    pod: pod.to_string(),
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

/// `<pod name>.<16 hex>`, stable for one (pod uid, reason, note).
fn event_name(pod: &PodRef, reason: &str, note: &str) -> String {
    let mut hasher = DefaultHasher::new();
    (&pod.uid, reason, note).hash(&mut hasher);
    format!(
        "{}.{:016x}",
        truncate(&pod.name, MAX_NAME_PREFIX).trim_end_matches(['.', '-']),
        hasher.finish()
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
    use crate::annotation::NetworkSelection;
    use crate::netns::{Address, OperState};
    use crate::store::Attachment;

    fn record(attachments: Vec<Attachment>) -> PodRecord {
        PodRecord {
            uid: "u1".into(),
            namespace: "ns".into(),
            name: "web".into(),
            sandbox_id: "s1".into(),
            netns: "/var/run/netns/x".into(),
            attachments: attachments
                .into_iter()
                .map(|a| (a.selection.name.clone(), a))
                .collect(),
        }
    }

    fn selection(name: &str) -> NetworkSelection {
        NetworkSelection::named(name)
    }

    #[test]
    fn status_lists_attached_networks_from_results_and_links() {
        let mut green = Attachment::new(selection("green"), Phase::Attached);
        green.result = Some(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "net9f27410725ab", "mac": "0a:00:00:00:00:01", "sandbox": "/x"}],
            "ips": [{"address": "198.18.128.5/24", "interface": 0}]
        }));
        let blue = Attachment::new(selection("blue"), Phase::Attached);
        let red = Attachment::new(selection("red"), Phase::Adding);
        let links = [Link {
            name: "net48d6215903df".into(),
            index: 3,
            mac: Some("0a:00:00:00:00:02".into()),
            oper_state: OperState::Up,
            addresses: vec![Address {
                ip: "198.18.128.6".parse().expect("ip"),
                prefix_len: 24,
            }],
        }];
        let value = status_value(Some(&record(vec![green, blue, red])), &links).expect("status");
        let parsed: serde_json::Value = serde_json::from_str(&value).expect("json");
        assert_eq!(
            parsed,
            json!([
                {"name": "blue", "interface": "net48d6215903df", "ips": ["198.18.128.6"], "mac": "0a:00:00:00:00:02"},
                {"name": "green", "interface": "net9f27410725ab", "ips": ["198.18.128.5"], "mac": "0a:00:00:00:00:01"}
            ])
        );
    }

    #[test]
    fn nothing_attached_means_no_status() {
        assert_eq!(status_value(None, &[]), None);
        let adding = Attachment::new(selection("red"), Phase::Adding);
        assert_eq!(status_value(Some(&record(vec![adding])), &[]), None);
    }

    #[test]
    fn event_names_are_stable_per_reason_and_note_and_valid() {
        let pod = PodRef {
            uid: "u1".into(),
            namespace: "ns".into(),
            name: "x".repeat(250),
        };
        let a = event_name(&pod, "FailedAddingInterface", "boom");
        assert_eq!(a, event_name(&pod, "FailedAddingInterface", "boom"));
        assert_ne!(a, event_name(&pod, "FailedAddingInterface", "bang"));
        assert!(a.len() <= 253, "{}", a.len());
    }

    #[test]
    fn truncate_cuts_at_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
