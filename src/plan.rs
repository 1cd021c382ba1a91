//! The decision: given what the user wants, what is in the pod and what podagent wrote down,
//! which CNI calls and record changes bring them together.
//!
//! This is a pure function so that every rule can be tested without a cluster, a runtime or a
//! plugin, and so that a restart, a missed watch event or a crash in the middle of an ADD is just
//! another input: the reconciler is level-triggered and re-plans from what is true now.
//!
//! Rules (per pod):
//! - a pod that is gone: forget its record (the runtime's own CNI DEL tears the netns down);
//!   when podagent owns teardown (no kactus to do it: `direct` mode), release each attachment
//!   first: DEL with its recorded config, against the sandbox it was made in, then forget it;
//! - skip pods that are not Running, are being deleted, use hostNetwork, whose sandbox is not
//!   ready, or whose netns could not be read;
//! - owning teardown, a pod whose recorded sandbox is no longer its ready one (gone, not ready,
//!   re-created) gets its attachments released before anything else; a pod that is being
//!   deleted or has stopped keeps them while that sandbox still runs (graceful shutdown needs
//!   its interfaces);
//! - the sandbox changed (id or netns): the old attachments died with the old netns, drop them
//!   without a DEL (after the releases above, when owning teardown) and plan against the new
//!   sandbox as if nothing were recorded;
//! - an invalid annotation changes nothing that exists; it is only reported;
//! - desired, recorded `Attached` with the same parameters and present: nothing;
//! - desired and present but not recorded (made by kactus at sandbox creation, or by an ADD whose
//!   record was lost): adopt it, no CNI call;
//! - a record still `Adding` is never adopted, even when its link exists: the crash may have come
//!   after the first plugin of a chain made the link but before the rest (tuning setting the
//!   MAC, say) ran, and the link alone cannot tell a finished chain from half of one;
//! - desired, not recorded and absent: ADD;
//! - attachments are matched by interface name, so one network may sit on two interfaces (NPWG)
//!   and another network wanted on a recorded interface is a changed parameter;
//! - desired and recorded, but with other parameters, or absent, or still `Adding` or `Removing`:
//!   DEL (with the recorded selection and cached result) then ADD. The DEL comes first because
//!   the earlier attempt may hold an IPAM lease without a link (an ADD killed half-way, an
//!   interface deleted by hand), and a fresh ADD would leak it; DEL is idempotent, so it is
//!   harmless when there is nothing to release;
//! - recorded but no longer desired: DEL, then forget; recorded but now marked `isPrimary` or
//!   `podagentSkip`: forget without a DEL, the user took it out of podagent's hands;
//! - a `net<12 hex>` link that is neither desired nor recorded is left alone and logged.
//!
//! Steps come ordered: releases, stale-sandbox drop, DELs, forgets, adoptions, ADDs (DELs free
//! addresses and names before ADDs need them), then links left alone. Every DEL is followed by an ADD or a
//! forget of the same network. The executor runs them in order and stops at the first failure;
//! the next reconcile re-plans from whatever is then true.

use std::collections::{BTreeMap, BTreeSet};

use crate::annotation::{self, AnnotationError, NetworkSelection};
use crate::runtime::Sandbox;
use crate::store::{Attachment, Phase, PodRecord};

/// The few facts about a pod the plan needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    /// `status.phase == Running`.
    pub running: bool,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    pub host_network: bool,
    /// The ready sandbox, if the runtime has one for this pod.
    pub sandbox: Option<Sandbox>,
}

/// The links seen in the sandbox's netns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Every link name in the netns.
    Links(BTreeSet<String>),
    /// The netns could not be read, so presence is unknown.
    Unknown,
}

/// Everything `plan` looks at.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// `None`: the pod no longer exists.
    pub pod: Option<&'a PodFacts>,
    /// The parsed `networks` annotation.
    pub desired: &'a Result<Vec<NetworkSelection>, AnnotationError>,
    pub observed: &'a Observed,
    pub recorded: Option<&'a PodRecord>,
    /// podagent must DEL its attachments when their pod or sandbox goes (`direct` mode).
    pub owns_teardown: bool,
}

/// Why nothing is done for a pod now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    NotRunning,
    Deleting,
    HostNetwork,
    SandboxNotReady,
    NetnsUnreadable,
}

