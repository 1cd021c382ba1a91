//! `podagent status`: what podagent holds on this node, from its own records and the pods'
//! network namespaces, and where the two disagree.
//!
//! It needs no API server, so it still answers when the cluster is the problem: an operator
//! on the node sees per pod and attachment the network, interface, phase and since when, the
//! addresses the netns really has, and the drift:
//! - `missing`: recorded as attached, but no such link in the netns (deleted by hand, or the
//!   netns was replaced);
//! - `unrecorded`: a link with podagent's name shape (`net` + 12 hex digits) that no record
//!   holds (a crash between ADD and record, or another tool);
//! - `altered`: present, but its MAC is not the one the ADD reported;
//! - `netns unreadable`: the recorded netns cannot be entered (the sandbox is gone, or was
//!   re-created and podagent has not caught up);
//! - `unusable record`: a state file podagent cannot read (it sets it aside at its next start).
//!
//! It only reads: nothing in the state dir is created, cleaned or moved, so it is safe beside
//! the running agent. Exit codes: 0 no drift, 1 drift, 2 it could not look (not root, state dir
//! unreadable), 64 bad command line or configuration.

use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use crate::annotation;
use crate::cni::CniResult;
use crate::config::{Config, EXIT_BAD_CONFIG, Flags, StatusArgs, StatusFormat};
use crate::error_chain::render;
use crate::netns::{self, Link};
use crate::store::{Phase, PodRecord, Store};

const EXIT_DRIFT: u8 = 1;
const EXIT_CANNOT_LOOK: u8 = 2;

/// The whole answer, as `-o json` prints it.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Report {
    pods: Vec<PodStatus>,
    /// State files that could not be read, with why.
    unusable_records: Vec<String>,
    /// How many interfaces, pods and files drifted.
    drift: usize,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    namespace: String,
    name: String,
    uid: String,
    sandbox: String,
    netns: String,
    /// Why the netns could not be read; then no interface can be checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    netns_error: Option<String>,
    interfaces: Vec<InterfaceStatus>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct InterfaceStatus {
    /// `None` for an unrecorded link.
    network: Option<String>,
    interface: String,
    phase: Option<&'static str>,
    since: Option<String>,
    /// What the netns shows; the ADD's result when the link is not there.
    addresses: Vec<String>,
    mac: Option<String>,
    drift: Option<String>,
}

/// Runs `podagent status` and returns its exit code.
pub fn run(flags: &Flags, args: &StatusArgs) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "podagent status needs root to enter network namespaces and to read podagent's \
             state dir: run it as root (sudo podagent status)"
        );
        return ExitCode::from(EXIT_CANNOT_LOOK);
    }
    let config = match Config::load(flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("podagent: {}", render(&e));
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let state = &config.state_dir;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("podagent: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_CANNOT_LOOK);
        }
    };
    let report = match runtime.block_on(look(state, args.pod.as_deref())) {
        Ok(report) => report,
        Err(message) => {
            eprintln!("podagent: {message}");
            return ExitCode::from(EXIT_CANNOT_LOOK);
        }
    };
    match args.output {
        StatusFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("podagent: cannot render the report: {e}");
                return ExitCode::from(EXIT_CANNOT_LOOK);
            }
        },
        StatusFormat::Table => print!("{}", table(&report, state, args.pod.as_deref())),
    }
    if report.drift > 0 {
        ExitCode::from(EXIT_DRIFT)
    } else {
        ExitCode::SUCCESS
    }
}

/// Reads the records (of pod `only`, `namespace/name`, when given) and looks into their netns.
async fn look(state: &Path, only: Option<&str>) -> Result<Report, String> {
    let loaded = Store::read_only(state).map_err(|e| render(&e))?;
    let mut pods = Vec::new();
    for record in loaded.records {
        if only.is_some_and(|pod| pod != format!("{}/{}", record.namespace, record.name)) {
            continue;
        }
        let links = netns::inspect(&record.netns)
            .await
            .map(|found| found.links)
            .map_err(|e| render(&e));
        pods.push(assess(&record, links));
    }
    let unusable_records: Vec<String> = loaded
        .bad_files
        .iter()
        .map(|bad| render(&bad.error))
        .collect();
    let drift = unusable_records.len()
        + pods
            .iter()
            .map(|p| {
                usize::from(p.netns_error.is_some())
                    + p.interfaces.iter().filter(|i| i.drift.is_some()).count()
            })
            .sum::<usize>();
    Ok(Report {
        pods,
        unusable_records,
        drift,
    })
}

