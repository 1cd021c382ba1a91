//! The NPWG networks annotation, `k8s.v1.cni.cncf.io/networks`: what Multus users already write
//! on their pods, read the way the "Kubernetes Network Custom Resource Definition De-facto
//! Standard" v1 and Multus read it.
//!
//! Two forms: a comma-separated list of `name`, `namespace/name` and Multus' `name@ifname`
//! (blanks around items ignored); or a JSON list of selection elements with `name`
//! (required), `namespace`, `interface`, `mac`, `ips`, and Multus' `cni-args`, `default-route`,
//! `portMappings` and `bandwidth`. Unknown keys are ignored: the standard reserves reverse-DNS
//! keys for implementations, and Multus adds more than podagent uses. Like the Kaloom
//! annotation, everything that can flow into `CNI_ARGS`, an interface name, a runtime config or
//! an Event is checked here, completely and once, and every problem is reported together with
//! its element's index.
//!
//! The standard allows one network twice in a pod (on two interfaces), so names need not be
//! unique here; interface names given explicitly must be. Which interface an element without
//! one gets is decided later, where the pod's `network-status` and its links are known.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{
    AnnotationError, EntryProblem, MAX_NETWORKS, MacAddr, NetworkSelection, json_list, kind,
    nonblank, string_field,
};
use crate::cni::Cidr;
use crate::names::{check_label, check_subdomain};

/// The kernel's limit on interface names (IFNAMSIZ - 1).
const MAX_IFNAME_BYTES: usize = 15;

/// One selection element: a network to attach, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    /// The NetworkAttachmentDefinition's name.
    pub name: String,
    /// Its namespace; `None`: the pod's.
    pub namespace: Option<String>,
    /// The interface name asked for; `None`: podagent picks one.
    pub interface: Option<String>,
    pub mac: Option<MacAddr>,
    /// Addresses the attachment must get (the plugin's IPAM must honour them).
    pub ips: Vec<Cidr>,
    /// Extra `args.cni` for the plugins.
    pub cni_args: Map<String, Value>,
    /// Gateways this attachment's default route should use.
    pub default_route: Vec<IpAddr>,
    /// The `portMappings` capability argument, as given (a list of objects).
    pub port_mappings: Vec<Value>,
    /// The `bandwidth` capability argument, as given (an object).
    pub bandwidth: Option<Map<String, Value>>,
}

impl Element {
    fn named(name: String, namespace: Option<String>, interface: Option<String>) -> Element {
        Element {
            name,
            namespace,
            interface,
            mac: None,
            ips: Vec::new(),
            cni_args: Map::new(),
            default_route: Vec::new(),
            port_mappings: Vec::new(),
            bandwidth: None,
        }
    }

    /// The element in the JSON form, with only the keys that are set.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("name".into(), json!(self.name));
        if let Some(namespace) = &self.namespace {
            object.insert("namespace".into(), json!(namespace));
        }
        if let Some(interface) = &self.interface {
            object.insert("interface".into(), json!(interface));
        }
        if let Some(mac) = &self.mac {
            object.insert("mac".into(), json!(mac.to_string()));
        }
        if !self.ips.is_empty() {
            let ips: Vec<String> = self.ips.iter().map(ToString::to_string).collect();
            object.insert("ips".into(), json!(ips));
        }
        if !self.cni_args.is_empty() {
            object.insert("cni-args".into(), Value::Object(self.cni_args.clone()));
        }
        if !self.default_route.is_empty() {
            let routes: Vec<String> = self.default_route.iter().map(ToString::to_string).collect();
            object.insert("default-route".into(), json!(routes));
        }
        if !self.port_mappings.is_empty() {
            object.insert(
                "portMappings".into(),
                Value::Array(self.port_mappings.clone()),
            );
        }
        if let Some(bandwidth) = &self.bandwidth {
            object.insert("bandwidth".into(), Value::Object(bandwidth.clone()));
        }
        Value::Object(object)
    }
}

/// What an element asks of its attachment beyond a network and an interface, as a record
/// keeps it: a different request on the same interface is a different attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requests {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<Cidr>,
    #[serde(default, rename = "cni-args", skip_serializing_if = "Map::is_empty")]
    pub cni_args: Map<String, Value>,
    #[serde(
        default,
        rename = "default-route",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub default_route: Vec<IpAddr>,
    #[serde(
        default,
        rename = "portMappings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub port_mappings: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Map<String, Value>>,
}

