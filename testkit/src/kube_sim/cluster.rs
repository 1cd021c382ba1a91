//! The API semantics shared by HTTP requests and the library's direct calls: create, get, update
//! (PUT and PATCH), delete, with the real server's rules for namespaces, preconditions,
//! subresources and finalizers.
//!
//! Two write modes exist because tests need both: `Api` is what a client sees (status is reset on
//! create and only writable through `status`, a stale resourceVersion is a 409), `Direct` is a
//! seeding shortcut that stores the object as given (status included) and creates a missing
//! namespace, as if the kubelet and controllers had already done their part.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Value, json};

use super::faults::Faults;
use super::objects;
use super::resources::{Registry, ResourceType};
use super::status::ApiError;
use super::store::{Key, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Api,
    Direct,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Main,
    Status,
}

pub(crate) struct Cluster {
    pub registry: RwLock<Registry>,
    pub store: Arc<Store>,
    pub faults: Faults,
    /// PEM of the CA that signs the serving certificate; service-account token secrets carry it.
    pub ca_pem: String,
    pub token: Option<String>,
    /// Tokens written into service-account token secrets; they authenticate like the real ones.
    issued_tokens: Mutex<HashSet<String>>,
    pub requests: AtomicU64,
    pub bookmark_interval: Duration,
}

pub(crate) fn internal(message: &str) -> ApiError {
    ApiError::new(500, "InternalError", message)
}

impl Cluster {
    pub fn new(
        store: Arc<Store>,
        ca_pem: String,
        token: Option<String>,
        bookmark_interval: Duration,
    ) -> Self {
        Cluster {
            registry: RwLock::new(Registry::with_builtins()),
            faults: Faults::new(store.clone()),
            store,
            ca_pem,
            token,
            issued_tokens: Mutex::new(HashSet::new()),
            requests: AtomicU64::new(0),
            bookmark_interval,
        }
    }

    pub fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn registry_mut(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Without a configured token every request is accepted; with one, the request must carry
    /// it or a token issued into a service-account secret.
    pub fn authorized(&self, bearer: Option<&str>) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let Some(bearer) = bearer else { return false };
        bearer == expected
            || self
                .issued_tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(bearer)
    }

