//! The pods of this node: a list-then-watch loop that feeds a slim [`PodView`] cache.
//!
//! Only `spec.nodeName=<node>` pods are requested, and of each pod only what a reconcile needs
//! is kept (see DESIGN §2a), so memory stays proportional to the node, not the cluster.
//!
//! The loop is hand-written rather than kube-runtime's `watcher` because the watchdog needs to
//! see the watch deliver even when nothing changes, and kube-runtime swallows bookmarks. Here
//! every item (pod event or bookmark) and every re-list is a [`Liveness::watch_beat`]; see
//! `crate::systemd` for why an accepted or cleanly ended watch request is not.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use tokio::sync::mpsc;

use super::{KubeClient, KubeError, Request};
use crate::metrics::Watch;
use crate::pod::PodRef;
use crate::systemd::Liveness;

/// The slim copy of a pod that podagent keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub(crate) uid: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// `status.phase` (`Pending`, `Running`, …); empty when the kubelet has not reported yet.
    pub phase: String,
    /// The value of the configured networks annotation, if the pod has it.
    pub networks: Option<String>,
    pub host_network: bool,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `status.containerStatuses[].containerID`: they all change when the sandbox is re-created.
    pub container_ids: Vec<String>,
    /// The NPWG `network-status` annotation (npwg mode only): podagent merges its entries
    /// into it and reads Multus' for interface names.
    pub network_status: Option<String>,
    /// The object's resourceVersion: the precondition of a read-modify-write of the pod. It
    /// changes with every write, so it is not part of what [`PodView::plans_alike`] compares.
    pub(crate) resource_version: String,
}

