//! What podagent tells the pod's owner: the Events it records and the value of the
//! `network-status` annotation. Pure decisions; `kubeapi::events` delivers them.
//!
//! A user who edits a `networks` annotation looks at the pod, not at a node's journal, so every
//! outcome podagent reaches shows up on the pod itself: an Event per attachment added or
//! removed, a Warning per failure, and an annotation listing what is plugged in now, shaped like
//! the NPWG `network-status` entries that Multus users already read.

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
    let entries: Vec<NetworkStatus> = record
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
            NetworkStatus {
                name: a.selection.name.clone(),
                interface: a.ifname.clone(),
                ips,
                mac,
            }
        })
        .collect();
    if entries.is_empty() {
        None
    } else {
        serde_json::to_string(&entries).ok()
    }
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
}
