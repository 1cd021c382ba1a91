//! The controllers whose effects clients rely on, run synchronously after each write:
//! - the service-account controller creates `default` in every new namespace;
//! - the token controller fills `data.token`, `data.ca.crt` and `data.namespace` of a
//!   `kubernetes.io/service-account-token` secret (a second write, as the real controller's
//!   update is: the create response has no token yet, a later get or watch event does);
//! - the CRD controllers serve a CustomResourceDefinition's resource as soon as it is stored,
//!   then mark it `Established` and `NamesAccepted`, and remove its objects when it is deleted;
//! - the namespace controller deletes the contents of a deleted namespace.

use std::sync::Arc;

use k8s_openapi::ByteString;
use serde_json::{Value, json};

use super::cluster::{Cluster, Mode};
use super::objects::random_u64;
use super::resources::{self, ResourceType};
use super::status::ApiError;
use super::store::Key;

const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";

fn base64(bytes: &[u8]) -> Value {
    serde_json::to_value(ByteString(bytes.to_vec())).unwrap_or(Value::Null)
}

impl Cluster {
    /// Runs the controllers interested in the object at `key` after a write to it.
    pub(crate) fn react(&self, rt: &ResourceType, key: &Key) {
        let current = self.store.get(key);
        match (rt.kind.as_str(), current) {
            ("Namespace", Some(ns)) if ns["metadata"]["deletionTimestamp"].is_null() => {
                self.default_service_account(&key.2)
            }
            ("Namespace", None) => self.empty_namespace(&key.2),
            ("Secret", Some(secret))
                if secret["type"] == TOKEN_TYPE && secret["data"]["token"].is_null() =>
            {
                self.fill_token(key, &secret)
            }
            ("CustomResourceDefinition", Some(crd)) => self.establish(key, &crd),
            ("CustomResourceDefinition", None) if !rt.custom => self.forget_crd(&key.2),
            _ => {}
        }
    }

    fn default_service_account(&self, namespace: &str) {
        let Some(sa) = self.registry().by_path("", "v1", "serviceaccounts") else {
            return;
        };
        let key = Cluster::key(&sa, Some(namespace), "default");
        if self.store.get(&key).is_none() {
            let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": namespace}});
            // Racing creates end in AlreadyExists, which is the wanted state.
            let _ = self.create(&sa, Some(namespace), account, Mode::Direct);
        }
    }

    fn fill_token(&self, key: &Key, secret: &Value) {
        let token = format!(
            "kube-sim.{:016x}{:016x}.{}",
            random_u64(),
            random_u64(),
            secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
                .as_str()
                .unwrap_or("default")
        );
        self.issue_token(token.clone());
        let (ca, namespace) = (self.ca_pem.clone(), key.1.clone());
        let _ = self.store.write::<ApiError>(key, |current| {
            Ok(current.map(|current| {
                let mut filled = current.clone();
                filled["data"]["token"] = base64(token.as_bytes());
                filled["data"]["ca.crt"] = base64(ca.as_bytes());
                filled["data"]["namespace"] = base64(namespace.as_bytes());
                filled
            }))
        });
    }

    fn establish(&self, key: &Key, crd: &Value) {
        let served = resources::from_crd(crd);
        let Some(storage) = served.first().map(|rt| rt.storage.clone()) else {
            return;
        };
        {
            let mut registry = self.registry_mut();
            registry.remove_storage(&storage);
            for rt in served {
                registry.insert(rt);
            }
        }
        let conditions = &crd["status"]["conditions"];
        let established = conditions.as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        });
        if established {
            return;
        }
        let now = super::objects::now();
        let condition = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
        let versions: Vec<Value> = crd["spec"]["versions"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter(|v| v["storage"] == true)
                    .map(|v| v["name"].clone())
                    .collect()
            })
            .unwrap_or_default();
        let status = json!({
            "acceptedNames": crd["spec"]["names"],
            "conditions": [
                condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            ],
            "storedVersions": versions,
        });
        let _ = self.store.write::<ApiError>(key, |current| {
            Ok(current.map(|current| {
                let mut updated = current.clone();
                updated["status"] = status;
                updated
            }))
        });
    }

    fn forget_crd(&self, name: &str) {
        // The CRD's name is `<plural>.<group>`, which is also its objects' storage.
        self.registry_mut().remove_storage(name);
        for key in self.store.keys(|key| key.0 == name) {
            self.remove(&key);
        }
    }

    fn empty_namespace(&self, namespace: &str) {
        for key in self.store.keys(|key| key.1 == namespace) {
            self.remove(&key);
        }
    }

    /// Resolves a kind for the library API.
    pub(crate) fn kind(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<Arc<ResourceType>, ApiError> {
        self.registry().by_kind(api_version, kind).ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!("no matches for kind \"{kind}\" in version \"{api_version}\""),
            )
        })
    }
}
