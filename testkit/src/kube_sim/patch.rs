//! PATCH bodies: JSON merge patch, strategic merge patch, JSON patch and server-side apply.
//!
//! kubectl annotate sends merge patches, kubectl apply sends strategic merge patches for built-in
//! kinds and merge patches for custom resources, kube-rs offers all four. Strategic merge differs
//! from merge only in lists and `$`-directives; the lists a node agent's peers patch (containers,
//! env, volumes, conditions, ownerReferences, finalizers …) merge by their real patch keys, every
//! other list is replaced. Server-side apply is applied as a merge of the applied configuration:
//! field ownership is not tracked, so an apply that drops a field does not remove it.

use serde_json::{Map, Value};

use super::status::ApiError;

/// The patch flavour, from the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchType::Apply),
            other => Err(unsupported(other)),
        }
    }
}

pub(crate) fn unsupported(media: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format ({media}) - accepted media types \
             include: application/json-patch+json, application/merge-patch+json, \
             application/apply-patch+yaml"
        ),
    )
}

/// Parses the body of a patch of `kind` (YAML for apply, JSON otherwise).
pub(crate) fn parse(kind: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    let parsed = match kind {
        PatchType::Apply => serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string()),
        _ => serde_json::from_slice::<Value>(body).map_err(|e| e.to_string()),
    };
    parsed.map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// Applies `patch` to `target`.
pub(crate) fn apply(kind: PatchType, target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut out = target.clone();
    match kind {
        PatchType::Merge | PatchType::Apply => merge(&mut out, patch),
        PatchType::Strategic => strategic(&mut out, patch),
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(&mut out, &ops).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
    }
    Ok(out)
}

/// RFC 7386.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// The patch merge key of a list field, by field name; None: the list is replaced.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "containerStatuses"
        | "initContainerStatuses" => Some("name"),
        "ports" => Some("containerPort"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "podIPs" | "hostIPs" => Some("ip"),
        _ => None,
    }
}

/// Fields whose primitive lists merge as sets (`patchStrategy: merge` without a key).
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

fn strategic(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            *target = Value::Object(replaced);
            return;
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(list_field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Value::Array(gone)) =
                (target.get_mut(list_field), value)
            {
                items.retain(|item| !gone.contains(item));
            }
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match (target.get_mut(key), value) {
            (Some(Value::Array(current)), Value::Array(items)) => merge_list(current, items, key),
            (Some(existing), Value::Object(_)) => strategic(existing, value),
            _ => {
                let mut fresh = Value::Null;
                strategic(&mut fresh, &strip_directives(value));
                target.insert(key.clone(), fresh);
            }
        }
    }
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn merge_list(current: &mut Vec<Value>, items: &[Value], field: &str) {
    if merges_primitives(field) {
        for item in items {
            if !current.contains(item) {
                current.push(item.clone());
            }
        }
        return;
    }
    let Some(key) = merge_key(field) else {
        *current = items.iter().map(strip_directives).collect();
        return;
    };
    for item in items {
        let id = &item[key];
        let position = current.iter().position(|c| &c[key] == id);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                current.remove(i);
            }
            (Some(i), false) => strategic(&mut current[i], item),
            (None, false) => current.push(strip_directives(item)),
            (None, true) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_sets_and_removes_annotations() {
        let pod = json!({"metadata": {"annotations": {"a": "1", "b": "2"}}});
        let out = apply(
            PatchType::Merge,
            &pod,
            &json!({"metadata": {"annotations": {"a": null, "c": "3"}}}),
        )
        .expect("patch");
        assert_eq!(out["metadata"]["annotations"], json!({"b": "2", "c": "3"}));
    }

    #[test]
    fn strategic_patch_merges_keyed_lists_and_replaces_others() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}],
                                  "tolerations": [{"key": "t"}]},
                         "metadata": {"finalizers": ["f1"]}});
        let patch = json!({"spec": {"containers": [{"name": "b", "image": "z"}, {"name": "a", "$patch": "delete"}],
                                    "$setElementOrder/containers": [{"name": "b"}],
                                    "tolerations": [{"key": "u"}]},
                           "metadata": {"finalizers": ["f2"]}});
        let out = apply(PatchType::Strategic, &pod, &patch).expect("patch");
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b", "image": "z"}])
        );
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "u"}]));
        assert_eq!(out["metadata"]["finalizers"], json!(["f1", "f2"]));
    }

    #[test]
    fn json_patch_and_bad_media_type() {
        let obj = json!({"metadata": {"labels": {"a": "1"}}});
        let out = apply(
            PatchType::Json,
            &obj,
            &json!([{"op": "replace", "path": "/metadata/labels/a", "value": "2"}]),
        )
        .expect("patch");
        assert_eq!(out["metadata"]["labels"]["a"], "2");
        assert_eq!(
            PatchType::from_content_type("text/plain")
                .expect_err("415")
                .code,
            415
        );
    }
}