/// One thing to do; see the module docs for when each is planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing more to do for this pod now.
    Skip(SkipReason),
    /// Tell the user why the annotation was refused; change nothing.
    ReportInvalid(AnnotationError),
    /// Replace the record's sandbox with the current one and drop its attachments, no CNI call.
    DropStaleSandbox { old_sandbox: String },
    /// CNI DEL of a recorded attachment (mark it `Removing` first).
    Del { attachment: Attachment },
    /// CNI DEL of a recorded attachment in the recorded sandbox, which is gone or going (mark
    /// it `Removing` first), then drop it from the record.
    Release { attachment: Attachment },
    /// Drop an attachment (by interface name) from the record.
    Forget { ifname: String },
    /// Record a present interface as `Attached` without a CNI call.
    Adopt { selection: NetworkSelection },
    /// CNI ADD (record it `Adding` first, `Attached` with the result after).
    Add { selection: NetworkSelection },
    /// Log a `net<12 hex>` link podagent neither wants nor made.
    LeaveAlone { ifname: String },
    /// Delete the pod's record: the pod is gone.
    ForgetPod,
}

/// Decides the steps for one pod.
pub fn plan(input: &PlanInput<'_>) -> Vec<Step> {
    let releases = |record: &PodRecord| -> Vec<Step> {
        if !input.owns_teardown {
            return Vec::new();
        }
        record
            .attachments
            .values()
            .map(|attachment| Step::Release {
                attachment: attachment.clone(),
            })
            .collect()
    };
    let in_recorded_sandbox = |record: &PodRecord, sandbox: &Sandbox| {
        record.sandbox_id == sandbox.id && record.netns == sandbox.netns
    };
    let Some(pod) = input.pod else {
        return match input.recorded {
            Some(record) => {
                let mut steps = releases(record);
                steps.push(Step::ForgetPod);
                steps
            }
            None => Vec::new(),
        };
    };
    let sandbox = match eligible_sandbox(pod) {
        Ok(sandbox) => sandbox,
        Err(reason) => {
            let mut steps = match (input.recorded, &pod.sandbox) {
                (Some(record), Some(current)) if in_recorded_sandbox(record, current) => Vec::new(),
                (Some(record), _) if !pod.host_network => releases(record),
                _ => Vec::new(),
            };
            steps.push(Step::Skip(reason));
            return steps;
        }
    };

    let mut steps = Vec::new();
    let no_attachments = BTreeMap::new();
    let recorded = match input.recorded {
        Some(record) if in_recorded_sandbox(record, sandbox) => &record.attachments,
        Some(record) => {
            steps.extend(releases(record));
            steps.push(Step::DropStaleSandbox {
                old_sandbox: record.sandbox_id.clone(),
            });
            &no_attachments
        }
        None => &no_attachments,
    };
    let desired = match input.desired {
        Ok(desired) => desired,
        Err(error) => {
            steps.push(Step::ReportInvalid(error.clone()));
            return steps;
        }
    };
    let Observed::Links(links) = input.observed else {
        steps.push(Step::Skip(SkipReason::NetnsUnreadable));
        return steps;
    };
    steps.extend(attachment_steps(desired, links, recorded));
    steps
}

fn eligible_sandbox(pod: &PodFacts) -> Result<&Sandbox, SkipReason> {
    if pod.deleting {
        return Err(SkipReason::Deleting);
    }
    if !pod.running {
        return Err(SkipReason::NotRunning);
    }
    if pod.host_network {
        return Err(SkipReason::HostNetwork);
    }
    pod.sandbox.as_ref().ok_or(SkipReason::SandboxNotReady)
}

