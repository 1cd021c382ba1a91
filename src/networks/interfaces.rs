//! Which interface each NPWG element gets (DESIGN.md §1a), decided before planning.
//!
//! The Kaloom annotation derives every interface from its network's name, so its names are
//! unique by construction. NPWG elements may name an interface, may name one network twice,
//! and a pod may already hold links nobody told podagent about. So, per element: the
//! `interface` it asks for; else the interface its network already has in the record (a
//! name must not change under a running attachment because a neighbour was edited); else the
//! interface the pod's `network-status` shows for its network, when that link really is in
//! the pod (Multus attached it at sandbox creation: podagent adopts it instead of adding a
//! second one); else `net` + md5(name)[:12]. Then two checks, each refusing the whole
//! annotation with every problem at once, because a half-applied set of names is harder to
//! reason about than none: no two elements on one interface, and no element on a link the pod
//! already has that podagent neither made nor may adopt (the default network's `eth0`, a
//! user's link): the ADD would fail half-way at best, and at worst a DEL would later remove
//! what podagent never made.
//!
//! `network-status` is writable by anyone who may patch the pod, so its claims are hints: one
//! counts only for a link present in the netns, never for the default network's entry, `eth0`
//! or `lo`, and what podagent later DELs with comes from the netns, not from the claim.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::annotation::{AnnotationError, EntryProblem, NetworkSelection};
use crate::store::Attachment;

/// Which interface `network-status` says each network is on: (`namespace/name`, interface).
pub(crate) type Claims = BTreeSet<(String, String)>;

/// The claims of a `network-status` value that may name an interface to adopt: entries of a
/// network other than the default one, on an interface that is neither `eth0` nor `lo` and
/// has a valid name. Anything unreadable claims nothing.
pub(crate) fn claims(network_status: Option<&str>) -> Claims {
    let entries: Vec<serde_json::Value> = network_status
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    entries
        .iter()
        .filter(|entry| entry["default"] != true)
        .filter_map(|entry| {
            let name = entry["name"].as_str()?;
            let interface = entry["interface"].as_str()?;
            let usable = !matches!(interface, "eth0" | "lo")
                && crate::annotation::npwg::check_ifname(interface).is_ok();
            usable.then(|| (name.to_owned(), interface.to_owned()))
        })
        .collect()
}

/// The `namespace/name` a selection's network has in `network-status`.
fn claim_name(selection: &NetworkSelection, pod_namespace: &str) -> String {
    let namespace = selection.namespace.as_deref().unwrap_or(pod_namespace);
    format!("{namespace}/{}", selection.name)
}

