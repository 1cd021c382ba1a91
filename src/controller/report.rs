//! What podagent tells the pod's owner: the Events it records and the value of the
//! `network-status` annotation. Pure decisions; `kubeapi::events` delivers them.
//!
//! A user who edits a `networks` annotation looks at the pod, not at a node's journal, so every
//! outcome podagent reaches shows up on the pod itself: an Event per attachment added or
//! removed, a Warning per failure, and an annotation listing what is plugged in now, shaped like
//! the NPWG `network-status` entries that Multus users already read.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::cni::CniResult;
use crate::netns::Link;
use crate::store::{Phase, PodRecord};

/// The annotation podagent writes the attachments it manages into.
pub(crate) const STATUS_ANNOTATION: &str = "podagent.kaloom.com/network-status";

/// Whether an Event reports something normal or something a person should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Severity {
    Normal,
    Warning,
}

/// One Event about a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Notice {
    pub(crate) severity: Severity,
    /// `AddedInterface`, `FailedAddingInterface`, …
    pub(crate) reason: &'static str,
    /// What podagent was doing: `AddInterface`, `RemoveInterface`, `ReadAnnotation`, `Plan`.
    pub(crate) action: &'static str,
    pub(crate) note: String,
}

/// One entry of the status annotation (NPWG `network-status` shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NetworkStatus {
    pub(crate) name: String,
    pub(crate) interface: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) ips: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mac: Option<String>,
}

/// The status annotation value for `record`: its attached networks, with addresses and MAC
/// from the CNI result when there is one (podagent made the attachment), else from the link
/// seen in the netns (an adopted attachment). `None` when podagent manages nothing in the pod.
pub(crate) fn status_value(record: Option<&PodRecord>, links: &[Link]) -> Option<String> {
    let entries = status_entries(record, links);
    if entries.is_empty() {
        None
    } else {
        serde_json::to_string(&entries).ok()
    }
}

/// The annotation Multus and its users read; podagent merges its entries into it in npwg mode.
pub(crate) const NPWG_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";