impl Element {
    /// The selection the planner works on: the element's network, namespace, interface (when
    /// given) and MAC, with everything else it asks for as its [`Requests`].
    pub(crate) fn into_selection(self) -> NetworkSelection {
        let requests = Requests {
            ips: self.ips,
            cni_args: self.cni_args,
            default_route: self.default_route,
            port_mappings: self.port_mappings,
            bandwidth: self.bandwidth,
        };
        let empty = requests.ips.is_empty()
            && requests.cni_args.is_empty()
            && requests.default_route.is_empty()
            && requests.port_mappings.is_empty()
            && requests.bandwidth.is_none();
        NetworkSelection {
            name: self.name,
            if_mac: self.mac,
            is_primary: false,
            podagent_skip: false,
            namespace: self.namespace,
            upper_layers: Vec::new(),
            interface: self.interface,
            requests: (!empty).then(|| Box::new(requests)),
        }
    }
}

/// Parses and validates an NPWG annotation value. Absent or blank means no networks.
pub fn parse(value: Option<&str>) -> Result<Vec<Element>, AnnotationError> {
    let Some(text) = nonblank(value)? else {
        return Ok(Vec::new());
    };
    let mut problems = Vec::new();
    let elements = if text.starts_with('[') {
        json_form(text, &mut problems)?
    } else {
        comma_form(text, &mut problems)?
    };
    check_interfaces(&elements, &mut problems);
    check_default_routes(&elements, &mut problems);
    if problems.is_empty() {
        Ok(elements.into_iter().map(|(_, e)| e).collect())
    } else {
        problems.sort_by_key(|p| p.index);
        Err(AnnotationError::Invalid { problems })
    }
}

/// `a, ns/b, c@eth9, ns/d@eth10`.
fn comma_form(
    text: &str,
    problems: &mut Vec<EntryProblem>,
) -> Result<Vec<(usize, Element)>, AnnotationError> {
    let items: Vec<&str> = text.split(',').map(str::trim).collect();
    if items.len() > MAX_NETWORKS {
        return Err(AnnotationError::TooMany {
            count: items.len(),
            max: MAX_NETWORKS,
        });
    }
    let mut elements = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let mut fail = |field, reason: String| {
            problems.push(EntryProblem {
                index,
                field,
                reason,
            })
        };
        if item.is_empty() {
            fail(
                None,
                "is empty (two commas in a row, or a trailing comma)".into(),
            );
            continue;
        }
        let (network, interface) = match item.split_once('@') {
            Some((network, interface)) => (network, Some(interface)),
            None => (item, None),
        };
        let (namespace, name) = match network.split_once('/') {
            Some((namespace, name)) => (Some(namespace), name),
            None => (None, network),
        };
        let namespace = namespace.and_then(|ns| {
            check_label(ns)
                .map_err(|reason| fail(Some("namespace"), format!("{ns:?}: {reason}")))
                .ok()
                .map(|()| ns.to_owned())
        });
        let name_ok = check_subdomain(name)
            .map_err(|reason| fail(Some("name"), format!("{name:?}: {reason}")))
            .is_ok();
        let interface = interface.and_then(|ifname| {
            check_ifname(ifname)
                .map_err(|reason| fail(Some("interface"), reason))
                .ok()
                .map(|()| ifname.to_owned())
        });
        if name_ok {
            elements.push((index, Element::named(name.to_owned(), namespace, interface)));
        }
    }
    Ok(elements)
}

/// `[{"name": "a", "interface": "eth9", ...}, ...]`.
fn json_form(
    text: &str,
    problems: &mut Vec<EntryProblem>,
) -> Result<Vec<(usize, Element)>, AnnotationError> {
    let entries = json_list(text)?;
    let mut elements = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let mut fail = |field: &'static str, reason: String| {
            problems.push(EntryProblem {
                index,
                field: Some(field),
                reason,
            })
        };
        let Value::Object(fields) = entry else {
            problems.push(EntryProblem {
                index,
                field: None,
                reason: format!("must be an object, found {}", kind(entry)),
            });
            continue;
        };
        if let Some(element) = element(fields, &mut fail) {
            elements.push((index, element));
        }
    }
    Ok(elements)
}