impl PodView {
    /// The view of `pod`; `None` for an object without uid, name or namespace (never a stored
    /// pod).
    pub fn from_pod(pod: &Pod, annotation_key: &str) -> Option<PodView> {
        let meta = &pod.metadata;
        let status = pod.status.as_ref();
        Some(PodView {
            uid: meta.uid.clone()?,
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
            networks: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(annotation_key).cloned()),
            host_network: pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
            deleting: meta.deletion_timestamp.is_some(),
            container_ids: container_ids(pod),
            network_status: None,
            resource_version: meta.resource_version.clone().unwrap_or_default(),
        })
    }

    /// Whether a plan made from either view would be the same: everything but the
    /// resourceVersion is equal, so a change elsewhere in the pod is status churn.
    pub(crate) fn plans_alike(&self, other: &PodView) -> bool {
        // Destructured, so that a new field has to be placed on one side or the other here.
        let PodView {
            uid,
            namespace,
            name,
            phase,
            networks,
            host_network,
            deleting,
            container_ids,
            network_status,
            resource_version: _,
        } = self;
        *uid == other.uid
            && *namespace == other.namespace
            && *name == other.name
            && *phase == other.phase
            && *networks == other.networks
            && *host_network == other.host_network
            && *deleting == other.deleting
            && *container_ids == other.container_ids
            && *network_status == other.network_status
    }

    /// Which pod this is.
    pub(crate) fn pod(&self) -> PodRef {
        PodRef {
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// Every container id of the pod (init, regular, ephemeral), sorted and without duplicates: a
/// re-created sandbox restarts them all, while the kubelet reordering its statuses is churn.
fn container_ids(pod: &Pod) -> Vec<String> {
    let ids: BTreeSet<&str> = pod
        .status
        .iter()
        .flat_map(|s| {
            [
                &s.init_container_statuses,
                &s.container_statuses,
                &s.ephemeral_container_statuses,
            ]
        })
        .flatten()
        .flatten()
        .filter_map(|c| c.container_id.as_deref())
        .filter(|id| !id.is_empty())
        .collect();
    ids.into_iter().map(str::to_owned).collect()
}

/// What the watch tells the work loop.
#[derive(Debug, Clone)]
pub enum PodEvent {
    /// A full (re-)list: the cache becomes exactly this.
    Listed(Vec<PodView>),
    Applied(PodView),
    Deleted(PodView),
}

/// Lists and watches the pods of one node.
pub struct PodWatcher {
    kube: KubeClient,
    api: Api<Pod>,
    selector: String,
    annotation_key: String,
    /// The status annotation kept in each view (npwg mode), if any.
    status_key: Option<&'static str>,
    /// `timeoutSeconds` of each watch request; also bounds how long a silent stream is trusted.
    watch_timeout: Duration,
}

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How long past its `timeoutSeconds` a watch may stay silent before the client drops it.
const WATCH_GRACE: Duration = Duration::from_secs(5);

impl PodWatcher {
    pub(crate) fn new(
        kube: KubeClient,
        node: &str,
        annotation_key: &str,
        status_key: Option<&'static str>,
        watch_timeout: Duration,
    ) -> PodWatcher {
        PodWatcher {
            api: Api::all(kube.client.clone()),
            kube,
            selector: format!("spec.nodeName={node}"),
            annotation_key: annotation_key.to_string(),
            status_key,
            watch_timeout: watch_timeout.max(Duration::from_secs(1)),
        }
    }

    fn view(&self, pod: &Pod) -> Option<PodView> {
        let mut view = PodView::from_pod(pod, &self.annotation_key)?;
        if let Some(key) = self.status_key {
            view.network_status = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key).cloned());
        }
        Some(view)
    }

    fn request(&self, verb: &'static str) -> Request {
        Request {
            verb,
            resource: "pods",
            scope: format!("all namespaces, {}", self.selector),
        }
    }

    /// The node's pods and the resourceVersion to watch from.
    pub(crate) async fn list(&self) -> Result<(Vec<PodView>, String), KubeError> {
        let params = ListParams::default().fields(&self.selector);
        let list = self
            .api
            .list(&params)
            .await
            .map_err(|e| self.request("list").error(&self.kube.url, e))?;
        let version = list.metadata.resource_version.clone().unwrap_or_default();
        let pods = list.items.iter().filter_map(|pod| self.view(pod)).collect();
        Ok((pods, version))
    }

    /// Watches from `version` forever, sending changes to `events` and beating `liveness`
    /// whenever the server answers. Errors are logged and retried with backoff: the watchdog,
    /// not this loop, decides when it has been failing too long.
    pub(crate) async fn run(
        self,
        mut version: String,
        events: mpsc::Sender<PodEvent>,
        liveness: Arc<Liveness>,
    ) {
        let mut backoff = BACKOFF_START;
        loop {
            match self.watch_once(&mut version, &events, &liveness).await {
                Ok(()) => backoff = BACKOFF_START,
                Err(WatchEnd::Closed) => return,
                Err(WatchEnd::Failed(e)) => {
                    self.kube.metrics.watch_restarted(Watch::Pods);
                    tracing::warn!(error = %crate::error_chain::render(&e), retry_in = ?backoff, "pod watch failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                }
            }
        }
    }

    /// One watch request, until the server ends it. A `410 Gone` re-lists.
    async fn watch_once(
        &self,
        version: &mut String,
        events: &mpsc::Sender<PodEvent>,
        liveness: &Liveness,
    ) -> Result<(), WatchEnd> {
        let seconds = u32::try_from(self.watch_timeout.as_secs()).unwrap_or(u32::MAX);
        let params = WatchParams::default()
            .fields(&self.selector)
            .timeout(seconds);
        let stream = match self.api.watch(&params, version).await {
            Ok(stream) => stream,
            // The server may refuse the request itself rather than in its stream.
            Err(kube::Error::Api(status)) if status.code == 410 => {
                return self.relist(version, events, liveness).await;
            }
            Err(e) => {
                return Err(WatchEnd::Failed(
                    self.request("watch").error(&self.kube.url, e),
                ));
            }
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = tokio::time::timeout(self.watch_timeout + WATCH_GRACE, stream.try_next());
            let item = match next.await {
                Ok(Ok(Some(item))) => item,
                // The server ended the watch (its timeoutSeconds): watch again.
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(e)) => {
                    return Err(WatchEnd::Failed(
                        self.request("watch").error(&self.kube.url, e),
                    ));
                }
                Err(_elapsed) => {
                    self.kube.metrics.watch_restarted(Watch::Pods);
                    tracing::warn!(
                        timeout = ?self.watch_timeout,
                        "pod watch silent past its timeout, restarting it"
                    );
                    return Ok(());
                }
            };
            liveness.watch_beat();
            let event = match item {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                    remember_version(version, &pod);
                    self.view(&pod).map(PodEvent::Applied)
                }
                WatchEvent::Deleted(pod) => {
                    remember_version(version, &pod);
                    self.view(&pod).map(PodEvent::Deleted)
                }
                WatchEvent::Bookmark(bookmark) => {
                    *version = bookmark.metadata.resource_version;
                    None
                }
                WatchEvent::Error(status) if status.code == 410 => {
                    return self.relist(version, events, liveness).await;
                }
                WatchEvent::Error(status) => {
                    return Err(WatchEnd::Failed(
                        self.request("watch")
                            .error(&self.kube.url, kube::Error::Api(status)),
                    ));
                }
            };
            if let Some(event) = event {
                send(events, event).await?;
            }
        }
    }

    /// After a `410 Gone`: lists afresh, hands the list to the work loop and watches from its
    /// resourceVersion.
    async fn relist(
        &self,
        version: &mut String,
        events: &mpsc::Sender<PodEvent>,
        liveness: &Liveness,
    ) -> Result<(), WatchEnd> {
        tracing::info!("pod watch expired (410 Gone), re-listing");
        self.kube.metrics.relisted(Watch::Pods);
        let (pods, fresh) = self.list().await.map_err(WatchEnd::Failed)?;
        liveness.watch_beat();
        *version = fresh;
        send(events, PodEvent::Listed(pods)).await
    }
}

/// Why a watch request ended other than normally.
enum WatchEnd {
    Failed(KubeError),
    /// The work loop is gone: podagent is shutting down.
    Closed,
}

