//! Just enough OpenAPI v3 for kubectl: the root index and one document per group/version whose
//! PATCH operations declare the `fieldValidation` query parameter.
//!
//! kubectl (`--validate=strict`, its default) refuses to send an object until it knows whether
//! the server validates fields itself; it learns that from these documents and, without them,
//! falls back to client-side validation that needs the full schema. Declaring server-side
//! validation keeps `kubectl create/apply` working without carrying the Kubernetes schema. The
//! server accepts `fieldValidation` but does not reject unknown fields.

use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Map, Value, json};

use super::resources::Registry;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn hash(doc: &Value) -> String {
    let mut hasher = DefaultHasher::new();
    doc.to_string().hash(&mut hasher);
    format!("{:016X}", hasher.finish())
}

/// `/openapi/v3/<api/v1 | apis/g/v>`.
pub(crate) fn document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    for rt in registry
        .all()
        .filter(|rt| rt.group == group && rt.version == version)
    {
        let scope = if rt.namespaced {
            "namespaces/{namespace}/"
        } else {
            ""
        };
        let path = format!("/{}/{scope}{}/{{name}}", gv_path(group, version), rt.plural);
        let operation = json!({
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": rt.kind},
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            ],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(path, json!({"patch": operation}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// `/openapi/v3`: where each group/version's document lives.
pub(crate) fn root(registry: &Registry) -> Value {
    let mut paths = Map::new();
    let mut seen = Vec::new();
    for rt in registry.all() {
        let gv = (rt.group.clone(), rt.version.clone());
        if seen.contains(&gv) {
            continue;
        }
        if let Some(doc) = document(registry, &gv.0, &gv.1) {
            let path = gv_path(&gv.0, &gv.1);
            let url = format!("/openapi/v3/{path}?hash={}", hash(&doc));
            paths.insert(path, json!({"serverRelativeURL": url}));
        }
        seen.push(gv);
    }
    json!({"paths": paths})
}
