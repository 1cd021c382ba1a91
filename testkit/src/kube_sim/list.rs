//! LIST with the real server's resourceVersion semantics and paging.
//!
//! - no resourceVersion: the newest state; `0` or `resourceVersionMatch=NotOlderThan`: any state
//!   at least that new (the newest here; a version from the future is 504 Timeout);
//! - `resourceVersionMatch=Exact`: the state as of that revision, rebuilt from the history, or
//!   410 Expired once the history no longer reaches back;
//! - `limit`/`continue`: every page is served from the first page's revision, so a paged list is
//!   one consistent snapshot, and an expired continue token is 410 as on a real server.

use k8s_openapi::ByteString;
use serde_json::{Value, json};

use super::cluster::Cluster;
use super::objects::to_external;
use super::resources::ResourceType;
use super::select::Selector;
use super::status::ApiError;

/// The query parameters of a list request.
#[derive(Debug, Default, Clone)]
pub(crate) struct ListQuery {
    pub selector: Selector,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

/// Continue tokens carry the snapshot revision and the last key returned.
fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{ns}/{name}")});
    match serde_json::to_value(ByteString(token.to_string().into_bytes())) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

fn decode_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: invalid continue token");
    let ByteString(bytes) =
        serde_json::from_value(Value::String(token.to_string())).map_err(|_| bad())?;
    let decoded: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = decoded["rv"].as_u64().ok_or_else(bad)?;
    let (ns, name) = decoded["start"]
        .as_str()
        .and_then(|s| s.split_once('/'))
        .ok_or_else(bad)?;
    Ok((rv, ns.to_string(), name.to_string()))
}

pub(crate) fn parse_rv(rv: &str) -> Result<u64, ApiError> {
    rv.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "resourceVersion: Invalid value: \"{rv}\": must be a valid resourceVersion"
        ))
    })
}

impl Cluster {
    /// The objects of one type in one namespace (None: all), newest state, in `rt`'s shape.
    pub(crate) fn list_objects(&self, rt: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
        self.store
            .list(&rt.storage, namespace, None)
            .map(|(_, items)| items.iter().map(|(_, obj)| to_external(rt, obj)).collect())
            .unwrap_or_default()
    }

    /// A `<Kind>List` answer to a list request.
    pub(crate) fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        query: &ListQuery,
    ) -> Result<Value, ApiError> {
        let current = self.store.current_rv();
        let mut start = None;
        let at = if let Some(token) = &query.continue_token {
            let (rv, ns, name) = decode_continue(token)?;
            start = Some((ns, name));
            Some(rv)
        } else {
            match (
                query.resource_version.as_deref(),
                query.resource_version_match.as_deref(),
            ) {
                (None | Some(""), Some(m)) if !m.is_empty() => {
                    return Err(ApiError::bad_request(
                        "resourceVersionMatch is forbidden unless resourceVersion is provided",
                    ));
                }
                (Some(rv), Some("Exact")) => Some(parse_rv(rv)?),
                (Some(rv), None | Some("NotOlderThan")) if !rv.is_empty() && rv != "0" => {
                    let wanted = parse_rv(rv)?;
                    if wanted > current {
                        let mut err = ApiError::new(
                            504,
                            "Timeout",
                            format!("Too large resource version: {wanted}, current: {current}"),
                        );
                        err.details = Some((rt.qualified(), String::new()));
                        return Err(err);
                    }
                    None
                }
                (_, None | Some("NotOlderThan")) => None,
                (_, Some(other)) => {
                    return Err(ApiError::bad_request(format!(
                        "resourceVersionMatch: Unsupported value: \"{other}\""
                    )));
                }
            }
        };
        let (rv, items) = self.store.list(&rt.storage, namespace, at).map_err(|gone| {
            if query.continue_token.is_some() {
                ApiError::expired(format!(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter. (oldest: {})",
                    gone.oldest
                ))
            } else {
                ApiError::expired(format!("too old resource version: {} ({})", at.unwrap_or_default(), gone.oldest))
            }
        })?;
        let mut selected = items
            .iter()
            .filter(|(key, _)| {
                start
                    .as_ref()
                    .is_none_or(|(ns, name)| (&key.1, &key.2) > (ns, name))
            })
            .map(|(key, obj)| (key, to_external(rt, obj)))
            .filter(|(_, obj)| query.selector.matches(obj));
        let limit = query.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut page = Vec::new();
        let mut last = None;
        for (key, mut obj) in selected.by_ref().take(limit) {
            if !rt.custom
                && let Some(map) = obj.as_object_mut()
            {
                map.remove("apiVersion");
                map.remove("kind");
            }
            page.push(obj);
            last = Some(key);
        }
        let remaining = selected.count();
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let Some(key) = last.filter(|_| remaining > 0) {
            metadata["continue"] = json!(encode_continue(rv, &key.1, &key.2));
            if query.selector.is_empty() {
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": metadata,
            "items": page,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let token = encode_continue(42, "ns", "pod-7");
        assert_eq!(
            decode_continue(&token).expect("valid"),
            (42, "ns".into(), "pod-7".into())
        );
        assert_eq!(decode_continue("garbage!").expect_err("invalid").code, 400);
    }
}