/// One JSON element, every field problem reported; `None` when the name is unusable.
fn element(
    fields: &Map<String, Value>,
    fail: &mut dyn FnMut(&'static str, String),
) -> Option<Element> {
    let text = |key: &'static str, fail: &mut dyn FnMut(&'static str, String)| match string_field(
        fields, key,
    ) {
        Ok(value) => value.filter(|v| !v.is_empty()),
        Err(reason) => {
            fail(key, reason);
            None
        }
    };
    let name = match text("name", fail) {
        Some(name) => check_subdomain(name)
            .map_err(|reason| fail("name", reason))
            .ok()
            .map(|()| name.to_owned()),
        None => {
            if !matches!(fields.get("name"), Some(v) if !v.is_string()) {
                fail("name", "is required".to_owned());
            }
            None
        }
    };
    let namespace = text("namespace", fail).and_then(|ns| {
        check_label(ns)
            .map_err(|reason| fail("namespace", reason))
            .ok()
            .map(|()| ns.to_owned())
    });
    let interface = text("interface", fail).and_then(|ifname| {
        check_ifname(ifname)
            .map_err(|reason| fail("interface", reason))
            .ok()
            .map(|()| ifname.to_owned())
    });
    let mac = text("mac", fail).and_then(|mac| {
        mac.parse::<MacAddr>()
            .map_err(|e| fail("mac", e.to_string()))
            .ok()
    });
    let ips = strings(fields, "ips", fail)
        .into_iter()
        .filter_map(|ip| {
            ip.parse::<Cidr>()
                .map_err(|reason| {
                    fail(
                        "ips",
                        format!("{reason} (write addresses as 198.18.0.5/24)"),
                    )
                })
                .ok()
        })
        .collect();
    let default_route = strings(fields, "default-route", fail)
        .into_iter()
        .filter_map(|gateway| {
            gateway
                .parse::<IpAddr>()
                .map_err(|_| fail("default-route", format!("{gateway:?} is not an IP address")))
                .ok()
        })
        .collect();
    let cni_args = object(fields, "cni-args", fail).unwrap_or_default();
    let port_mappings = match fields.get("portMappings") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => match items.iter().find(|i| !i.is_object()) {
            None => items.clone(),
            Some(item) => {
                let found = kind(item);
                fail(
                    "portMappings",
                    format!("must be a list of objects, found {found} in it"),
                );
                Vec::new()
            }
        },
        Some(other) => {
            let found = kind(other);
            fail(
                "portMappings",
                format!("must be a list of objects, found {found}"),
            );
            Vec::new()
        }
    };
    let bandwidth = object(fields, "bandwidth", fail);
    name.map(|name| Element {
        name,
        namespace,
        interface,
        mac,
        ips,
        cni_args,
        default_route,
        port_mappings,
        bandwidth,
    })
}

/// The object under `key` (absent: `None`); anything else is reported and read as absent.
fn object(
    fields: &Map<String, Value>,
    key: &'static str,
    fail: &mut dyn FnMut(&'static str, String),
) -> Option<Map<String, Value>> {
    match fields.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Object(object)) => Some(object.clone()),
        Some(other) => {
            fail(key, format!("must be an object, found {}", kind(other)));
            None
        }
    }
}

/// A list of strings under `key` (absent: empty); a bad list is reported and read as empty.
fn strings(
    fields: &Map<String, Value>,
    key: &'static str,
    fail: &mut dyn FnMut(&'static str, String),
) -> Vec<String> {
    match fields.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        Some(other) => {
            fail(
                key,
                format!("must be a list of strings, found {}", kind(other)),
            );
            Vec::new()
        }
    }
}

