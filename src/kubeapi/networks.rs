//! The cluster's `kaloom.com/v1` `Network` objects, kept current in the node's
//! [`Networks`] catalog by one list+watch (direct mode).
//!
//! Resolution must never cost an API call per attach, and a network created after a pod asked
//! for it must be plugged at once, not at the next backoff: so the objects are watched, and
//! every change names the networks it touched for the work loop to wake the pods that use
//! them. The watch is kube-runtime's watcher: it re-lists on a 410 and after any error (with
//! backoff), and a re-list replaces the catalog as a whole, so a deletion missed while the
//! watch was down is not kept. Unlike the pod watch, no liveness hangs on it: a node whose
//! network watch is failing still serves every network it knows, and says so in its log.

use std::collections::BTreeSet;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;

use super::{KubeClient, KubeError, Request};
use crate::metrics::Watch;
use crate::networks::{Catalog, NetworkObject, Networks};

/// The `Network` resource (manifests/networks-crd.yaml).
fn resource() -> ApiResource {
    ApiResource {
        group: "kaloom.com".into(),
        version: "v1".into(),
        api_version: "kaloom.com/v1".into(),
        kind: "Network".into(),
        plural: "networks".into(),
    }
}

/// Lists and watches every `Network` the credentials may read.
pub(crate) struct NetworkWatcher {
    kube: KubeClient,
    api: Api<DynamicObject>,
}

impl NetworkWatcher {
    pub(crate) fn new(kube: KubeClient) -> NetworkWatcher {
        NetworkWatcher {
            api: Api::all_with(kube.client.clone(), &resource()),
            kube,
        }
    }

    fn request(verb: &'static str) -> Request {
        Request {
            verb,
            resource: "networks.kaloom.com",
            scope: "all namespaces".into(),
        }
    }

    /// Every `Network` now: the catalog podagent starts from, and what `podagent check`
    /// counts.
    pub(crate) async fn list(&self) -> Result<Catalog, KubeError> {
        let list = self
            .api
            .list(&ListParams::default())
            .await
            .map_err(|e| match e {
                kube::Error::Api(status) if status.code == 404 => KubeError::NotServed {
                    url: self.kube.url.clone(),
                    resource: "networks.kaloom.com/v1",
                },
                e => Self::request("list").error(&self.kube.url, e),
            })?;
        Ok(list.items.iter().filter_map(entry).collect())
    }

    /// Keeps `networks` current forever, sending the names each change touched to
    /// `changes`; returns when the receiver is gone.
    pub(crate) async fn run(self, networks: Networks, changes: mpsc::Sender<BTreeSet<String>>) {
        let stream =
            watcher::watcher(self.api.clone(), watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut fresh: Option<Catalog> = None;
        // The watcher's first list follows podagent's own at startup; later ones are re-lists.
        let mut listed_before = false;
        while let Some(item) = stream.next().await {
            let changed = match item {
                Ok(Event::Init) => {
                    if std::mem::replace(&mut listed_before, true) {
                        self.kube.metrics.relisted(Watch::Networks);
                    }
                    fresh = Some(Catalog::new());
                    continue;
                }
                Ok(Event::InitApply(object)) => {
                    if let (Some(fresh), Some((key, value))) = (fresh.as_mut(), entry(&object)) {
                        fresh.insert(key, value);
                    }
                    continue;
                }
                Ok(Event::InitDone) => {
                    let listed = fresh.take().unwrap_or_default();
                    tracing::debug!(networks = listed.len(), "network objects listed");
                    networks.replace(listed)
                }
                Ok(Event::Apply(object)) => changed_one(&networks, &object, true),
                Ok(Event::Delete(object)) => changed_one(&networks, &object, false),
                Err(error) => {
                    let error = self.classify(error);
                    self.kube.metrics.watch_restarted(Watch::Networks);
                    tracing::warn!(error = %crate::error_chain::render(&error), "network watch failed; known networks stay in use");
                    continue;
                }
            };
            if !changed.is_empty() && changes.send(changed).await.is_err() {
                return;
            }
        }
    }

    fn classify(&self, error: watcher::Error) -> KubeError {
        let url = &self.kube.url;
        match error {
            watcher::Error::InitialListFailed(e) => Self::request("list").error(url, e),
            watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
                Self::request("watch").error(url, e)
            }
            watcher::Error::WatchError(status) => {
                Self::request("watch").error(url, kube::Error::Api(status))
            }
            watcher::Error::NoResourceVersion => Self::request("watch").error(
                url,
                kube::Error::Api(Box::new(kube::core::Status::failure(
                    "the server sent no resourceVersion",
                    "NoResourceVersion",
                ))),
            ),
        }
    }
}

fn changed_one(networks: &Networks, object: &DynamicObject, present: bool) -> BTreeSet<String> {
    let (Some(namespace), Some(name)) = (&object.metadata.namespace, &object.metadata.name) else {
        return BTreeSet::new();
    };
    let value = present.then(|| network_object(name, object));
    if networks.update(namespace, name, value) {
        tracing::info!(network = %format!("{namespace}/{name}"), present, "network object changed");
        BTreeSet::from([name.clone()])
    } else {
        BTreeSet::new()
    }
}

/// An object's catalog entry; objects without namespace or name are not networks anyone can
/// name.
fn entry(object: &DynamicObject) -> Option<((String, String), NetworkObject)> {
    let namespace = object.metadata.namespace.clone()?;
    let name = object.metadata.name.clone()?;
    let value = network_object(&name, object);
    Some(((namespace, name), value))
}

fn network_object(name: &str, object: &DynamicObject) -> NetworkObject {
    let spec = &object.data["spec"];
    // The CRD requires a string; anything else reads as empty, which is refused as "not valid
    // JSON" with the object's name.
    NetworkObject::new(
        name,
        spec["plugin"].as_str(),
        spec["config"].as_str().unwrap_or_default(),
    )
}