/// The `k8s.v1.cni.cncf.io/network-status` value with podagent's entries merged into
/// `existing` (what the pod holds now, whoever wrote it): every entry on an interface podagent
/// holds, or showed in its last write (`record.status_interfaces`), is dropped, then one per
/// attached attachment is appended, named
/// `namespace/name` as the NPWG standard has it. Entries of other writers — the default
/// network's first of all — are kept as they are, in their order; when podagent changes none
/// of them, `existing` is returned verbatim, so nothing is written. `Ok(None)`: nothing is left.
/// `Err`: `existing` is not a JSON list, and rewriting it would destroy what someone wrote.
pub(crate) fn npwg_status_value(
    existing: Option<&str>,
    record: &PodRecord,
    links: &[Link],
    pod_namespace: &str,
) -> Result<Option<String>, String> {
    let mut entries: Vec<serde_json::Value> = match existing.map(str::trim) {
        None | Some("") => Vec::new(),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            format!("{NPWG_STATUS_ANNOTATION} is not a JSON list ({e}); podagent leaves it alone")
        })?,
    };
    let before = entries.clone();
    let held: BTreeSet<&str> = record
        .attachments
        .keys()
        .chain(&record.status_interfaces)
        .map(String::as_str)
        .collect();
    entries.retain(|entry| {
        entry["default"] == true
            || !entry["interface"]
                .as_str()
                .is_some_and(|interface| held.contains(interface))
    });
    let namespaces: BTreeMap<&str, String> = record
        .attachments
        .iter()
        .map(|(ifname, a)| {
            let namespace = a
                .definition
                .as_ref()
                .map(|d| d.namespace.clone())
                .or_else(|| a.selection.namespace.clone())
                .unwrap_or_else(|| pod_namespace.to_owned());
            (ifname.as_str(), namespace)
        })
        .collect();
    for (mut ours, result) in entries_and_results(Some(record), links) {
        if let Some(namespace) = namespaces.get(ours.interface.as_str()) {
            ours.name = format!("{namespace}/{}", ours.name);
        }
        let mut entry = serde_json::to_value(&ours).map_err(|e| e.to_string())?;
        entry["default"] = serde_json::Value::Bool(false);
        entry["dns"] = serde_json::json!({});
        if let Some(result) = result {
            add_result_details(&mut entry, &result, &ours.interface);
        }
        entries.push(entry);
    }
    if entries == before {
        // Nothing of podagent's changes: the value stays exactly as its writer wrote it.
        Ok(existing.map(str::to_owned))
    } else if entries.is_empty() {
        Ok(None)
    } else {
        serde_json::to_string_pretty(&entries)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// The fields of a `network-status` entry that only the CNI result knows: the gateways of the
/// interface's addresses, its MTU and the DNS settings, each present only when the plugin
/// returned it.
fn add_result_details(entry: &mut serde_json::Value, result: &CniResult, ifname: &str) {
    let gateways: Vec<String> = result
        .gateways_of(ifname)
        .iter()
        .map(ToString::to_string)
        .collect();
    if !gateways.is_empty() {
        entry["gateway"] = serde_json::json!(gateways);
    }
    if let Some(mtu) = result.sandbox_interface(ifname).and_then(|i| i.mtu) {
        entry["mtu"] = serde_json::json!(mtu);
    }
    let dns = &result.dns;
    let mut shown = serde_json::Map::new();
    if !dns.nameservers.is_empty() {
        shown.insert("nameservers".into(), serde_json::json!(dns.nameservers));
    }
    if let Some(domain) = &dns.domain {
        shown.insert("domain".into(), serde_json::json!(domain));
    }
    if !dns.search.is_empty() {
        shown.insert("search".into(), serde_json::json!(dns.search));
    }
    entry["dns"] = serde_json::Value::Object(shown);
}

fn status_entries(record: Option<&PodRecord>, links: &[Link]) -> Vec<NetworkStatus> {
    entries_and_results(record, links)
        .into_iter()
        .map(|(entry, _)| entry)
        .collect()
}

/// Each attached attachment's entry, with its parsed CNI result when it has one.
fn entries_and_results(
    record: Option<&PodRecord>,
    links: &[Link],
) -> Vec<(NetworkStatus, Option<CniResult>)> {
    record
        .into_iter()
        .flat_map(|r| r.attachments.values())
        .filter(|a| a.phase == Phase::Attached)
        .map(|a| {
            let result = a.result.clone().and_then(|raw| CniResult::parse(raw).ok());
            let link = links.iter().find(|l| l.name == a.ifname);
            let (ips, mac) = match &result {
                Some(result) if result.sandbox_interface(&a.ifname).is_some() => (
                    result
                        .ips_of(&a.ifname)
                        .iter()
                        .map(|c| c.addr.to_string())
                        .collect(),
                    result.mac_of(&a.ifname).map(str::to_owned),
                ),
                _ => (
                    link.map(|l| l.addresses.iter().map(|a| a.ip.to_string()).collect())
                        .unwrap_or_default(),
                    link.and_then(|l| l.mac.clone()),
                ),
            };
            let entry = NetworkStatus {
                name: a.selection.name.clone(),
                interface: a.ifname.clone(),
                ips,
                mac,
            };
            (entry, result)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotation::NetworkSelection;
    use crate::netns::{Address, OperState};
    use crate::store::Attachment;
    use serde_json::json;

    fn record(attachments: Vec<Attachment>) -> PodRecord {
        PodRecord {
            status_interfaces: Default::default(),
            uid: "u1".into(),
            namespace: "ns".into(),
            name: "web".into(),
            sandbox_id: "s1".into(),
            netns: "/var/run/netns/x".into(),
            attachments: attachments
                .into_iter()
                .map(|a| (a.ifname.clone(), a))
                .collect(),
        }
    }

    fn selection(name: &str) -> NetworkSelection {
        NetworkSelection::named(name)
    }

    #[test]
    fn status_lists_attached_networks_from_results_and_links() {
        let mut green = Attachment::new(selection("green"), Phase::Attached);
        green.result = Some(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "net9f27410725ab", "mac": "0a:00:00:00:00:01", "sandbox": "/x"}],
            "ips": [{"address": "198.18.128.5/24", "interface": 0}]
        }));
        let blue = Attachment::new(selection("blue"), Phase::Attached);
        let red = Attachment::new(selection("red"), Phase::Adding);
        let links = [Link {
            name: "net48d6215903df".into(),
            index: 3,
            mac: Some("0a:00:00:00:00:02".into()),
            oper_state: OperState::Up,
            addresses: vec![Address {
                ip: "198.18.128.6".parse().expect("ip"),
                prefix_len: 24,
            }],
        }];
        let value = status_value(Some(&record(vec![green, blue, red])), &links).expect("status");
        let parsed: serde_json::Value = serde_json::from_str(&value).expect("json");
        assert_eq!(
            parsed,
            json!([
                {"name": "blue", "interface": "net48d6215903df", "ips": ["198.18.128.6"], "mac": "0a:00:00:00:00:02"},
                {"name": "green", "interface": "net9f27410725ab", "ips": ["198.18.128.5"], "mac": "0a:00:00:00:00:01"}
            ])
        );
    }

    #[test]
    fn nothing_attached_means_no_status() {
        assert_eq!(status_value(None, &[]), None);
        let adding = Attachment::new(selection("red"), Phase::Adding);
        assert_eq!(status_value(Some(&record(vec![adding])), &[]), None);
    }

    #[test]
    fn npwg_status_merges_podagents_entries_and_keeps_everyone_elses() {
        let mut green = Attachment::new(NetworkSelection::named("green"), Phase::Attached);
        green.selection.interface = Some("eth9".into());
        green.ifname = "eth9".into();
        green.result = Some(json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth9", "mac": "0a:00:00:00:00:09", "sandbox": "/x", "mtu": 1400}],
            "ips": [{"address": "198.19.0.9/24", "gateway": "198.19.0.1", "interface": 0}],
            "dns": {"nameservers": ["198.19.0.53"], "search": ["svc.example"]}}));
        let record = PodRecord {
            status_interfaces: ["eth9".to_owned(), "net1".to_owned()].into(),
            uid: "u1".into(),
            namespace: "ns".into(),
            name: "web".into(),
            sandbox_id: "s1".into(),
            netns: "/x".into(),
            attachments: [("eth9".to_owned(), green)].into(),
        };
        let existing = json!([
            {"name": "cbr0", "interface": "eth0", "ips": ["10.0.0.5"], "default": true},
            {"name": "ns/green", "interface": "eth9", "ips": ["198.19.0.1"]},
            {"name": "ns/gone", "interface": "net1"},
            {"name": "other/thing", "interface": "net2"},
        ])
        .to_string();
        let merged = npwg_status_value(Some(&existing), &record, &[], "ns").unwrap();
        let merged: serde_json::Value = serde_json::from_str(&merged.unwrap()).unwrap();
        assert_eq!(
            merged,
            json!([
                {"name": "cbr0", "interface": "eth0", "ips": ["10.0.0.5"], "default": true},
                {"name": "other/thing", "interface": "net2"},
                {"name": "ns/green", "interface": "eth9", "ips": ["198.19.0.9"],
                 "mac": "0a:00:00:00:00:09", "default": false, "gateway": ["198.19.0.1"],
                 "mtu": 1400,
                 "dns": {"nameservers": ["198.19.0.53"], "search": ["svc.example"]}},
            ])
        );
        // Nothing of podagent's left and nobody else's: the annotation goes.
        let only_ours = json!([{"name": "ns/green", "interface": "eth9"}]).to_string();
        let gone = PodRecord {
            attachments: BTreeMap::new(),
            status_interfaces: ["eth9".to_owned()].into(),
            ..record.clone()
        };
        assert_eq!(
            npwg_status_value(Some(&only_ours), &gone, &[], "ns"),
            Ok(None)
        );
        assert!(npwg_status_value(Some("{not a list"), &record, &[], "ns").is_err());
        // A pod podagent holds nothing in keeps its value byte for byte (no write).
        let multus = r#"[{"name":"cbr0","interface":"eth0","default":true}]"#;
        let nothing = PodRecord {
            attachments: BTreeMap::new(),
            status_interfaces: BTreeSet::new(),
            ..record
        };
        assert_eq!(
            npwg_status_value(Some(multus), &nothing, &[], "ns"),
            Ok(Some(multus.to_owned()))
        );
    }
}