/// Names the interface of each of `desired`, given the attachments recorded for the pod's
/// current sandbox, the links seen in its netns (`None`: not known) and what its
/// `network-status` claims.
pub(crate) fn name_interfaces(
    mut desired: Vec<NetworkSelection>,
    recorded: &BTreeMap<String, Attachment>,
    links: Option<&BTreeSet<String>>,
    claims: &Claims,
    pod_namespace: &str,
) -> Result<Vec<NetworkSelection>, AnnotationError> {
    let asked: BTreeSet<String> = desired.iter().filter_map(|s| s.interface.clone()).collect();
    let present = |ifname: &str| links.is_some_and(|links| links.contains(ifname));
    let mut kept: BTreeSet<String> = BTreeSet::new();
    for selection in desired.iter_mut().filter(|s| s.interface.is_none()) {
        let free = |ifname: &String| !asked.contains(ifname) && !kept.contains(ifname);
        let held = recorded.iter().find(|(ifname, attachment)| {
            attachment.selection.name == selection.name
                && attachment.selection.namespace == selection.namespace
                && free(ifname)
        });
        if let Some((ifname, attachment)) = held {
            kept.insert(ifname.clone());
            selection
                .interface
                .clone_from(&attachment.selection.interface);
            continue;
        }
        let network = claim_name(selection, pod_namespace);
        let claimed = claims.iter().find(|(name, interface)| {
            *name == network
                && present(interface)
                && !recorded.contains_key(interface)
                && free(interface)
        });
        if let Some((_, interface)) = claimed {
            kept.insert(interface.clone());
            selection.interface = Some(interface.clone());
        }
    }

    let mut problems = Vec::new();
    let mut first: HashMap<String, usize> = HashMap::new();
    for (index, selection) in desired.iter().enumerate() {
        let ifname = selection.ifname();
        if let Some(earlier) = first.get(&ifname) {
            problems.push(EntryProblem {
                index,
                field: Some("interface"),
                reason: format!(
                    "network {} would get interface {ifname}, which element [{earlier}] \
                     already has: give each element its own interface",
                    selection.name
                ),
            });
            continue;
        }
        first.insert(ifname.clone(), index);
        let adoptable = claims.contains(&(claim_name(selection, pod_namespace), ifname.clone()));
        if present(&ifname) && !recorded.contains_key(&ifname) && !adoptable {
            problems.push(EntryProblem {
                index,
                field: Some("interface"),
                reason: format!(
                    "{ifname} already exists in the pod and podagent did not add it: choose \
                     another interface name"
                ),
            });
        }
    }
    if problems.is_empty() {
        Ok(desired)
    } else {
        Err(AnnotationError::Invalid { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotation::ifname;
    use crate::networks::Mode;
    use crate::store::Phase;

    fn desired(text: &str) -> Vec<NetworkSelection> {
        Mode::Npwg.desired(Some(text)).expect("valid")
    }

    fn recorded(selections: &[NetworkSelection]) -> BTreeMap<String, Attachment> {
        selections
            .iter()
            .map(|s| (s.ifname(), Attachment::new(s.clone(), Phase::Attached)))
            .collect()
    }

    fn links(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn call(
        desired: Vec<NetworkSelection>,
        recorded: &BTreeMap<String, Attachment>,
        links: Option<&BTreeSet<String>>,
    ) -> Result<Vec<NetworkSelection>, AnnotationError> {
        name_interfaces(desired, recorded, links, &Claims::new(), "ns")
    }

    fn ifnames(selections: &[NetworkSelection]) -> Vec<String> {
        selections.iter().map(NetworkSelection::ifname).collect()
    }

    #[test]
    fn asked_names_are_kept_and_the_rest_derived_from_the_network() {
        let named = call(desired("a@eth9, b"), &BTreeMap::new(), Some(&links(&[]))).expect("named");
        assert_eq!(ifnames(&named), ["eth9".to_owned(), ifname("b")]);
    }

    #[test]
    fn a_recorded_interface_stays_when_the_element_no_longer_names_it() {
        let record = recorded(&desired("a@eth9"));
        let named = call(desired("a"), &record, Some(&links(&["eth9"]))).expect("named");
        assert_eq!(ifnames(&named), ["eth9"]);
        // But not when another element now asks for that name.
        let named = call(desired("a, b@eth9"), &record, Some(&links(&["eth9"]))).expect("named");
        assert_eq!(ifnames(&named), [ifname("a"), "eth9".to_owned()]);
    }

    #[test]
    fn one_network_twice_needs_two_names() {
        let both =
            call(desired("a@eth9, a@eth10"), &BTreeMap::new(), None).expect("two interfaces");
        assert_eq!(ifnames(&both), ["eth9", "eth10"]);
        let refused = call(desired("a, a"), &BTreeMap::new(), None).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("[1].interface: network a would get interface"),
            "{refused}"
        );
        let clash = format!("a, b@{}", ifname("a"));
        assert!(call(desired(&clash), &BTreeMap::new(), None).is_err());
    }

    #[test]
    fn a_link_podagent_did_not_make_is_not_taken() {
        let refused = call(
            desired("a@eth0, b@eth9, c@lo"),
            &BTreeMap::new(),
            Some(&links(&["lo", "eth0"])),
        )
        .unwrap_err();
        let text = refused.to_string();
        assert!(
            text.contains("[0].interface: eth0 already exists in the pod"),
            "{text}"
        );
        assert!(text.contains("[2].interface: lo already exists"), "{text}");
        assert!(!text.contains("[1]"), "{text}");
        // Its own attachment's link is no obstacle.
        let record = recorded(&desired("b@eth9"));
        assert!(call(desired("b@eth9"), &record, Some(&links(&["eth9"]))).is_ok());
    }

    #[test]
    fn a_claimed_link_that_is_there_is_named_for_adoption_and_nothing_else_is() {
        let status = serde_json::json!([
            {"name": "k8s-pod-network", "interface": "eth0", "default": true},
            {"name": "ns/a", "interface": "net1"},
            {"name": "ns/b", "interface": "ghost"},
            {"name": "ns/c", "interface": "eth0"},
            {"name": "ns/d", "interface": "net4", "default": true},
        ])
        .to_string();
        let claims = claims(Some(&status));
        assert_eq!(
            claims,
            Claims::from([
                ("ns/a".to_owned(), "net1".to_owned()),
                ("ns/b".to_owned(), "ghost".to_owned())
            ])
        );
        let present = links(&["lo", "eth0", "net1", "net4"]);
        let with_claims = |text: &str| {
            name_interfaces(
                desired(text),
                &BTreeMap::new(),
                Some(&present),
                &claims,
                "ns",
            )
        };
        // a adopts net1; b's link is not there and c's claim on eth0 never counts.
        let named = with_claims("a, b, c").expect("named");
        assert_eq!(
            ifnames(&named),
            ["net1".to_owned(), ifname("b"), ifname("c")]
        );
        // Asked for explicitly, a claimed link is adoptable too; another network's is not.
        assert!(with_claims("a@net1").is_ok());
        assert!(with_claims("d@net4").is_err());
        assert!(with_claims("b@net1").is_err());
        assert!(super::claims(Some("not json")).is_empty());
    }
}
