//! The `networks` annotation: what a user asks podagent to plug into a pod.
//!
//! The annotation is user input that flows into `CNI_ARGS` (a `;`/`=`-separated list), into
//! interface names and into Events, so it is validated here, completely and once, before anything
//! acts on it. Validation reports every problem it finds with the entry index and field, because
//! a user fixing an annotation from a Warning Event should not have to go round one error at a
//! time. Size and count limits are checked before the JSON is walked, so a huge annotation costs
//! little.
//!
//! The field names and semantics follow Kaloom's `kactus` plugin, which reads the same
//! annotation: absent booleans are false, empty strings for `ifMac` and `namespace` mean "not
//! set", unknown fields are ignored. `ifname()` is the naming contract shared with kactus.

mod mac;
pub mod npwg;

use std::collections::HashMap;
use std::fmt;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::names::{check_label, check_subdomain};

pub use mac::{MacAddr, MacError};

/// Largest annotation value accepted, checked before parsing.
pub const MAX_ANNOTATION_BYTES: usize = 64 * 1024;
/// Most entries accepted in one annotation; far more than any pod has interfaces.
pub const MAX_NETWORKS: usize = 64;
const IFNAME_PREFIX: &str = "net";
const IFNAME_HEX_CHARS: usize = 12;

/// One entry of the `networks` annotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSelection {
    /// The network's name: a DNS-1123 subdomain; the interface name is derived from it.
    pub name: String,
    /// The MAC address the interface should get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_mac: Option<MacAddr>,
    /// The pod's primary network (eth0), set up by the runtime, never by podagent.
    #[serde(default)]
    pub(crate) is_primary: bool,
    /// Set by the user to keep podagent's hands off this entry.
    #[serde(default)]
    pub(crate) podagent_skip: bool,
    /// The namespace of the network object, when it is not the pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) namespace: Option<String>,
    /// Networks layered on top of this one; meaningful to the CNI plugin only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) upper_layers: Vec<String>,
    /// The interface name, when it is not derived from the network's (NPWG mode: asked for,
    /// or the one an attachment made at pod creation already has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) interface: Option<String>,
    /// What an NPWG element asks for besides a network, an interface and a MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) requests: Option<Box<npwg::Requests>>,
}

impl NetworkSelection {
    /// A managed selection of `name` with nothing else set: the fixture unit tests build on.
    #[cfg(test)]
    pub(crate) fn named(name: &str) -> Self {
        NetworkSelection {
            name: name.into(),
            if_mac: None,
            is_primary: false,
            podagent_skip: false,
            namespace: None,
            upper_layers: vec![],
            interface: None,
            requests: None,
        }
    }

    /// A selection podagent adds and removes itself (neither primary nor skipped).
    pub(crate) fn is_managed(&self) -> bool {
        !self.is_primary && !self.podagent_skip
    }

    /// The interface name this network gets inside the pod.
    pub fn ifname(&self) -> String {
        self.interface.clone().unwrap_or_else(|| ifname(&self.name))
    }
}

