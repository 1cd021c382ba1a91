//! The test's own hands on the cluster: blocking admin calls on any kind by apiVersion and kind,
//! as JSON, for the kubelet's and the operator's part of a test (create pods, write their
//! status, edit annotations, read Events).
//!
//! Blocking, because tests poll the cluster from plain closures (`eventually(|| …)`) next to
//! netns and file checks; the calls run on a runtime of their own, so they work from sync code
//! and from inside any test's runtime alike.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::{Api, Client};
use serde_json::Value;

/// Admin access to one control plane.
pub struct Admin {
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    kinds: Mutex<HashMap<(String, String), (ApiResource, ApiCapabilities)>>,
}

impl Admin {
    /// A client for the admin kubeconfig at `kubeconfig`, on a runtime of its own.
    pub(crate) fn new(kubeconfig: &std::path::Path) -> Result<Admin> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("admin-api")
            .enable_all()
            .build()
            .context("starting the admin client's runtime")?;
        // Not `block_on`: this may be called from inside a test's runtime.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = kubeconfig.to_path_buf();
        runtime.spawn(async move {
            let _ = tx.send(super::admin_client(&path).await);
        });
        let client = rx.recv().context("the admin runtime stopped")??;
        Ok(Admin {
            runtime: Some(runtime),
            client,
            kinds: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `future` on the admin runtime and waits for it, from sync or async code.
    pub fn run<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        let runtime = self
            .runtime
            .as_ref()
            .expect("the admin runtime lives until drop");
        runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().expect("the admin runtime dropped a request")
    }

    /// The admin client (usable on the admin runtime, through [`Admin::run`]).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Creates `object`. A `status` in it is then written through the status subresource, as
    /// the kubelet or a controller would (the server drops it on create).
    pub fn create(&self, object: Value) -> Result<Value> {
        let api = self.api_for(&object)?;
        let status = object.get("status").cloned();
        let object: DynamicObject = serde_json::from_value(object)?;
        let name = object.metadata.name.clone().unwrap_or_default();
        let created = self.run({
            let api = api.clone();
            async move { api.create(&PostParams::default(), &object).await }
        })?;
        match status {
            Some(status) => {
                Ok(self.merge(api, &name, serde_json::json!({ "status": status }), true)?)
            }
            None => Ok(to_value(created)),
        }
    }

    /// The object, if it exists.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let api = self.api(api_version, kind, namespace).ok()?;
        let name = name.to_string();
        self.run(async move { api.get_opt(&name).await })
            .ok()
            .flatten()
            .map(to_value)
    }

    /// Every object of the kind (in `namespace`, or in all namespaces).
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok(api) = self.api(api_version, kind, namespace) else {
            return Vec::new();
        };
        self.run(async move { api.list(&ListParams::default()).await })
            .map(|list| list.items.into_iter().map(to_value).collect())
            .unwrap_or_default()
    }

    /// A JSON merge patch of the object.
    pub fn patch_merge(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value> {
        let api = self.api(api_version, kind, namespace)?;
        self.merge(api, name, patch, false)
            .with_context(|| format!("patching {kind} {name:?}"))
    }

    /// A JSON merge patch of the object's status subresource (the kubelet's write).
    pub fn patch_status(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value> {
        let api = self.api(api_version, kind, namespace)?;
        self.merge(api, name, patch, true)
            .with_context(|| format!("patching the status of {kind} {name:?}"))
    }

    fn merge(
        &self,
        api: Api<DynamicObject>,
        name: &str,
        patch: Value,
        status: bool,
    ) -> kube::Result<Value> {
        let name = name.to_string();
        self.run(async move {
            let (params, patch) = (PatchParams::default(), Patch::Merge(patch));
            let patched = if status {
                api.patch_status(&name, &params, &patch).await
            } else {
                api.patch(&name, &params, &patch).await
            };
            patched.map(to_value)
        })
    }

    /// Deletes the object; `grace` in seconds as `kubectl delete --grace-period` (0 = at
    /// once: the kubelet's final delete). A missing object is not an error.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        grace: Option<u32>,
    ) -> Result<()> {
        let api = self.api(api_version, kind, namespace)?;
        let name = name.to_string();
        let params = DeleteParams {
            grace_period_seconds: grace,
            ..DeleteParams::default()
        };
        match self.run(async move { api.delete(&name, &params).await.map(|_| ()) }) {
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            other => other.with_context(|| format!("deleting {kind}")),
        }
    }

    fn api_for(&self, object: &Value) -> Result<Api<DynamicObject>> {
        let field = |name: &str| {
            object[name]
                .as_str()
                .ok_or_else(|| anyhow!("object without {name}: {object}"))
        };
        let namespace = object["metadata"]["namespace"].as_str();
        self.api(field("apiVersion")?, field("kind")?, namespace)
    }

    /// The dynamic API for a kind, found by discovery once per kind.
    fn api(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Api<DynamicObject>> {
        let key = (api_version.to_string(), kind.to_string());
        let known = self
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let (resource, capabilities) = match known {
            Some(found) => found,
            None => {
                let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
                let gvk = GroupVersionKind::gvk(group, version, kind);
                let client = self.client.clone();
                let found = self
                    .run(async move { kube::discovery::pinned_kind(&client, &gvk).await })
                    .with_context(|| format!("the API server serves no {api_version} {kind}"))?;
                self.kinds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, found.clone());
                found
            }
        };
        let client = self.client.clone();
        Ok(match (capabilities.scope, namespace) {
            (Scope::Namespaced, Some(namespace)) => {
                Api::namespaced_with(client, namespace, &resource)
            }
            _ => Api::all_with(client, &resource),
        })
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside a test's async context.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn to_value(object: DynamicObject) -> Value {
    serde_json::to_value(object).unwrap_or_default()
}
