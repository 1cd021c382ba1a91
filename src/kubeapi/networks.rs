//! The cluster's network objects, kept current in the node's [`Networks`] catalog by one
//! list+watch: `kaloom.com/v1` `Network`s in direct mode, `k8s.cni.cncf.io/v1`
//! NetworkAttachmentDefinitions in npwg mode.
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
use crate::networks::{Catalog, Mode, NetworkObject, Networks};

/// One kind of network object: where it is served and how its spec reads.
#[derive(Debug, Clone, Copy)]
struct Kind {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    /// `group/version` as `podagent check` and errors name it.
    served_as: &'static str,
    /// `plural.group`, as RBAC and errors name it.
    resource: &'static str,
    /// The manifest that installs its CustomResourceDefinition.
    manifest: &'static str,
    /// `spec.plugin` gives the type of a single config (Kaloom `Network`s only).
    has_plugin: bool,
}

/// The `Network` resource (manifests/networks-crd.yaml).
const NETWORK: Kind = Kind {
    group: "kaloom.com",
    kind: Mode::Direct.object_kind(),
    plural: "networks",
    served_as: "networks.kaloom.com/v1",
    resource: "networks.kaloom.com",
    manifest: "networks-crd.yaml",
    has_plugin: true,
};

/// The NPWG resource (manifests/network-attachment-definitions-crd.yaml, which Multus
/// installs too).
const ATTACHMENT_DEFINITION: Kind = Kind {
    group: "k8s.cni.cncf.io",
    kind: Mode::Npwg.object_kind(),
    plural: "network-attachment-definitions",
    served_as: "network-attachment-definitions.k8s.cni.cncf.io/v1",
    resource: "network-attachment-definitions.k8s.cni.cncf.io",
    manifest: "network-attachment-definitions-crd.yaml",
    has_plugin: false,
};

/// `group/version` of the objects `mode` resolves networks from, as `podagent check` names it.
pub(crate) fn api_version(mode: Mode) -> String {
    Kind::of(mode).api_version()
}

impl Kind {
    fn of(mode: Mode) -> Kind {
        match mode {
            Mode::Kactus | Mode::Direct => NETWORK,
            Mode::Npwg => ATTACHMENT_DEFINITION,
        }
    }

    fn api_version(self) -> String {
        format!("{}/v1", self.group)
    }

    fn api_resource(self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: "v1".into(),
            api_version: self.api_version(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }
}

/// Lists and watches every network object of the mode's kind the credentials may read.
pub(crate) struct NetworkWatcher {
    kube: KubeClient,
    api: Api<DynamicObject>,
    kind: Kind,
}

impl NetworkWatcher {
    pub(crate) fn new(kube: KubeClient, mode: Mode) -> NetworkWatcher {
        let kind = Kind::of(mode);
        NetworkWatcher {
            api: Api::all_with(kube.client.clone(), &kind.api_resource()),
            kube,
            kind,
        }
    }

    fn request(&self, verb: &'static str) -> Request {
        Request {
            verb,
            resource: self.kind.resource,
            scope: "all namespaces".into(),
        }
    }

    /// Every object now: the catalog podagent starts from, and what `podagent check` counts.
    pub(crate) async fn list(&self) -> Result<Catalog, KubeError> {
        let list = self
            .api
            .list(&ListParams::default())
            .await
            .map_err(|e| match e {
                kube::Error::Api(status) if status.code == 404 => KubeError::NotServed {
                    url: self.kube.url.clone(),
                    resource: self.kind.served_as,
                    manifest: self.kind.manifest,
                },
                e => self.request("list").error(&self.kube.url, e),
            })?;
        Ok(list
            .items
            .iter()
            .filter_map(|o| self.kind.entry(o))
            .collect())
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
                    if let (Some(fresh), Some((key, value))) =
                        (fresh.as_mut(), self.kind.entry(&object))
                    {
                        fresh.insert(key, value);
                    }
                    continue;
                }
                Ok(Event::InitDone) => {
                    let listed = fresh.take().unwrap_or_default();
                    tracing::debug!(networks = listed.len(), "network objects listed");
                    networks.replace(listed)
                }
                Ok(Event::Apply(object)) => self.kind.changed_one(&networks, &object, true),
                Ok(Event::Delete(object)) => self.kind.changed_one(&networks, &object, false),
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
            watcher::Error::InitialListFailed(e) => self.request("list").error(url, e),
            watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
                self.request("watch").error(url, e)
            }
            watcher::Error::WatchError(status) => {
                self.request("watch").error(url, kube::Error::Api(status))
            }
            watcher::Error::NoResourceVersion => self.request("watch").error(
                url,
                kube::Error::Api(Box::new(kube::core::Status::failure(
                    "the server sent no resourceVersion",
                    "NoResourceVersion",
                ))),
            ),
        }
    }
}

impl Kind {
    fn changed_one(
        self,
        networks: &Networks,
        object: &DynamicObject,
        present: bool,
    ) -> BTreeSet<String> {
        let (Some(namespace), Some(name)) = (&object.metadata.namespace, &object.metadata.name)
        else {
            return BTreeSet::new();
        };
        let value = present.then(|| self.network_object(name, object));
        if networks.update(namespace, name, value) {
            tracing::info!(network = %format!("{namespace}/{name}"), kind = self.kind, present, "network object changed");
            BTreeSet::from([name.clone()])
        } else {
            BTreeSet::new()
        }
    }

    /// An object's catalog entry; objects without namespace or name are not networks anyone
    /// can name.
    fn entry(self, object: &DynamicObject) -> Option<((String, String), NetworkObject)> {
        let namespace = object.metadata.namespace.clone()?;
        let name = object.metadata.name.clone()?;
        let value = self.network_object(&name, object);
        Some(((namespace, name), value))
    }

    fn network_object(self, name: &str, object: &DynamicObject) -> NetworkObject {
        let spec = &object.data["spec"];
        if self.has_plugin {
            // The CRD requires a string; anything else reads as empty, which is refused as
            // "not valid JSON" with the object's name.
            let config = spec["config"].as_str().unwrap_or_default();
            return NetworkObject::new(name, spec["plugin"].as_str(), Some(config));
        }
        // NPWG §3.4: without `spec.config` (absent or empty) the object names a file of the
        // conf dir. A config that is there but not a string is refused as not JSON.
        let config = match &spec["config"] {
            serde_json::Value::Null => None,
            serde_json::Value::String(text) if text.trim().is_empty() => None,
            value => Some(value.as_str().unwrap_or_default()),
        };
        NetworkObject::new(name, None, config)
    }
}