/// `"net"` followed by the first 12 hex digits of md5(name): kactus's interface naming, which
/// podagent must match so both agree on which link belongs to which network.
pub fn ifname(name: &str) -> String {
    let digest = Md5::digest(name.as_bytes());
    let mut out = String::with_capacity(IFNAME_PREFIX.len() + IFNAME_HEX_CHARS);
    out.push_str(IFNAME_PREFIX);
    for byte in &digest[..IFNAME_HEX_CHARS / 2] {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Whether a link name has the shape `ifname()` produces, i.e. could be an attachment made by
/// podagent or kactus (as opposed to `eth0`, `lo` or a user's own interface).
pub fn is_attachment_ifname(link: &str) -> bool {
    link.strip_prefix(IFNAME_PREFIX).is_some_and(|hex| {
        hex.len() == IFNAME_HEX_CHARS
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Why an annotation value was refused. The Display text is what a user reads in a Warning
/// Event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("networks annotation is {size} bytes, more than the {max} allowed")]
    TooLarge { size: usize, max: usize },
    #[error("networks annotation is not valid JSON: {reason}")]
    NotJson { reason: String },
    #[error("networks annotation must be a JSON list of objects, found {found}")]
    NotAList { found: &'static str },
    #[error("networks annotation lists {count} networks, more than the {max} allowed")]
    TooMany { count: usize, max: usize },
    #[error("networks annotation is invalid: {}", join(problems))]
    Invalid { problems: Vec<EntryProblem> },
}

/// One problem with one entry, e.g. `[1].ifMac: 01:00:5e:00:00:01 is a multicast address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryProblem {
    /// Position of the entry in the list, from 0.
    pub index: usize,
    /// The JSON field at fault; `None` when the entry as a whole is.
    pub field: Option<&'static str>,
    pub(crate) reason: String,
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.index)?;
        if let Some(field) = self.field {
            write!(f, ".{field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

fn join(problems: &[EntryProblem]) -> String {
    problems
        .iter()
        .map(EntryProblem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses and validates an annotation value. An absent or blank annotation means no networks.
pub fn parse(value: Option<&str>) -> Result<Vec<NetworkSelection>, AnnotationError> {
    let Some(text) = nonblank(value)? else {
        return Ok(Vec::new());
    };
    let entries = json_list(text)?;
    let mut problems = Vec::new();
    let mut selections = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let mut report = |field, reason| {
            problems.push(EntryProblem {
                index,
                field,
                reason,
            })
        };
        match entry {
            Value::Object(fields) => {
                if let Some(selection) = selection(fields, &mut report) {
                    selections.push((index, selection));
                }
            }
            other => report(None, format!("must be an object, found {}", kind(other))),
        }
    }
    check_across_entries(&selections, &mut problems);

    if problems.is_empty() {
        Ok(selections.into_iter().map(|(_, s)| s).collect())
    } else {
        problems.sort_by_key(|p| p.index);
        Err(AnnotationError::Invalid { problems })
    }
}

/// The annotation's text without surrounding blanks, within the size limit; `None` when it is
/// absent or blank (no networks).
fn nonblank(value: Option<&str>) -> Result<Option<&str>, AnnotationError> {
    let Some(text) = value else {
        return Ok(None);
    };
    if text.len() > MAX_ANNOTATION_BYTES {
        return Err(AnnotationError::TooLarge {
            size: text.len(),
            max: MAX_ANNOTATION_BYTES,
        });
    }
    let text = text.trim();
    Ok((!text.is_empty()).then_some(text))
}

/// The annotation's JSON list of entries, within the count limit.
fn json_list(text: &str) -> Result<Vec<Value>, AnnotationError> {
    let json: Value = serde_json::from_str(text).map_err(|e| AnnotationError::NotJson {
        reason: e.to_string(),
    })?;
    let Value::Array(entries) = json else {
        return Err(AnnotationError::NotAList { found: kind(&json) });
    };
    if entries.len() > MAX_NETWORKS {
        return Err(AnnotationError::TooMany {
            count: entries.len(),
            max: MAX_NETWORKS,
        });
    }
    Ok(entries)
}

type Report<'a> = dyn FnMut(Option<&'static str>, String) + 'a;

/// Builds one selection, reporting every field problem. A bad field is reported and left at its
/// default, so that cross-entry rules still see the entry's name; `None` only when the name
/// itself is unusable. The caller returns selections only when nothing was reported.
fn selection(fields: &Map<String, Value>, report: &mut Report<'_>) -> Option<NetworkSelection> {
    let mut fail = |field: &'static str, reason: String| report(Some(field), reason);

    let name = match string_field(fields, "name") {
        Ok(Some(name)) => check_subdomain(name)
            .map_err(|reason| fail("name", reason))
            .ok()
            .map(|()| name.to_owned()),
        Ok(None) => {
            fail("name", "is required".to_owned());
            None
        }
        Err(reason) => {
            fail("name", reason);
            None
        }
    };
    let if_mac = match string_field(fields, "ifMac") {
        Ok(None) | Ok(Some("")) => None,
        Ok(Some(text)) => text
            .parse::<MacAddr>()
            .map_err(|e| fail("ifMac", e.to_string()))
            .ok(),
        Err(reason) => {
            fail("ifMac", reason);
            None
        }
    };
    let is_primary = bool_field(fields, "isPrimary").unwrap_or_else(|r| {
        fail("isPrimary", r);
        false
    });
    let podagent_skip = bool_field(fields, "podagentSkip").unwrap_or_else(|r| {
        fail("podagentSkip", r);
        false
    });
    let namespace = match string_field(fields, "namespace") {
        Ok(None) | Ok(Some("")) => None,
        Ok(Some(ns)) => check_label(ns)
            .map_err(|reason| fail("namespace", reason))
            .ok()
            .map(|()| ns.to_owned()),
        Err(reason) => {
            fail("namespace", reason);
            None
        }
    };
    let upper_layers = string_list_field(fields, "upperLayers").unwrap_or_else(|r| {
        fail("upperLayers", r);
        Vec::new()
    });

    name.map(|name| NetworkSelection {
        name,
        if_mac,
        is_primary,
        podagent_skip,
        namespace,
        upper_layers,
        interface: None,
        requests: None,
    })
}

/// Rules that span entries: unique names (ignoring case) and at most one primary.
fn check_across_entries(
    selections: &[(usize, NetworkSelection)],
    problems: &mut Vec<EntryProblem>,
) {
    let mut first_by_name: HashMap<String, usize> = HashMap::new();
    let mut primary: Option<usize> = None;
    for (index, selection) in selections {
        let key = selection.name.to_lowercase();
        if let Some(first) = first_by_name.get(&key) {
            problems.push(EntryProblem {
                index: *index,
                field: Some("name"),
                reason: format!("{} is already used by entry [{first}]", selection.name),
            });
        } else {
            first_by_name.insert(key, *index);
        }
        if selection.is_primary {
            match primary {
                Some(first) => problems.push(EntryProblem {
                    index: *index,
                    field: Some("isPrimary"),
                    reason: format!("entry [{first}] is already primary; at most one may be"),
                }),
                None => primary = Some(*index),
            }
        }
    }
}

fn string_field<'a>(fields: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("must be a string, found {}", kind(other))),
    }
}

fn bool_field(fields: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("must be true or false, found {}", kind(other))),
    }
}

fn string_list_field(fields: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "must be a list of strings, found {} in it",
                    kind(other)
                )),
            })
            .collect(),
        Some(other) => Err(format!("must be a list of strings, found {}", kind(other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(value: &str) -> Vec<EntryProblem> {
        match parse(Some(value)) {
            Err(AnnotationError::Invalid { problems }) => problems,
            other => panic!("expected Invalid for {value}, got {other:?}"),
        }
    }

    fn located(problems: &[EntryProblem]) -> Vec<(usize, Option<&'static str>)> {
        problems.iter().map(|p| (p.index, p.field)).collect()
    }

    #[test]
    fn ifname_matches_the_kactus_vectors() {
        assert_eq!(ifname("green"), "net9f27410725ab");
        assert_eq!(ifname("data"), "net8d777f385d3d");
        assert_eq!(ifname("red"), "netbda9643ac660");
        assert_eq!(ifname("blue"), "net48d6215903df");
    }

    #[test]
    fn ifname_fits_the_kernel_limit_and_is_recognised() {
        for name in ["a", "green", &"x".repeat(253)] {
            let link = ifname(name);
            assert_eq!(link.len(), 15, "IFNAMSIZ-1");
            assert!(is_attachment_ifname(&link));
        }
    }

    #[test]
    fn other_link_names_are_not_attachments() {
        for link in [
            "eth0",
            "lo",
            "net",
            "net9f27410725a",
            "net9f27410725abc",
            "net9F27410725AB",
            "netxyz410725abc",
            "nat9f27410725ab",
        ] {
            assert!(!is_attachment_ifname(link), "{link}");
        }
    }

    #[test]
    fn absent_or_blank_annotation_means_no_networks() {
        assert_eq!(parse(None), Ok(vec![]));
        assert_eq!(parse(Some("")), Ok(vec![]));
        assert_eq!(parse(Some("  \n")), Ok(vec![]));
        assert_eq!(parse(Some("[]")), Ok(vec![]));
    }

    #[test]
    fn full_entry_is_parsed_with_camel_case_fields_and_unknown_ones_ignored() {
        let parsed = parse(Some(
            r#"[{"name":"green","ifMac":"00:AA:BB:CC:DD:EE","isPrimary":false,
                "podagentSkip":false,"namespace":"net-ns","upperLayers":["blue","red"],
                "somethingNew":{"x":1}},
               {"name":"eth","isPrimary":true},
               {"name":"kept.out","podagentSkip":true}]"#,
        ))
        .unwrap();
        assert_eq!(
            parsed[0],
            NetworkSelection {
                name: "green".into(),
                if_mac: Some("00:aa:bb:cc:dd:ee".parse().unwrap()),
                is_primary: false,
                podagent_skip: false,
                namespace: Some("net-ns".into()),
                upper_layers: vec!["blue".into(), "red".into()],
                interface: None,
                requests: None,
            }
        );
        assert_eq!(parsed[0].if_mac.unwrap().to_string(), "00:aa:bb:cc:dd:ee");
        assert!(parsed[0].is_managed());
        assert!(parsed[1].is_primary && !parsed[1].is_managed());
        assert!(parsed[2].podagent_skip && !parsed[2].is_managed());
        assert_eq!(parsed[0].ifname(), "net9f27410725ab");
    }

    #[test]
    fn nulls_and_empty_strings_mean_not_set_as_in_kactus() {
        let parsed = parse(Some(
            r#"[{"name":"green","ifMac":"","namespace":"","isPrimary":null,"upperLayers":null}]"#,
        ))
        .unwrap();
        assert_eq!(parsed[0].if_mac, None);
        assert_eq!(parsed[0].namespace, None);
        assert!(!parsed[0].is_primary);
        assert!(parsed[0].upper_layers.is_empty());
    }

    #[test]
    fn invalid_json_is_reported_with_the_parser_position() {
        let err = parse(Some(r#"[{"name":"green""#)).unwrap_err();
        assert!(matches!(err, AnnotationError::NotJson { .. }));
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn a_json_value_that_is_not_a_list_is_refused() {
        assert_eq!(
            parse(Some(r#"{"name":"green"}"#)),
            Err(AnnotationError::NotAList { found: "an object" })
        );
        assert_eq!(
            parse(Some("null")),
            Err(AnnotationError::NotAList { found: "null" })
        );
        assert_eq!(
            parse(Some(r#""green""#)),
            Err(AnnotationError::NotAList { found: "a string" })
        );
    }

    #[test]
    fn names_that_are_not_dns_subdomains_are_refused() {
        for bad in [
            "Green",
            "green;K8S_POD_NAME=x",
            "a=b",
            "a/b",
            "a b",
            "grün",
            "-green",
            "green-",
            "green.",
            ".green",
            "a..b",
            "a.-b",
            "a_b",
            "",
        ] {
            let value = serde_json::json!([{ "name": bad }]).to_string();
            assert_eq!(
                located(&problems(&value)),
                vec![(0, Some("name"))],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn dotted_and_maximum_length_names_are_accepted() {
        let longest = format!("{}.{}", "a".repeat(126), "b".repeat(126));
        assert_eq!(longest.len(), 253);
        let value = serde_json::json!([{"name": "net-1.example.com"}, {"name": longest}]);
        assert_eq!(parse(Some(&value.to_string())).unwrap().len(), 2);
        let too_long = serde_json::json!([{ "name": "a".repeat(254) }]).to_string();
        assert_eq!(problems(&too_long)[0].field, Some("name"));
    }

    #[test]
    fn missing_name_and_wrong_types_are_each_reported() {
        let found = problems(
            r#"[{"ifMac":"00:11:22:33:44:55"},
               {"name":7,"isPrimary":"yes","podagentSkip":1,"upperLayers":"x","namespace":[]},
               "green",
               {"name":"ok","upperLayers":["a",2]}]"#,
        );
        assert_eq!(
            located(&found),
            vec![
                (0, Some("name")),
                (1, Some("name")),
                (1, Some("isPrimary")),
                (1, Some("podagentSkip")),
                (1, Some("namespace")),
                (1, Some("upperLayers")),
                (2, None),
                (3, Some("upperLayers")),
            ]
        );
        assert_eq!(found[0].reason, "is required");
        assert_eq!(
            found[6].to_string(),
            "[2]: must be an object, found a string"
        );
    }

    #[test]
    fn bad_macs_are_refused_with_the_reason() {
        let found = problems(
            r#"[{"name":"a","ifMac":"01:00:5e:00:00:01"},
               {"name":"b","ifMac":"00:00:00:00:00:00"},
               {"name":"c","ifMac":"00:11:22:33:44"},
               {"name":"d","ifMac":"FF:FF:FF:FF:FF:FF"}]"#,
        );
        assert_eq!(
            located(&found),
            (0..4).map(|i| (i, Some("ifMac"))).collect::<Vec<_>>()
        );
        assert!(found[0].reason.contains("multicast"), "{}", found[0]);
        assert!(found[1].reason.contains("all-zero"), "{}", found[1]);
        assert!(found[2].reason.contains("not a MAC"), "{}", found[2]);
        assert!(
            found[3].reason.contains("ff:ff:ff:ff:ff:ff"),
            "{}",
            found[3]
        );
    }

    #[test]
    fn namespace_must_be_a_dns_label() {
        let found =
            problems(r#"[{"name":"a","namespace":"Bad_NS"},{"name":"b","namespace":"a.b"}]"#);
        assert_eq!(
            located(&found),
            vec![(0, Some("namespace")), (1, Some("namespace"))]
        );
    }

    #[test]
    fn duplicate_names_are_refused_even_when_only_case_differs() {
        let found = problems(
            r#"[{"name":"green"},{"name":"blue"},{"name":"green","ifMac":"00:11:22:33:44:55"},
               {"name":"GREEN"}]"#,
        );
        // [3] is refused for its upper case; [2] duplicates [0].
        assert_eq!(located(&found), vec![(2, Some("name")), (3, Some("name"))]);
        assert_eq!(
            found[0].to_string(),
            "[2].name: green is already used by entry [0]"
        );
    }

    #[test]
    fn at_most_one_entry_may_be_primary() {
        let found = problems(
            r#"[{"name":"a","isPrimary":true},{"name":"b"},{"name":"c","isPrimary":true}]"#,
        );
        assert_eq!(located(&found), vec![(2, Some("isPrimary"))]);
        assert!(parse(Some(r#"[{"name":"a","isPrimary":true},{"name":"b"}]"#)).is_ok());
    }

    #[test]
    fn every_problem_is_reported_at_once_in_the_event_text() {
        let err = parse(Some(
            r#"[{"name":"Bad"},{"name":"ok","ifMac":"zz"},{"name":"ok"}]"#,
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("networks annotation is invalid: [0].name: \"Bad\""),
            "{text}"
        );
        assert!(
            text.contains("; [1].ifMac: \"zz\" is not a MAC address"),
            "{text}"
        );
        assert!(
            text.contains("; [2].name: ok is already used by entry [1]"),
            "{text}"
        );
    }

    #[test]
    fn long_user_values_are_shortened_in_messages() {
        let value = serde_json::json!([{ "name": "X".repeat(200) }]).to_string();
        let reason = &problems(&value)[0].reason;
        assert!(reason.len() < 200, "{reason}");
        assert!(reason.contains('…'));
    }

    #[test]
    fn oversized_annotation_is_refused_before_parsing() {
        // Not even JSON: proves the size check comes first.
        let huge = "x".repeat(MAX_ANNOTATION_BYTES + 1);
        assert_eq!(
            parse(Some(&huge)),
            Err(AnnotationError::TooLarge {
                size: MAX_ANNOTATION_BYTES + 1,
                max: MAX_ANNOTATION_BYTES
            })
        );
    }

    #[test]
    fn too_many_entries_are_refused() {
        let entries = |n: usize| {
            let list: Vec<_> = (0..n)
                .map(|i| serde_json::json!({ "name": format!("n{i}") }))
                .collect();
            serde_json::to_string(&list).unwrap()
        };
        assert_eq!(
            parse(Some(&entries(MAX_NETWORKS))).unwrap().len(),
            MAX_NETWORKS
        );
        assert_eq!(
            parse(Some(&entries(MAX_NETWORKS + 1))),
            Err(AnnotationError::TooMany {
                count: MAX_NETWORKS + 1,
                max: MAX_NETWORKS
            })
        );
    }

    #[test]
    fn selection_serialises_with_the_annotation_field_names() {
        let selection = NetworkSelection {
            name: "green".into(),
            if_mac: Some("00:11:22:33:44:55".parse().unwrap()),
            is_primary: false,
            podagent_skip: false,
            namespace: None,
            upper_layers: vec![],
            interface: None,
            requests: None,
        };
        let json = serde_json::to_value(&selection).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name":"green","ifMac":"00:11:22:33:44:55",
                               "isPrimary":false,"podagentSkip":false})
        );
        let text = serde_json::to_string(&vec![&selection]).unwrap();
        assert_eq!(parse(Some(&text)).unwrap(), vec![selection]);
    }
}