/// The per-interface rules, for a sandbox whose records are current. Attachments are matched
/// by interface name: the same interface wanted from another network is a changed parameter,
/// so it is DEL of the old then ADD of the new.
fn attachment_steps(
    desired: &[NetworkSelection],
    links: &BTreeSet<String>,
    recorded: &BTreeMap<String, Attachment>,
) -> Vec<Step> {
    let managed: BTreeMap<String, &NetworkSelection> = desired
        .iter()
        .filter(|s| s.is_managed())
        .map(|s| (s.ifname(), s))
        .collect();
    let mut dels = Vec::new();
    let mut forgets = Vec::new();
    let mut adopts = Vec::new();
    let mut adds = Vec::new();

    for (ifname, attachment) in recorded {
        match managed.get(ifname) {
            Some(&wanted) => {
                let present = links.contains(ifname);
                let same = same_parameters(&attachment.selection, wanted);
                match (attachment.phase, present && same) {
                    (Phase::Attached, true) => {}
                    _ => {
                        dels.push(attachment);
                        adds.push(wanted);
                    }
                }
            }
            None if desired.iter().any(|s| s.ifname() == *ifname) => forgets.push(ifname),
            None => {
                dels.push(attachment);
                forgets.push(ifname);
            }
        }
    }
    for (ifname, &wanted) in &managed {
        if recorded.contains_key(ifname) {
            continue;
        }
        if links.contains(ifname) {
            adopts.push(wanted);
        } else {
            adds.push(wanted);
        }
    }
    adopts.sort_by_cached_key(|s| (s.name.clone(), s.ifname()));
    adds.sort_by_cached_key(|s| (s.name.clone(), s.ifname()));

    let known: BTreeSet<String> = desired
        .iter()
        .map(NetworkSelection::ifname)
        .chain(recorded.keys().cloned())
        .collect();
    let strangers = links
        .iter()
        .filter(|link| annotation::is_attachment_ifname(link) && !known.contains(*link));

    let dels = dels.into_iter().map(|attachment| Step::Del {
        attachment: attachment.clone(),
    });
    let forgets = forgets.into_iter().map(|ifname| Step::Forget {
        ifname: ifname.clone(),
    });
    let adopts = adopts.into_iter().map(|selection| Step::Adopt {
        selection: selection.clone(),
    });
    let adds = adds.into_iter().map(|selection| Step::Add {
        selection: selection.clone(),
    });
    let leave = strangers.map(|ifname| Step::LeaveAlone {
        ifname: ifname.clone(),
    });
    dels.chain(forgets)
        .chain(adopts)
        .chain(adds)
        .chain(leave)
        .collect()
}