/// One pod's record against the links of its netns (or why they could not be read).
fn assess(record: &PodRecord, links: Result<Vec<Link>, String>) -> PodStatus {
    let (links, netns_error) = match links {
        Ok(links) => (Some(links), None),
        Err(error) => (None, Some(error)),
    };
    let mut interfaces: Vec<InterfaceStatus> = record
        .attachments
        .values()
        .map(|attachment| {
            let result = attachment
                .result
                .clone()
                .and_then(|raw| CniResult::parse(raw).ok());
            let made_mac = result
                .as_ref()
                .and_then(|r| r.mac_of(&attachment.ifname).map(str::to_owned));
            let link = links
                .as_ref()
                .and_then(|links| links.iter().find(|l| l.name == attachment.ifname));
            let drift = match (&links, link) {
                (None, _) => None,
                (Some(_), None) if attachment.phase == Phase::Attached => {
                    Some("missing".to_owned())
                }
                (Some(_), Some(link)) => match (&made_mac, &link.mac) {
                    (Some(made), Some(now)) if !made.eq_ignore_ascii_case(now) => {
                        Some(format!("altered: MAC {now}, the ADD gave {made}"))
                    }
                    _ => None,
                },
                _ => None,
            };
            let addresses = match link {
                Some(link) => link.addresses.iter().map(ToString::to_string).collect(),
                None => result
                    .as_ref()
                    .map(|r| {
                        r.ips_of(&attachment.ifname)
                            .iter()
                            .map(ToString::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            InterfaceStatus {
                network: Some(attachment.selection.name.clone()),
                interface: attachment.ifname.clone(),
                phase: Some(attachment.phase.as_str()),
                since: attachment
                    .since
                    .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string()),
                addresses,
                mac: link.and_then(|l| l.mac.clone()).or(made_mac),
                drift,
            }
        })
        .collect();
    let recorded = |name: &str| record.attachments.values().any(|a| a.ifname == name);
    for link in links.iter().flatten() {
        if annotation::is_attachment_ifname(&link.name) && !recorded(&link.name) {
            interfaces.push(InterfaceStatus {
                network: None,
                interface: link.name.clone(),
                phase: None,
                since: None,
                addresses: link.addresses.iter().map(ToString::to_string).collect(),
                mac: link.mac.clone(),
                drift: Some("unrecorded".to_owned()),
            });
        }
    }
    PodStatus {
        namespace: record.namespace.clone(),
        name: record.name.clone(),
        uid: record.uid.clone(),
        sandbox: record.sandbox_id.clone(),
        netns: record.netns.display().to_string(),
        netns_error,
        interfaces,
    }
}

/// The report as aligned columns, one line per interface.
fn table(report: &Report, state: &Path, only: Option<&str>) -> String {
    let mut out = String::new();
    if report.pods.is_empty() {
        out.push_str(&match only {
            Some(pod) => format!(
                "no record of pod {pod} in {}: podagent holds no attachment for it on this node\n",
                state.display()
            ),
            None => format!(
                "no records in {}: podagent holds no attachments on this node\n",
                state.display()
            ),
        });
    }
    let dash = || "-".to_owned();
    let mut rows = vec![
        [
            "POD",
            "NETWORK",
            "INTERFACE",
            "PHASE",
            "SINCE",
            "ADDRESSES",
            "DRIFT",
        ]
        .map(str::to_owned),
    ];
    for pod in &report.pods {
        let name = format!("{}/{}", pod.namespace, pod.name);
        if let Some(error) = &pod.netns_error {
            rows.push([
                name.clone(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                format!("netns unreadable: {error}"),
            ]);
        }
        for i in &pod.interfaces {
            rows.push([
                name.clone(),
                i.network.clone().unwrap_or_else(dash),
                i.interface.clone(),
                i.phase.map_or_else(dash, str::to_owned),
                i.since.clone().unwrap_or_else(dash),
                if i.addresses.is_empty() {
                    dash()
                } else {
                    i.addresses.join(",")
                },
                i.drift.clone().unwrap_or_else(dash),
            ]);
        }
    }
    if rows.len() > 1 {
        let widths: Vec<usize> = (0..7)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
    }
    for unusable in &report.unusable_records {
        out.push_str(&format!("unusable record: {unusable}\n"));
    }
    out.push_str(&match report.drift {
        0 => "no drift\n".to_owned(),
        n => format!(
            "{n} drifted: podagent re-adds a missing interface it owns at its next reconcile \
             of the pod (within reconcile.resync_period); links it did not record are left \
             alone\n"
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotation::parse;
    use crate::netns::{Address, OperState};
    use crate::store::Attachment;

    fn record(networks: &[&str]) -> PodRecord {
        let mut record = PodRecord {
            status_interfaces: Default::default(),
            uid: "u1".into(),
            namespace: "ns".into(),
            name: "web".into(),
            sandbox_id: "s1".into(),
            netns: "/var/run/netns/x".into(),
            attachments: Default::default(),
        };
        let entries: Vec<String> = networks
            .iter()
            .map(|n| format!(r#"{{"name":"{n}"}}"#))
            .collect();
        for selection in parse(Some(&format!("[{}]", entries.join(",")))).expect("valid") {
            let mut attachment = Attachment::new(selection, Phase::Attached).starting_now();
            attachment.result = Some(serde_json::json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": attachment.ifname, "mac": "0a:00:00:00:00:01", "sandbox": "/x"}],
                "ips": [{"address": "198.19.0.5/24", "interface": 0}],
            }));
            record
                .attachments
                .insert(attachment.ifname.clone(), attachment);
        }
        record
    }

    fn link(name: &str, mac: &str) -> Link {
        Link {
            name: name.into(),
            index: 2,
            mac: Some(mac.into()),
            oper_state: OperState::Up,
            addresses: vec![Address {
                ip: "198.19.0.5".parse().expect("ip"),
                prefix_len: 24,
            }],
        }
    }

    #[test]
    fn present_as_recorded_is_no_drift() {
        let green = annotation::ifname("green");
        let status = assess(
            &record(&["green"]),
            Ok(vec![
                link("eth0", "0a:00:00:00:00:09"),
                link(&green, "0a:00:00:00:00:01"),
            ]),
        );
        assert_eq!(status.interfaces.len(), 1, "eth0 is not podagent's");
        let green = &status.interfaces[0];
        assert_eq!(green.drift, None);
        assert_eq!(green.addresses, ["198.19.0.5/24"]);
        assert!(green.since.is_some());
    }

    #[test]
    fn missing_unrecorded_and_altered_links_are_drift() {
        let stranger = annotation::ifname("stranger");
        let status = assess(
            &record(&["green", "blue"]),
            Ok(vec![
                link(&annotation::ifname("blue"), "0a:00:00:00:00:02"),
                link(&stranger, "0a:00:00:00:00:03"),
            ]),
        );
        let drift = |ifname: &str| {
            status
                .interfaces
                .iter()
                .find(|i| i.interface == ifname)
                .and_then(|i| i.drift.clone())
        };
        assert_eq!(
            drift(&annotation::ifname("green")).as_deref(),
            Some("missing")
        );
        assert_eq!(
            drift(&annotation::ifname("blue")).as_deref(),
            Some("altered: MAC 0a:00:00:00:00:02, the ADD gave 0a:00:00:00:00:01")
        );
        assert_eq!(drift(&stranger).as_deref(), Some("unrecorded"));
    }

    #[test]
    fn an_unreadable_netns_is_reported_once_for_the_pod() {
        let status = assess(&record(&["green"]), Err("no such file".into()));
        assert_eq!(status.netns_error.as_deref(), Some("no such file"));
        assert_eq!(status.interfaces[0].drift, None);
        assert_eq!(
            status.interfaces[0].addresses,
            ["198.19.0.5/24"],
            "the ADD's result stands in for the netns"
        );
    }
}
