//! Server-side printing: `meta.k8s.io/v1` Tables for `kubectl get`.
//!
//! kubectl asks for a Table and prints whatever columns the server sends; pods get the familiar
//! NAME/READY/STATUS/RESTARTS/AGE (+IP/NODE with `-o wide`), events their usual columns, every
//! other kind NAME/AGE. Rows carry the object's metadata (or the object, with
//! `includeObject=Object`) because kubectl reads namespace and name from it.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::resources::ResourceType;

/// Whether the first media type of `Accept` is a meta.k8s.io/v1 Table.
pub(crate) fn wanted(accept: &str) -> bool {
    let first = accept.split(',').next().unwrap_or("");
    let params: Vec<&str> = first.split(';').map(str::trim).collect();
    params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io") && params.contains(&"v=v1")
}

fn column(name: &str, kind: &str, priority: u8) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": kind, "format": format, "description": name, "priority": priority})
}

/// kubectl's short human durations (`42s`, `5m10s`, `3h`, `2d4h`, `45d`).
fn age(timestamp: &Value) -> String {
    let Some(then) = timestamp.as_str().and_then(|t| t.parse::<Timestamp>().ok()) else {
        return "<unknown>".to_string();
    };
    let s = (super::objects::now_timestamp().as_second() - then.as_second()).max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses.iter().filter(|s| s["ready"] == true).count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|s| s["restartCount"].as_i64())
        .sum();
    let status = if !pod["metadata"]["deletionTimestamp"].is_null() {
        "Terminating".to_string()
    } else {
        let reason = pod["status"]["reason"]
            .as_str()
            .or(pod["status"]["phase"].as_str());
        reason.unwrap_or("Unknown").to_string()
    };
    let text = |v: &Value| json!(v.as_str().unwrap_or("<none>"));
    vec![
        pod["metadata"]["name"].clone(),
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts),
        json!(age(&pod["metadata"]["creationTimestamp"])),
        text(&pod["status"]["podIP"]),
        text(&pod["spec"]["nodeName"]),
    ]
}

fn event_cells(event: &Value) -> Vec<Value> {
    let (object, message, last) = if event["regarding"].is_object() {
        (
            &event["regarding"],
            &event["note"],
            &event["deprecatedLastTimestamp"],
        )
    } else {
        (
            &event["involvedObject"],
            &event["message"],
            &event["lastTimestamp"],
        )
    };
    let seen = if last.is_null() {
        &event["eventTime"]
    } else {
        last
    };
    vec![
        json!(age(seen)),
        event["type"].clone(),
        event["reason"].clone(),
        json!(format!(
            "{}/{}",
            object["kind"].as_str().unwrap_or("").to_lowercase(),
            object["name"].as_str().unwrap_or("")
        )),
        message.clone(),
    ]
}

/// Renders one object's cells.
type Cells = fn(&Value) -> Vec<Value>;

fn columns(rt: &ResourceType) -> (Vec<Value>, Cells) {
    match (rt.custom, rt.kind.as_str()) {
        (false, "Pod") => (
            vec![
                column("Name", "string", 0),
                column("Ready", "string", 0),
                column("Status", "string", 0),
                column("Restarts", "integer", 0),
                column("Age", "string", 0),
                column("IP", "string", 1),
                column("Node", "string", 1),
            ],
            pod_cells,
        ),
        (false, "Event") => (
            vec![
                column("Last Seen", "string", 0),
                column("Type", "string", 0),
                column("Reason", "string", 0),
                column("Object", "string", 0),
                column("Message", "string", 0),
            ],
            event_cells,
        ),
        _ => (
            vec![column("Name", "string", 0), column("Age", "string", 0)],
            |obj| {
                vec![
                    obj["metadata"]["name"].clone(),
                    json!(age(&obj["metadata"]["creationTimestamp"])),
                ]
            },
        ),
    }
}

/// A Table for a single object or a list.
pub(crate) fn render(rt: &ResourceType, value: &Value, include_object: Option<&str>) -> Value {
    let (definitions, cells) = columns(rt);
    let items: Vec<&Value> = match value["items"].as_array() {
        Some(items) => items.iter().collect(),
        None => vec![value],
    };
    let rows: Vec<Value> = items
        .into_iter()
        .map(|item| {
            let mut row = json!({"cells": cells(item)});
            match include_object {
                Some("None") => {}
                Some("Object") => {
                    let mut full = item.clone();
                    full["apiVersion"] = json!(rt.api_version());
                    full["kind"] = json!(rt.kind);
                    row["object"] = full;
                }
                _ => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                        "metadata": item["metadata"]});
                }
            }
            row
        })
        .collect();
    let mut metadata = json!({"resourceVersion": value["metadata"]["resourceVersion"]});
    if let Some(token) = value["metadata"]["continue"].as_str() {
        metadata["continue"] = json!(token);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
           "columnDefinitions": definitions, "rows": rows})
}