    pub fn issue_token(&self, token: String) {
        self.issued_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token);
    }

    pub fn key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> Key {
        let ns = if rt.namespaced {
            namespace.unwrap_or("default")
        } else {
            ""
        };
        (rt.storage.clone(), ns.to_string(), name.to_string())
    }

    /// Places the object in its namespace: the URL's, else its own, else `default`.
    fn scope(rt: &ResourceType, url_ns: Option<&str>, obj: &mut Value) -> Result<String, ApiError> {
        let meta = &mut obj["metadata"];
        if !rt.namespaced {
            if let Some(m) = meta.as_object_mut() {
                m.remove("namespace");
            }
            return Ok(String::new());
        }
        let own = meta["namespace"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if let (Some(url), Some(own)) = (url_ns, &own)
            && url != own
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let ns = url_ns
            .map(str::to_string)
            .or(own)
            .unwrap_or_else(|| "default".to_string());
        meta["namespace"] = json!(ns);
        Ok(ns)
    }

    fn ensure_namespace(&self, ns: &str, mode: Mode) -> Result<(), ApiError> {
        let Some(namespaces) = self.registry().by_path("", "v1", "namespaces") else {
            return Err(internal("namespaces are not registered"));
        };
        if self.store.get(&Self::key(&namespaces, None, ns)).is_some() {
            return Ok(());
        }
        if mode == Mode::Api {
            return Err(ApiError::not_found("namespaces", ns));
        }
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match self.create(&namespaces, None, namespace, Mode::Direct) {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn create(
        &self,
        rt: &Arc<ResourceType>,
        url_ns: Option<&str>,
        body: Value,
        mode: Mode,
    ) -> Result<Value, ApiError> {
        self.create_or_dry_run(rt, url_ns, body, mode, false)
    }

    /// `create`, or with `dry_run` (`?dryRun=All`) everything a create checks and fills in,
    /// answered as the real server does, without storing anything or notifying watchers.
    pub fn create_or_dry_run(
        &self,
        rt: &Arc<ResourceType>,
        url_ns: Option<&str>,
        body: Value,
        mode: Mode,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the request body is not an object"));
        }
        let hint = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        objects::validate_external(rt, &body, &hint)?;
        let mut obj = objects::to_internal(rt, body);
        let ns = Self::scope(rt, url_ns, &mut obj)?;
        if mode == Mode::Api
            && obj["metadata"]["resourceVersion"]
                .as_str()
                .is_some_and(|rv| !rv.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = objects::init_metadata(rt, &mut obj)?;
        objects::apply_defaults(rt, &mut obj, mode == Mode::Direct);
        if rt.namespaced {
            self.ensure_namespace(&ns, mode)?;
        }
        let key = (rt.storage.clone(), ns, name.clone());
        if dry_run {
            if self.store.get(&key).is_some() {
                return Err(ApiError::already_exists(&rt.qualified(), &name));
            }
            return Ok(objects::to_external(rt, &obj));
        }
        let stored = self
            .store
            .write(&key, |existing| match existing {
                Some(_) => Err(ApiError::already_exists(&rt.qualified(), &name)),
                None => Ok(Some(obj)),
            })?
            .ok_or_else(|| internal("create stored nothing"))?;
        self.react(rt, &key);
        Ok(objects::to_external(rt, &stored))
    }

    pub fn get(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.store
            .get(&Self::key(rt, namespace, name))
            .map(|obj| objects::to_external(rt, &obj))
            .ok_or_else(|| ApiError::not_found(&rt.qualified(), name))
    }

    /// Read-modify-write of one object: `change` gets the current object in `rt`'s shape and
    /// returns the desired one (a PUT body or the patched object).
    pub fn update(
        &self,
        rt: &Arc<ResourceType>,
        namespace: Option<&str>,
        name: &str,
        target: Target,
        mode: Mode,
        change: impl FnOnce(Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, namespace, name);
        let qualified = rt.qualified();
        let stored = self.store.write(&key, |previous| {
            let previous = previous.ok_or_else(|| ApiError::not_found(&qualified, name))?;
            let candidate = change(objects::to_external(rt, previous))?;
            if !candidate.is_object() {
                return Err(ApiError::bad_request("the request body is not an object"));
            }
            let next = objects::to_internal(rt, candidate);
            let next = Self::prepare_update(rt, previous, next, target, mode, name)?;
            let terminating = !next["metadata"]["deletionTimestamp"].is_null();
            let finalizers = next["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            Ok(if terminating && !finalizers {
                None
            } else {
                Some(next)
            })
        })?;
        self.react(rt, &key);
        stored
            .map(|obj| objects::to_external(rt, &obj))
            .ok_or_else(|| internal("update stored nothing"))
    }

    fn prepare_update(
        rt: &ResourceType,
        previous: &Value,
        mut next: Value,
        target: Target,
        mode: Mode,
        name: &str,
    ) -> Result<Value, ApiError> {
        let qualified = rt.qualified();
        let old_rv = previous["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        match next["metadata"]["resourceVersion"].as_str() {
            Some(rv) if !rv.is_empty() && rv != old_rv => {
                return Err(ApiError::conflict(&qualified, name));
            }
            None | Some("") if rt.custom && mode == Mode::Api => {
                return Err(ApiError::invalid(
                    &qualified,
                    name,
                    format!(
                        "{} \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                        rt.kind
                    ),
                ));
            }
            _ => {}
        }
        if next["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                next["metadata"]["name"].as_str().unwrap_or_default()
            )));
        }
        if mode == Mode::Api && rt.has_status {
            match target {
                Target::Main => next["status"] = previous["status"].clone(),
                Target::Status => {
                    let mut merged = previous.clone();
                    merged["status"] = next["status"].take();
                    if rt.status_writes_metadata {
                        merged["metadata"]["labels"] = next["metadata"]["labels"].take();
                        merged["metadata"]["annotations"] = next["metadata"]["annotations"].take();
                    }
                    next = merged;
                }
            }
        }
        let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut) else {
            return Err(ApiError::bad_request("metadata must be an object"));
        };
        meta.retain(|_, v| !v.is_null());
        for owned in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "generation",
            "resourceVersion",
        ] {
            match previous["metadata"].get(owned) {
                Some(v) => meta.insert(owned.to_string(), v.clone()),
                None => meta.remove(owned),
            };
        }
        if let Some(obj) = next.as_object_mut() {
            obj.retain(|_, v| !v.is_null());
        }
        if objects::spec_changed(previous, &next) {
            let generation = previous["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            next["metadata"]["generation"] = json!(generation);
        }
        Ok(next)
    }

    /// Deletes now, or marks the object terminating while finalizers remain.
    pub fn delete(
        &self,
        rt: &Arc<ResourceType>,
        namespace: Option<&str>,
        name: &str,
        options: &Value,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, namespace, name);
        let qualified = rt.qualified();
        let stored = self.store.write(&key, |previous| {
            let previous = previous.ok_or_else(|| ApiError::not_found(&qualified, name))?;
            let pre = &options["preconditions"];
            for field in ["uid", "resourceVersion"] {
                if let Some(wanted) = pre[field].as_str()
                    && previous["metadata"][field].as_str() != Some(wanted)
                {
                    let mut err = ApiError::conflict(&qualified, name);
                    err.message = format!("Precondition failed: {field} in precondition: {wanted}, {field} in object meta: {}",
                        previous["metadata"][field].as_str().unwrap_or_default());
                    return Err(err);
                }
            }
            if previous["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
                let mut marked = previous.clone();
                if marked["metadata"]["deletionTimestamp"].is_null() {
                    marked["metadata"]["deletionTimestamp"] = json!(objects::now());
                    marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                }
                return Ok(Some(marked));
            }
            Ok(None)
        })?;
        self.react(rt, &key);
        stored
            .map(|obj| objects::to_external(rt, &obj))
            .ok_or_else(|| internal("delete found nothing"))
    }

    /// Removes an object without API checks (cascades and controllers).
    pub fn remove(&self, key: &Key) {
        let removed = self.store.write::<ApiError>(key, |_| Ok(None));
        if matches!(removed, Ok(Some(_))) {
            let rt = self
                .registry()
                .all()
                .find(|rt| rt.storage == key.0)
                .cloned();
            if let Some(rt) = rt {
                self.react(&rt, key);
            }
        }
    }
}