async fn send(events: &mpsc::Sender<PodEvent>, event: PodEvent) -> Result<(), WatchEnd> {
    events.send(event).await.map_err(|_| WatchEnd::Closed)
}

fn remember_version(version: &mut String, pod: &Pod) {
    if let Some(v) = &pod.metadata.resource_version {
        version.clone_from(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("valid pod")
    }

    #[test]
    fn view_keeps_only_the_configured_annotation_and_sandbox_hints() {
        let p = pod(serde_json::json!({
            "metadata": {
                "uid": "u1", "namespace": "ns", "name": "web",
                "annotations": {"networks": "[{\"name\":\"green\"}]", "other": "x"},
                "deletionTimestamp": "2026-01-01T00:00:00Z"
            },
            "spec": {"hostNetwork": true, "containers": []},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "c", "containerID": "containerd://abc", "image": "i", "imageID": "",
                 "ready": true, "restartCount": 0}
            ]}
        }));
        let view = PodView::from_pod(&p, "networks").expect("complete pod");
        assert_eq!(view.pod().to_string(), "ns/web");
        assert_eq!(view.networks.as_deref(), Some("[{\"name\":\"green\"}]"));
        assert!(view.host_network && view.deleting);
        assert_eq!(view.phase, "Running");
        assert_eq!(view.container_ids, ["containerd://abc"]);
        assert_eq!(
            PodView::from_pod(&p, "other")
                .and_then(|v| v.networks)
                .as_deref(),
            Some("x")
        );
    }

    #[test]
    fn object_without_uid_has_no_view() {
        let p = pod(serde_json::json!({"metadata": {"namespace": "ns", "name": "x"}}));
        assert_eq!(PodView::from_pod(&p, "networks"), None);
    }

    fn base_pod() -> serde_json::Value {
        serde_json::json!({
            "metadata": {
                "name": "web", "namespace": "default", "uid": "uid-1",
                "resourceVersion": "10",
                "annotations": {"networks": "[{\"name\":\"green\"}]", "other": "x"}
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {"name": "a", "image": "i", "imageID": "", "ready": false,
                     "restartCount": 0, "containerID": "containerd://aaa"},
                    {"name": "b", "image": "i", "imageID": "", "ready": false,
                     "restartCount": 0, "containerID": "containerd://bbb"}
                ]
            }
        })
    }

    #[test]
    fn status_churn_leaves_the_view_unchanged() {
        let before = PodView::from_pod(&pod(base_pod()), "networks");
        let mut churned = base_pod();
        churned["metadata"]["resourceVersion"] = "11".into();
        churned["metadata"]["annotations"]["other"] = "y".into();
        churned["metadata"]["labels"] = serde_json::json!({"l": "v"});
        churned["status"]["conditions"][0]["status"] = "True".into();
        churned["status"]["podIP"] = "198.18.0.9".into();
        let statuses = &mut churned["status"]["containerStatuses"];
        statuses[0]["ready"] = true.into();
        statuses[0]["restartCount"] = 3.into();
        // Same containers listed in another order.
        statuses.as_array_mut().expect("object").reverse();
        let after = PodView::from_pod(&pod(churned), "networks").expect("complete pod");
        let before = before.expect("complete pod");
        assert!(after.plans_alike(&before), "{after:?} vs {before:?}");
        assert_eq!(after.resource_version, "11", "the newer version is kept");
    }

    #[test]
    fn what_matters_changes_the_view() {
        let before = PodView::from_pod(&pod(base_pod()), "networks");
        type Change = fn(&mut serde_json::Value);
        let changes: [(&str, Change); 6] = [
            ("annotation", |p| {
                p["metadata"]["annotations"]["networks"] = "[]".into();
            }),
            ("annotation removed", |p| {
                p["metadata"]["annotations"]
                    .as_object_mut()
                    .expect("object")
                    .remove("networks");
            }),
            ("phase", |p| p["status"]["phase"] = "Succeeded".into()),
            ("deletion", |p| {
                p["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z".into();
            }),
            ("container id", |p| {
                p["status"]["containerStatuses"][1]["containerID"] = "containerd://ccc".into();
            }),
            ("new container", |p| {
                p["status"]["initContainerStatuses"] = serde_json::json!([
                    {"name": "init", "image": "i", "imageID": "", "ready": false,
                     "restartCount": 0, "containerID": "containerd://iii"}
                ]);
            }),
        ];
        for (what, change) in changes {
            let mut changed = base_pod();
            change(&mut changed);
            let changed = PodView::from_pod(&pod(changed), "networks").expect("complete pod");
            assert!(
                !changed.plans_alike(before.as_ref().expect("complete pod")),
                "{what}"
            );
        }
        // The annotation key is configurable: another key's value is churn.
        let mut other_key = base_pod();
        other_key["metadata"]["annotations"]["networks"] = "[]".into();
        assert_eq!(
            PodView::from_pod(&pod(other_key), "other"),
            PodView::from_pod(&pod(base_pod()), "other")
        );
    }
}
