//! What the real server does to an object between the request and storage: conversion between
//! the stored form and an API version's shape, system metadata (uid, timestamps, generation,
//! generated names), per-kind defaults, and the validation clients actually trip over.
//!
//! Events are stored once in the `v1` shape; `events.k8s.io/v1` is a view mapped field by field
//! as the real conversion does (`message`↔`note`, `involvedObject`↔`regarding`,
//! `reportingComponent`↔`reportingController`, `source`/`firstTimestamp`/`lastTimestamp`/`count`
//! ↔ their `deprecated*` names), so an event written through one API is read through the other.

use std::hash::{BuildHasher, RandomState};

use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::resources::{Codec, ResourceType};
use super::status::ApiError;

/// (core/v1 name, events.k8s.io/v1 name) of fields that differ between the two event shapes.
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

/// Fields with the same name in both event shapes.
const EVENT_SHARED: &[&str] = &[
    "metadata",
    "eventTime",
    "series",
    "action",
    "reason",
    "related",
    "type",
    "reportingInstance",
];

fn rename(obj: &Value, from_core: bool) -> Map<String, Value> {
    let mut out = Map::new();
    for field in EVENT_SHARED {
        if let Some(v) = obj.get(*field).filter(|v| !v.is_null()) {
            out.insert(field.to_string(), v.clone());
        }
    }
    for (core, new) in EVENT_RENAMES {
        let (from, to) = if from_core { (core, new) } else { (new, core) };
        if let Some(v) = obj.get(*from).filter(|v| !v.is_null()) {
            out.insert(to.to_string(), v.clone());
        }
    }
    out
}

/// The stored object as `rt`'s API version shows it, with apiVersion and kind set.
pub(crate) fn to_external(rt: &ResourceType, stored: &Value) -> Value {
    let mut out = match rt.codec {
        Codec::Identity => stored.as_object().cloned().unwrap_or_default(),
        Codec::EventsV1 => rename(stored, true),
    };
    out.insert("apiVersion".into(), json!(rt.api_version()));
    out.insert("kind".into(), json!(rt.kind));
    Value::Object(out)
}

/// An object in `rt`'s shape converted to the stored form.
pub(crate) fn to_internal(rt: &ResourceType, external: Value) -> Value {
    match rt.codec {
        Codec::Identity => external,
        Codec::EventsV1 => {
            let mut out = rename(&external, false);
            out.insert("apiVersion".into(), json!("v1"));
            out.insert("kind".into(), json!("Event"));
            Value::Object(out)
        }
    }
}

