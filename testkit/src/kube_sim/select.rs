//! `labelSelector` and `fieldSelector` parsing and matching, with the real server's grammar.
//!
//! Label selectors: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k>n`,
//! `k<n`, comma-separated (commas inside parentheses belong to the set). Field selectors: `f=v`,
//! `f==v`, `f!=v`, and only the fields a resource supports; any other field is a 400 as on a
//! real server, so a client relying on an unsupported field fails here too.

use serde_json::Value;

use super::resources::ResourceType;
use super::status::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Gt(String, i64),
    Lt(String, i64),
}

#[derive(Debug, Clone, PartialEq)]
struct FieldReq {
    path: String,
    value: String,
    equal: bool,
}

/// Both selectors of one request; empty matches everything.
#[derive(Debug, Default, Clone)]
pub(crate) struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_set(key: &str, rest: &str, selector: &str) -> Result<(String, Vec<String>), ApiError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| ApiError::bad_request(format!("unable to parse requirement: {selector}")))?;
    let values = inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    Ok((key.trim().to_string(), values.collect()))
}

fn parse_label(req: &str) -> Result<LabelReq, ApiError> {
    let bad = || ApiError::bad_request(format!("unable to parse requirement: {req}"));
    if let Some(key) = req.strip_prefix('!') {
        return Ok(LabelReq::NotExists(key.trim().to_string()));
    }
    for (op, build) in [
        (
            " notin ",
            LabelReq::NotIn as fn(String, Vec<String>) -> LabelReq,
        ),
        (" in ", LabelReq::In),
    ] {
        if let Some((key, rest)) = req.split_once(op) {
            let (key, values) = parse_set(key, rest, req)?;
            return Ok(build(key, values));
        }
    }
    let pair = |op: &str| {
        req.split_once(op)
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
    };
    if let Some((k, v)) = pair("!=") {
        return Ok(LabelReq::NotEq(k, v));
    }
    if let Some((k, v)) = pair("==").or_else(|| pair("=")) {
        return Ok(LabelReq::Eq(k, v));
    }
    if let Some((k, v)) = pair(">") {
        return Ok(LabelReq::Gt(k, v.parse().map_err(|_| bad())?));
    }
    if let Some((k, v)) = pair("<") {
        return Ok(LabelReq::Lt(k, v.parse().map_err(|_| bad())?));
    }
    if req.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(LabelReq::Exists(req.to_string()))
}

impl Selector {
    pub fn parse(
        rt: &ResourceType,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Self, ApiError> {
        let labels = label_selector
            .map(|s| {
                split_top(s)
                    .into_iter()
                    .map(parse_label)
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let mut fields = Vec::new();
        for req in field_selector.map(split_top).unwrap_or_default() {
            let (path, value, equal) = if let Some((p, v)) = req.split_once("!=") {
                (p, v, false)
            } else if let Some((p, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
                (p, v, true)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{req}'")));
            };
            let path = path.trim();
            let supported = ["metadata.name", "metadata.namespace"].contains(&path)
                || rt.field_labels.iter().any(|f| f == path);
            if !supported {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {path}"
                )));
            }
            fields.push(FieldReq {
                path: path.to_string(),
                value: value.trim().to_string(),
                equal,
            });
        }
        Ok(Selector { labels, fields })
    }

    /// Whether there is nothing to match (lists then report remainingItemCount).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        let number = |k: &str| label(k).and_then(|v| v.parse::<i64>().ok());
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::Eq(k, v) => label(k) == Some(v),
            LabelReq::NotEq(k, v) => label(k) != Some(v),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelReq::Gt(k, n) => number(k).is_some_and(|l| l > *n),
            LabelReq::Lt(k, n) => number(k).is_some_and(|l| l < *n),
        });
        labels_ok
            && self
                .fields
                .iter()
                .all(|req| (field_value(obj, &req.path) == req.value) == req.equal)
    }
}

/// A field as the real server's field-set functions render it: missing strings are empty and
/// booleans are `true`/`false`.
fn field_value(obj: &Value, path: &str) -> String {
    let value = path.split('.').fold(obj, |v, part| &v[part]);
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null if path == "spec.hostNetwork" || path == "spec.unschedulable" => {
            "false".to_string()
        }
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_sim::resources::Registry;
    use serde_json::json;

    fn pod(labels: Value, node: &str, phase: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels},
               "spec": {"nodeName": node}, "status": {"phase": phase}})
    }

    fn sel(labels: Option<&str>, fields: Option<&str>) -> Result<Selector, ApiError> {
        let registry = Registry::with_builtins();
        let rt = registry.by_path("", "v1", "pods").expect("pods");
        Selector::parse(&rt, labels, fields)
    }

    #[test]
    fn set_based_and_equality_label_selectors_match_like_the_server() {
        let p = pod(
            json!({"app": "web", "tier": "front", "n": "5"}),
            "n1",
            "Running",
        );
        for (selector, expected) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (web, db)", true),
            ("app notin (web,db)", false),
            ("missing notin (x)", true),
            ("tier", true),
            ("!tier", false),
            ("!missing,app in (web)", true),
            ("n>4", true),
            ("n<5", false),
        ] {
            let s = sel(Some(selector), None).expect(selector);
            assert_eq!(s.matches(&p), expected, "{selector}");
        }
    }

    #[test]
    fn field_selectors_cover_node_phase_and_name() {
        let p = pod(json!({}), "n1", "Running");
        assert!(sel(None, Some("spec.nodeName=n1")).expect("ok").matches(&p));
        assert!(!sel(None, Some("spec.nodeName=n2")).expect("ok").matches(&p));
        assert!(
            sel(None, Some("status.phase!=Pending,metadata.name=p"))
                .expect("ok")
                .matches(&p)
        );
        assert!(
            sel(None, Some("metadata.namespace==ns"))
                .expect("ok")
                .matches(&p)
        );
        assert!(
            sel(None, Some("spec.hostNetwork=false"))
                .expect("ok")
                .matches(&p)
        );
    }

    #[test]
    fn unsupported_field_label_is_a_bad_request() {
        let err = sel(None, Some("spec.containers=x")).expect_err("unsupported");
        assert_eq!(err.code, 400);
    }
}