/// Whether an attachment made from `recorded` still serves `wanted` on the same interface: the
/// same network, the same `ifMac` (passed in CNI_ARGS), `namespace` and `upperLayers`, which
/// change what kactus builds, and the same NPWG requests (addresses, args, capabilities).
fn same_parameters(recorded: &NetworkSelection, wanted: &NetworkSelection) -> bool {
    recorded.name == wanted.name
        && recorded.if_mac == wanted.if_mac
        && recorded.namespace == wanted.namespace
        && recorded.upper_layers == wanted.upper_layers
        && recorded.requests == wanted.requests
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotation::ifname;

    const GREEN: &str = "net9f27410725ab";
    const BLUE: &str = "net48d6215903df";
    const MAC_A: &str = "00:11:22:33:44:55";
    const MAC_B: &str = "02:00:00:00:00:0b";

    fn sel(name: &str) -> NetworkSelection {
        NetworkSelection::named(name)
    }

    fn with_mac(name: &str, mac: &str) -> NetworkSelection {
        NetworkSelection {
            if_mac: Some(mac.parse().unwrap()),
            ..sel(name)
        }
    }

    fn skipped(name: &str) -> NetworkSelection {
        NetworkSelection {
            podagent_skip: true,
            ..sel(name)
        }
    }

    fn att(selection: NetworkSelection, phase: Phase) -> Attachment {
        Attachment::new(selection, phase)
    }

    fn sandbox(id: &str) -> Sandbox {
        Sandbox {
            id: id.into(),
            netns: format!("/var/run/netns/cni-{id}").into(),
        }
    }

    fn record_in(sandbox: &Sandbox, attachments: Vec<Attachment>) -> PodRecord {
        PodRecord {
            status_interfaces: Default::default(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            name: "web".into(),
            sandbox_id: sandbox.id.clone(),
            netns: sandbox.netns.clone(),
            attachments: attachments
                .into_iter()
                .map(|a| (a.ifname.clone(), a))
                .collect(),
        }
    }

    /// A running pod in sandbox `s1`, no networks wanted, no links, no record; adjust per test.
    struct Case {
        pod: Option<PodFacts>,
        desired: Result<Vec<NetworkSelection>, AnnotationError>,
        observed: Observed,
        recorded: Option<PodRecord>,
        owns_teardown: bool,
    }

    impl Case {
        fn new() -> Self {
            Case {
                pod: Some(PodFacts {
                    running: true,
                    deleting: false,
                    host_network: false,
                    sandbox: Some(sandbox("s1")),
                }),
                desired: Ok(vec![]),
                observed: Observed::Links(["lo", "eth0"].map(String::from).into()),
                recorded: None,
                owns_teardown: false,
            }
        }
        fn want(mut self, selections: Vec<NetworkSelection>) -> Self {
            self.desired = Ok(selections);
            self
        }
        fn links(mut self, names: &[&str]) -> Self {
            if let Observed::Links(links) = &mut self.observed {
                links.extend(names.iter().map(|n| n.to_string()));
            }
            self
        }
        fn recorded(mut self, attachments: Vec<Attachment>) -> Self {
            self.recorded = Some(record_in(&sandbox("s1"), attachments));
            self
        }
        fn plan(&self) -> Vec<Step> {
            plan(&PlanInput {
                pod: self.pod.as_ref(),
                desired: &self.desired,
                observed: &self.observed,
                recorded: self.recorded.as_ref(),
                owns_teardown: self.owns_teardown,
            })
        }
        fn owning_teardown(mut self) -> Self {
            self.owns_teardown = true;
            self
        }
        fn pod(mut self, change: impl FnOnce(&mut PodFacts)) -> Self {
            if let Some(pod) = self.pod.as_mut() {
                change(pod);
            }
            self
        }
    }

    fn add(selection: NetworkSelection) -> Step {
        Step::Add { selection }
    }
    fn adopt(selection: NetworkSelection) -> Step {
        Step::Adopt { selection }
    }
    fn del(attachment: Attachment) -> Step {
        Step::Del { attachment }
    }
    fn forget(network: &str) -> Step {
        Step::Forget {
            ifname: ifname(network),
        }
    }

    #[test]
    fn gone_pod_with_a_record_is_forgotten_and_without_one_needs_nothing() {
        let mut case = Case::new().recorded(vec![att(sel("green"), Phase::Attached)]);
        case.pod = None;
        assert_eq!(case.plan(), vec![Step::ForgetPod]);
        case.recorded = None;
        assert_eq!(case.plan(), vec![]);
    }

    fn release(attachment: Attachment) -> Step {
        Step::Release { attachment }
    }

    #[test]
    fn owning_teardown_a_gone_pod_releases_every_attachment_before_it_is_forgotten() {
        let green = att(sel("green"), Phase::Attached);
        let blue = att(sel("blue"), Phase::Removing);
        let mut case = Case::new()
            .recorded(vec![green.clone(), blue.clone()])
            .owning_teardown();
        case.pod = None;
        assert_eq!(
            case.plan(),
            vec![release(blue), release(green), Step::ForgetPod]
        );
    }

    #[test]
    fn owning_teardown_a_stopping_pod_keeps_its_interfaces_while_its_sandbox_runs() {
        let green = att(sel("green"), Phase::Attached);
        let base = || {
            Case::new()
                .want(vec![sel("green")])
                .links(&[GREEN])
                .recorded(vec![green.clone()])
                .owning_teardown()
        };
        let deleting = base().pod(|p| p.deleting = true);
        assert_eq!(deleting.plan(), vec![Step::Skip(SkipReason::Deleting)]);
        let stopped = base().pod(|p| p.running = false);
        assert_eq!(stopped.plan(), vec![Step::Skip(SkipReason::NotRunning)]);

        // Its sandbox gone: released, whatever else keeps the pod from being planned.
        let gone = base().pod(|p| {
            p.deleting = true;
            p.sandbox = None;
        });
        assert_eq!(
            gone.plan(),
            vec![release(green.clone()), Step::Skip(SkipReason::Deleting)]
        );
        let not_ready = base().pod(|p| p.sandbox = None);
        assert_eq!(
            not_ready.plan(),
            vec![
                release(green.clone()),
                Step::Skip(SkipReason::SandboxNotReady)
            ]
        );
        let replaced = base().pod(|p| {
            p.running = false;
            p.sandbox = Some(sandbox("s2"));
        });
        assert_eq!(
            replaced.plan(),
            vec![release(green), Step::Skip(SkipReason::NotRunning)]
        );
    }

    #[test]
    fn owning_teardown_a_recreated_sandbox_releases_the_old_attachments_then_starts_over() {
        let green = att(sel("green"), Phase::Attached);
        let case = Case::new()
            .want(vec![sel("green")])
            .recorded(vec![green.clone()])
            .owning_teardown()
            .pod(|p| p.sandbox = Some(sandbox("s2")));
        assert_eq!(
            case.plan(),
            vec![
                release(green),
                Step::DropStaleSandbox {
                    old_sandbox: "s1".into()
                },
                add(sel("green")),
            ]
        );
    }

    #[test]
    fn without_teardown_nothing_is_released() {
        let green = att(sel("green"), Phase::Attached);
        let case = Case::new().recorded(vec![green]).pod(|p| p.sandbox = None);
        assert_eq!(case.plan(), vec![Step::Skip(SkipReason::SandboxNotReady)]);
    }

    #[test]
    fn ineligible_pods_are_skipped_without_touching_records() {
        let base = || {
            Case::new()
                .want(vec![sel("blue")])
                .recorded(vec![att(sel("green"), Phase::Attached)])
        };
        let facts = |c: &mut Case| c.pod.as_mut().unwrap().clone();
        let mut case = base();
        let mut pod = facts(&mut case);
        pod.running = false;
        case.pod = Some(pod);
        assert_eq!(case.plan(), vec![Step::Skip(SkipReason::NotRunning)]);

        let mut case = base();
        let mut pod = facts(&mut case);
        pod.deleting = true;
        case.pod = Some(pod);
        assert_eq!(case.plan(), vec![Step::Skip(SkipReason::Deleting)]);

        let mut case = base();
        let mut pod = facts(&mut case);
        pod.host_network = true;
        case.pod = Some(pod);
        assert_eq!(case.plan(), vec![Step::Skip(SkipReason::HostNetwork)]);

        let mut case = base();
        let mut pod = facts(&mut case);
        pod.sandbox = None;
        case.pod = Some(pod);
        assert_eq!(case.plan(), vec![Step::Skip(SkipReason::SandboxNotReady)]);
    }

    #[test]
    fn unreadable_netns_plans_no_cni_call() {
        let mut case = Case::new()
            .want(vec![sel("blue")])
            .recorded(vec![att(sel("green"), Phase::Attached)]);
        case.observed = Observed::Unknown;
        assert_eq!(case.plan(), vec![Step::Skip(SkipReason::NetnsUnreadable)]);
    }

    #[test]
    fn attached_and_present_with_same_parameters_needs_nothing() {
        let case = Case::new()
            .want(vec![with_mac("green", MAC_A)])
            .links(&[GREEN])
            .recorded(vec![att(with_mac("green", MAC_A), Phase::Attached)]);
        assert_eq!(case.plan(), vec![]);
    }

    #[test]
    fn present_but_unrecorded_is_adopted_without_cni() {
        let case = Case::new().want(vec![sel("green")]).links(&[GREEN]);
        assert_eq!(case.plan(), vec![adopt(sel("green"))]);
    }

    #[test]
    fn absent_and_unrecorded_is_added() {
        let case = Case::new().want(vec![sel("green"), with_mac("blue", MAC_A)]);
        assert_eq!(
            case.plan(),
            vec![add(with_mac("blue", MAC_A)), add(sel("green"))]
        );
    }

    #[test]
    fn changed_mac_is_deleted_then_added() {
        let old = att(with_mac("green", MAC_A), Phase::Attached);
        let case = Case::new()
            .want(vec![with_mac("green", MAC_B)])
            .links(&[GREEN])
            .recorded(vec![old.clone()]);
        assert_eq!(case.plan(), vec![del(old), add(with_mac("green", MAC_B))]);
    }

    #[test]
    fn changed_namespace_or_upper_layers_replug_too() {
        let old = att(sel("green"), Phase::Attached);
        let moved = NetworkSelection {
            namespace: Some("other".into()),
            ..sel("green")
        };
        let layered = NetworkSelection {
            upper_layers: vec!["blue".into()],
            ..sel("green")
        };
        for wanted in [moved, layered] {
            let case = Case::new()
                .want(vec![wanted.clone()])
                .links(&[GREEN])
                .recorded(vec![old.clone()]);
            assert_eq!(case.plan(), vec![del(old.clone()), add(wanted)]);
        }
    }

    #[test]
    fn removed_network_is_deleted_then_forgotten() {
        let mut green = att(sel("green"), Phase::Attached);
        green.result = Some(serde_json::json!({"cniVersion": "1.0.0"}));
        let case = Case::new()
            .want(vec![sel("blue")])
            .links(&[GREEN, BLUE])
            .recorded(vec![green.clone(), att(sel("blue"), Phase::Attached)]);
        // The DEL carries the recorded selection and cached result.
        assert_eq!(case.plan(), vec![del(green), forget("green")]);
    }

    #[test]
    fn removed_network_whose_link_is_already_gone_is_still_deleted() {
        // DEL releases what IPAM holds even when the link vanished.
        let green = att(sel("green"), Phase::Attached);
        let case = Case::new().recorded(vec![green.clone()]);
        assert_eq!(case.plan(), vec![del(green), forget("green")]);
    }

    #[test]
    fn link_deleted_behind_our_back_is_replugged_after_a_del() {
        let green = att(sel("green"), Phase::Attached);
        let case = Case::new()
            .want(vec![sel("green")])
            .recorded(vec![green.clone()]);
        assert_eq!(case.plan(), vec![del(green), add(sel("green"))]);
    }

    #[test]
    fn crash_mid_add_with_the_link_present_is_deleted_then_added_again() {
        // The link may come from the first plugin of a chain whose later plugins never ran.
        let adding = att(sel("green"), Phase::Adding);
        let case = Case::new()
            .want(vec![sel("green")])
            .links(&[GREEN])
            .recorded(vec![adding.clone()]);
        assert_eq!(case.plan(), vec![del(adding), add(sel("green"))]);
    }

    #[test]
    fn crash_mid_add_without_the_link_is_deleted_then_added_again() {
        let adding = att(sel("green"), Phase::Adding);
        let case = Case::new()
            .want(vec![sel("green")])
            .recorded(vec![adding.clone()]);
        assert_eq!(case.plan(), vec![del(adding), add(sel("green"))]);
    }

    #[test]
    fn crash_mid_add_of_a_network_no_longer_wanted_is_deleted_and_forgotten() {
        let adding = att(sel("green"), Phase::Adding);
        let case = Case::new().links(&[GREEN]).recorded(vec![adding.clone()]);
        assert_eq!(case.plan(), vec![del(adding), forget("green")]);
    }

    #[test]
    fn crash_mid_del_repeats_the_del() {
        let removing = att(sel("green"), Phase::Removing);
        for links in [&[][..], &[GREEN][..]] {
            let case = Case::new().links(links).recorded(vec![removing.clone()]);
            assert_eq!(case.plan(), vec![del(removing.clone()), forget("green")]);
            // Wanted again meanwhile: finish the DEL, then ADD afresh.
            let case = case.want(vec![sel("green")]);
            assert_eq!(case.plan(), vec![del(removing.clone()), add(sel("green"))]);
        }
    }

    #[test]
    fn network_handed_to_podagent_skip_is_forgotten_without_del() {
        for unmanaged in [
            skipped("green"),
            NetworkSelection {
                is_primary: true,
                ..sel("green")
            },
        ] {
            let case = Case::new()
                .want(vec![unmanaged])
                .links(&[GREEN])
                .recorded(vec![att(sel("green"), Phase::Attached)]);
            assert_eq!(case.plan(), vec![forget("green")]);
        }
    }

    #[test]
    fn unmanaged_entries_are_never_added_or_adopted() {
        let case = Case::new()
            .want(vec![
                skipped("green"),
                NetworkSelection {
                    is_primary: true,
                    ..sel("blue")
                },
            ])
            .links(&[GREEN]);
        assert_eq!(case.plan(), vec![]);
    }

    #[test]
    fn sandbox_restart_drops_old_records_and_plans_on_the_new_one() {
        let mut case = Case::new()
            .want(vec![sel("green"), sel("blue")])
            .links(&[GREEN]);
        case.recorded = Some(record_in(
            &sandbox("s0"),
            vec![
                att(sel("green"), Phase::Attached),
                att(sel("red"), Phase::Attached),
            ],
        ));
        // kactus re-created green in the new sandbox; red is not DELeted against the dead netns.
        assert_eq!(
            case.plan(),
            vec![
                Step::DropStaleSandbox {
                    old_sandbox: "s0".into()
                },
                adopt(sel("green")),
                add(sel("blue")),
            ]
        );
    }

    #[test]
    fn same_sandbox_id_with_a_new_netns_counts_as_a_new_sandbox() {
        let mut case = Case::new().want(vec![sel("green")]);
        let mut old = record_in(&sandbox("s1"), vec![att(sel("green"), Phase::Attached)]);
        old.netns = "/proc/4242/ns/net".into();
        case.recorded = Some(old);
        assert_eq!(
            case.plan(),
            vec![
                Step::DropStaleSandbox {
                    old_sandbox: "s1".into()
                },
                add(sel("green")),
            ]
        );
    }

    #[test]
    fn invalid_annotation_changes_nothing_and_is_reported() {
        let error = annotation::parse(Some("[{\"name\":\"Bad\"}]")).unwrap_err();
        let mut case = Case::new()
            .links(&[GREEN, BLUE])
            .recorded(vec![att(sel("green"), Phase::Attached)]);
        case.desired = Err(error.clone());
        assert_eq!(case.plan(), vec![Step::ReportInvalid(error)]);
    }

    #[test]
    fn stranger_net_links_are_left_alone_and_others_ignored() {
        let stranger = ifname("someone-elses");
        let case = Case::new()
            .want(vec![sel("green"), skipped("red")])
            .links(&[GREEN, &ifname("red"), &stranger, "net0", "eth1", "vxlan0"])
            .recorded(vec![att(sel("green"), Phase::Attached)]);
        assert_eq!(case.plan(), vec![Step::LeaveAlone { ifname: stranger }]);
    }

    #[test]
    fn dels_come_before_adds_across_networks() {
        let case = Case::new()
            .want(vec![sel("a"), with_mac("z", MAC_B)])
            .links(&[&ifname("z")])
            .recorded(vec![
                att(with_mac("z", MAC_A), Phase::Attached),
                att(sel("y"), Phase::Attached),
            ]);
        let steps = case.plan();
        assert_eq!(
            steps,
            vec![
                del(att(sel("y"), Phase::Attached)),
                del(att(with_mac("z", MAC_A), Phase::Attached)),
                forget("y"),
                add(sel("a")),
                add(with_mac("z", MAC_B)),
            ]
        );
        let plugin_runs = steps
            .iter()
            .filter(|s| matches!(s, Step::Del { .. } | Step::Add { .. }))
            .count();
        assert_eq!(plugin_runs, 4);
    }

    /// What the executor does with each step, on a model of the netns and the store.
    struct World {
        links: BTreeSet<String>,
        record: Option<PodRecord>,
    }

    impl World {
        fn apply(&mut self, steps: &[Step], current: &Sandbox) {
            let fresh = || record_in(current, vec![]);
            for step in steps {
                match step {
                    Step::Skip(_) | Step::ReportInvalid(_) => {}
                    Step::DropStaleSandbox { old_sandbox } => {
                        let record = self.record.as_mut().expect("a record to drop");
                        assert_eq!(&record.sandbox_id, old_sandbox);
                        *record = fresh();
                    }
                    Step::Del { attachment } => {
                        let record = self.record.as_mut().expect("DEL needs a record");
                        let entry = record
                            .attachments
                            .get_mut(&attachment.ifname)
                            .expect("DEL of a recorded attachment");
                        entry.phase = Phase::Removing;
                        self.links.remove(&attachment.ifname);
                    }
                    Step::Release { attachment } => {
                        let record = self.record.as_mut().expect("release needs a record");
                        assert!(
                            record.attachments.remove(&attachment.ifname).is_some(),
                            "release of a recorded attachment"
                        );
                    }
                    Step::Forget { ifname } => {
                        let record = self.record.as_mut().expect("forget needs a record");
                        assert!(record.attachments.remove(ifname).is_some());
                    }
                    Step::Adopt { selection } => {
                        assert!(
                            self.links.contains(&selection.ifname()),
                            "adopt needs a link"
                        );
                        let record = self.record.get_or_insert_with(fresh);
                        let attachment = att(selection.clone(), Phase::Attached);
                        record.attachments.insert(selection.ifname(), attachment);
                    }
                    Step::Add { selection } => {
                        // A CNI ADD on an existing interface fails.
                        assert!(self.links.insert(selection.ifname()), "ADD over a link");
                        let record = self.record.get_or_insert_with(fresh);
                        let attachment = att(selection.clone(), Phase::Attached);
                        record.attachments.insert(selection.ifname(), attachment);
                    }
                    Step::LeaveAlone { ifname } => assert!(self.links.contains(ifname)),
                    Step::ForgetPod => self.record = None,
                }
            }
        }
    }

    /// Mixed-radix counter over every combination of per-network states.
    fn combinations(radixes: &[usize]) -> impl Iterator<Item = Vec<usize>> + '_ {
        let total: usize = radixes.iter().product();
        (0..total).map(move |mut n| {
            radixes
                .iter()
                .map(|r| {
                    let digit = n % r;
                    n /= r;
                    digit
                })
                .collect()
        })
    }

    #[test]
    fn applying_any_plan_converges_in_one_round() {
        const NETWORKS: [&str; 2] = ["green", "blue"];
        let wanted = |name: &str, state: usize| match state {
            0 => None,
            1 => Some(sel(name)),
            2 => Some(with_mac(name, MAC_A)),
            _ => Some(skipped(name)),
        };
        let recorded = |name: &str, state: usize| {
            let phase = [Phase::Adding, Phase::Attached, Phase::Removing];
            match state {
                0 => None,
                s if s <= 3 => Some(att(sel(name), phase[s - 1])),
                s => Some(att(with_mac(name, MAC_B), phase[s - 4])),
            }
        };
        let current = sandbox("s1");
        let stranger = ifname("stranger");
        let mut checked = 0;
        // Per network: wanted (4) x recorded (7) x link present (2); then a stale record, a
        // record at all, and a stranger link.
        let radixes = [4, 7, 2, 4, 7, 2, 2, 2, 2];
        for digits in combinations(&radixes) {
            let (per_net, pod_level) = digits.split_at(6);
            let (stale, has_record, has_stranger) =
                (pod_level[0] == 1, pod_level[1] == 1, pod_level[2] == 1);
            let mut desired = Vec::new();
            let mut attachments = Vec::new();
            let mut links: BTreeSet<String> = ["lo", "eth0"].map(String::from).into();
            for (name, d) in NETWORKS.iter().zip(per_net.chunks(3)) {
                desired.extend(wanted(name, d[0]));
                attachments.extend(recorded(name, d[1]));
                if d[2] == 1 {
                    links.insert(ifname(name));
                }
            }
            if has_stranger {
                links.insert(stranger.clone());
            }
            if !attachments.is_empty() && !has_record {
                continue; // attachments imply a record
            }
            let record = has_record
                .then(|| record_in(&sandbox(if stale { "s0" } else { "s1" }), attachments));
            let case = Case {
                desired: Ok(desired),
                observed: Observed::Links(links.clone()),
                recorded: record.clone(),
                ..Case::new()
            };

            let steps = case.plan();
            let context = format!("case {digits:?}: {steps:#?}");
            check_order(&steps, &case.desired, &context);

            let mut world = World { links, record };
            world.apply(&steps, &current);
            let again = Case {
                observed: Observed::Links(world.links.clone()),
                recorded: world.record.clone(),
                ..case
            }
            .plan();
            // Converged: nothing left to do but log the same strangers as before.
            let strangers: Vec<Step> = steps
                .iter()
                .filter(|s| matches!(s, Step::LeaveAlone { .. }))
                .cloned()
                .collect();
            assert_eq!(again, strangers, "not converged after {context}");
            if has_stranger {
                assert!(strangers.contains(&Step::LeaveAlone {
                    ifname: stranger.clone()
                }));
            }
            checked += 1;
        }
        assert!(checked > 5000, "only {checked} combinations checked");
    }

    /// DELs before ADDs; each DEL followed by an ADD or forget of its network; unmanaged
    /// networks never go through CNI or adoption.
    fn check_order(
        steps: &[Step],
        desired: &Result<Vec<NetworkSelection>, AnnotationError>,
        context: &str,
    ) {
        let unmanaged: Vec<&str> = desired
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| !s.is_managed())
            .map(|s| s.name.as_str())
            .collect();
        let first_add = steps.iter().position(|s| matches!(s, Step::Add { .. }));
        for (i, step) in steps.iter().enumerate() {
            let network = match step {
                Step::Del { attachment } => {
                    assert!(
                        first_add.is_none_or(|a| i < a),
                        "DEL after ADD in {context}"
                    );
                    let name = &attachment.selection.name;
                    assert!(
                        steps[i + 1..].iter().any(|s| matches!(s,
                            Step::Add { selection } if selection.name == *name)
                            || matches!(s, Step::Forget { ifname } if *ifname == attachment.ifname)),
                        "DEL of {name} not followed by ADD or forget in {context}"
                    );
                    name
                }
                Step::Add { selection } | Step::Adopt { selection } => &selection.name,
                _ => continue,
            };
            assert!(
                !unmanaged.contains(&network.as_str()),
                "unmanaged {network} touched in {context}"
            );
        }
    }
}