/// A random 64-bit number; uids, generated names and tokens only need to be unique.
pub(crate) fn random_u64() -> u64 {
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// The current time (jiff is built without its `std` clock here, so it is read from std).
pub(crate) fn now_timestamp() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    Timestamp::from_second(i64::try_from(since_epoch).unwrap_or_default())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

pub(crate) fn now() -> String {
    now_timestamp().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The random suffix alphabet of generateName (no vowels, no confusable digits).
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Validation a client can hit; the real server checks far more, but nothing here checks
/// less than it for these fields.
pub(crate) fn validate_external(
    rt: &ResourceType,
    obj: &Value,
    name: &str,
) -> Result<(), ApiError> {
    if rt.codec == Codec::EventsV1 {
        let mut missing = Vec::new();
        for field in [
            "eventTime",
            "reportingController",
            "reportingInstance",
            "action",
        ] {
            if obj.get(field).is_none_or(|v| v.is_null() || v == "") {
                missing.push(format!("{field}: Required value"));
            }
        }
        if !matches!(obj["type"].as_str(), Some("Normal" | "Warning")) {
            missing.push("type: Unsupported value: must be Normal or Warning".to_string());
        }
        if !missing.is_empty() {
            return Err(ApiError::invalid(
                &rt.qualified(),
                name,
                format!(
                    "Event.events.k8s.io \"{name}\" is invalid: {}",
                    missing.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Fills the metadata the server owns on create: name from generateName, uid, timestamps,
/// generation; drops what a client may not set.
pub(crate) fn init_metadata(rt: &ResourceType, obj: &mut Value) -> Result<String, ApiError> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    if meta["name"].as_str().is_none_or(str::is_empty) {
        match meta["generateName"].as_str() {
            Some(prefix) if !prefix.is_empty() => {
                meta["name"] = json!(format!("{prefix}{}", name_suffix()))
            }
            _ => {
                return Err(ApiError::invalid(
                    &rt.qualified(),
                    "",
                    format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        rt.kind
                    ),
                ));
            }
        }
    }
    let name = meta["name"].as_str().unwrap_or_default().to_string();
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("uid".into(), json!(uid()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        for owned in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(owned);
        }
    }
    Ok(name)
}

/// Per-kind defaults the real server's defaulting and admission apply on create. `keep_status`
/// is the library's direct write; an API create starts every status fresh.
pub(crate) fn apply_defaults(rt: &ResourceType, obj: &mut Value, keep_status: bool) {
    if rt.custom {
        return;
    }
    match rt.kind.as_str() {
        "Pod" => default_pod(obj, keep_status),
        "Namespace" => {
            let name = obj["metadata"]["name"].clone();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            obj["spec"]["finalizers"] = json!(["kubernetes"]);
            if !keep_status || obj["status"]["phase"].is_null() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        "Secret" if obj["type"].is_null() => obj["type"] = json!("Opaque"),
        _ => {}
    }
}

fn default_pod(obj: &mut Value, keep_status: bool) {
    let spec = &mut obj["spec"];
    for (field, value) in [
        ("restartPolicy", json!("Always")),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("serviceAccountName", json!("default")),
        ("securityContext", json!({})),
        ("enableServiceLinks", json!(true)),
        ("priority", json!(0)),
    ] {
        if spec[field].is_null() {
            spec[field] = value;
        }
    }
    if let Some(containers) = spec["containers"].as_array_mut() {
        for c in containers {
            let latest = c["image"]
                .as_str()
                .is_none_or(|i| !i.contains(':') || i.ends_with(":latest"));
            for (field, value) in [
                (
                    "imagePullPolicy",
                    json!(if latest { "Always" } else { "IfNotPresent" }),
                ),
                ("terminationMessagePath", json!("/dev/termination-log")),
                ("terminationMessagePolicy", json!("File")),
                ("resources", json!({})),
            ] {
                if c[field].is_null() {
                    c[field] = value;
                }
            }
        }
    }
    if !keep_status || obj["status"].is_null() {
        obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
    }
}

/// Everything but metadata and status: a change here bumps metadata.generation.
pub(crate) fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut m = v.as_object().cloned().unwrap_or_default();
        m.remove("metadata");
        m.remove("status");
        m
    };
    strip(old) != strip(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_sim::resources::Registry;

    #[test]
    fn events_round_trip_between_the_two_shapes() {
        let registry = Registry::with_builtins();
        let new = registry
            .by_path("events.k8s.io", "v1", "events")
            .expect("events.k8s.io");
        let core = registry.by_path("", "v1", "events").expect("core");
        let external = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"}, "note": "attached",
            "regarding": {"kind": "Pod", "name": "p"}, "reportingController": "podagent",
            "reportingInstance": "node-1", "action": "Attach", "reason": "Attached", "type": "Normal",
            "eventTime": "2024-01-01T00:00:00.000000Z"});
        let stored = to_internal(&new, external.clone());
        let as_core = to_external(&core, &stored);
        assert_eq!(as_core["message"], "attached");
        assert_eq!(as_core["involvedObject"]["name"], "p");
        assert_eq!(as_core["reportingComponent"], "podagent");
        assert_eq!(as_core["apiVersion"], "v1");
        assert_eq!(to_external(&new, &stored), external);
    }

    #[test]
    fn generated_names_and_uids_are_unique() {
        let registry = Registry::with_builtins();
        let pods = registry.by_path("", "v1", "pods").expect("pods");
        let mut a = json!({"metadata": {"generateName": "web-"}});
        let mut b = a.clone();
        let (na, nb) = (
            init_metadata(&pods, &mut a).expect("a"),
            init_metadata(&pods, &mut b).expect("b"),
        );
        assert!(na.starts_with("web-") && na.len() == 9);
        assert_ne!(na, nb);
        assert_ne!(a["metadata"]["uid"], b["metadata"]["uid"]);
        assert!(init_metadata(&pods, &mut json!({})).is_err());
    }
}