/// A Linux interface name podagent will pass on: 1 to 15 characters of letters, digits, `-`,
/// `_` and `.`, not `.` or `..` (the kernel refuses those, and `/`, `:` and blanks).
pub(crate) fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME_BYTES {
        return Err(format!(
            "{name:?} must be 1 to {MAX_IFNAME_BYTES} characters long"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a usable interface name"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{name:?} has {bad:?}; interface names are letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// Interface names given explicitly must differ (the kernel has one link per name).
fn check_interfaces(elements: &[(usize, Element)], problems: &mut Vec<EntryProblem>) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (index, element) in elements {
        let Some(interface) = element.interface.as_deref() else {
            continue;
        };
        match first.get(interface) {
            Some(earlier) => problems.push(EntryProblem {
                index: *index,
                field: Some("interface"),
                reason: format!("{interface} is already used by element [{earlier}]"),
            }),
            None => {
                first.insert(interface, *index);
            }
        }
    }
}

/// A pod has one default route per family: one gateway of each family in all the elements.
fn check_default_routes(elements: &[(usize, Element)], problems: &mut Vec<EntryProblem>) {
    let mut first: HashMap<bool, usize> = HashMap::new();
    for (index, element) in elements {
        for gateway in &element.default_route {
            let family = if gateway.is_ipv6() { "IPv6" } else { "IPv4" };
            match first.get(&gateway.is_ipv6()) {
                Some(earlier) => problems.push(EntryProblem {
                    index: *index,
                    field: Some("default-route"),
                    reason: format!(
                        "{gateway}: element [{earlier}] already asks for the {family} default \
                         route, and a pod has one per family"
                    ),
                }),
                None => {
                    first.insert(gateway.is_ipv6(), *index);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<Element> {
        parse(Some(text)).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn problems(text: &str) -> String {
        match parse(Some(text)) {
            Err(AnnotationError::Invalid { problems }) => problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn the_comma_form_takes_names_namespaces_and_interfaces() {
        let elements = ok(" a , team/b,c@eth9, team/d@net1 ");
        let shape: Vec<(&str, Option<&str>, Option<&str>)> = elements
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.namespace.as_deref(),
                    e.interface.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("a", None, None),
                ("b", Some("team"), None),
                ("c", None, Some("eth9")),
                ("d", Some("team"), Some("net1")),
            ]
        );
        assert_eq!(ok("a,a").len(), 2, "one network twice is allowed");
    }

    #[test]
    fn the_json_form_takes_every_key_and_ignores_unknown_ones() {
        let elements = ok(r#"[{"name":"a","namespace":"team","interface":"eth9",
            "mac":"02:00:00:00:00:0a","ips":["198.18.77.5/24","2001:db8::5/64"],
            "cni-args":{"vlan":7},"default-route":["198.18.77.1"],
            "portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],
            "bandwidth":{"ingressRate":1000},"example.com/extra":true,"infiniband-guid":"x"}]"#);
        let a = &elements[0];
        assert_eq!(
            a.mac.map(|m| m.to_string()).as_deref(),
            Some("02:00:00:00:00:0a")
        );
        assert_eq!(a.ips.len(), 2);
        assert_eq!(a.cni_args["vlan"], 7);
        assert_eq!(a.default_route, ["198.18.77.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.port_mappings.len(), 1);
        assert!(a.bandwidth.is_some());
        assert_eq!(
            ok(&json!([a.to_json()]).to_string()),
            elements,
            "round trip"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_element() {
        let text = problems(
            r#"[{"namespace":"Team"},{"name":"a","interface":"eth0/x","mac":"01:00:5e:00:00:01"},
                {"name":"b","ips":["198.18.0.5"],"default-route":["gw"],"cni-args":[1]},
                {"name":"c","interface":"eth9"},{"name":"d","interface":"eth9"},7,
                {"name":"e","default-route":["198.18.0.1","2001:db8::1","198.18.0.2"]},
                {"name":"f","default-route":["2001:db8::2"]}]"#,
        );
        for expected in [
            "[0].name: is required",
            "[0].namespace:",
            "[1].interface: \"eth0/x\" has '/'",
            "[1].mac:",
            "[2].ips: \"198.18.0.5\" has no /prefix",
            "[2].default-route: \"gw\" is not an IP address",
            "[2].cni-args: must be an object, found a list",
            "[4].interface: eth9 is already used by element [3]",
            "[5]: must be an object, found a number",
            "[6].default-route: 198.18.0.2: element [6] already asks for the IPv4 default route",
            "[7].default-route: 2001:db8::2: element [6] already asks for the IPv6 default route",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        let text = problems("a,,ns/B,c@,d@this-is-far-too-long");
        for expected in [
            "[1]: is empty",
            "[2].name: \"B\"",
            "[3].interface: \"\" must be 1 to 15",
            "[4].interface: \"this-is-far-too-long\" must be 1 to 15",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn limits_hold_in_both_forms() {
        let many = vec!["a"; MAX_NETWORKS + 1].join(",");
        assert!(matches!(
            parse(Some(&many)),
            Err(AnnotationError::TooMany { .. })
        ));
        let big = "a".repeat(super::super::MAX_ANNOTATION_BYTES + 1);
        assert!(matches!(
            parse(Some(&big)),
            Err(AnnotationError::TooLarge { .. })
        ));
        assert_eq!(ok("  "), []);
        assert!(matches!(
            parse(Some("[{]")),
            Err(AnnotationError::NotJson { .. })
        ));
    }
}
