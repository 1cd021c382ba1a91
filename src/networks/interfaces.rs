//! Which interface each NPWG element gets (DESIGN.md §1a), decided before planning.
//!
//! The Kaloom annotation derives every interface from its network's name, so its names are
//! unique by construction. NPWG elements may name an interface, may name one network twice,
//! and a pod may already hold links nobody told podagent about. So, per element: the
//! `interface` it asks for; else the interface its network already has in the record (a
//! name must not change under a running attachment because a neighbour was edited); else
//! `net` + md5(name)[:12]. Then two checks, each refusing the whole annotation with every
//! problem at once, because a half-applied set of names is harder to reason about than none:
//! no two elements on one interface, and no element on a link the pod already has that
//! podagent did not make (the default network's `eth0`, a user's link): the ADD would fail
//! half-way at best, and at worst a DEL would later remove what podagent never made.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::annotation::{AnnotationError, EntryProblem, NetworkSelection};
use crate::store::Attachment;

/// Names the interface of each of `desired`, given the attachments recorded for the pod's
/// current sandbox and the links seen in its netns (`None`: not known).
pub(crate) fn name_interfaces(
    mut desired: Vec<NetworkSelection>,
    recorded: &BTreeMap<String, Attachment>,
    links: Option<&BTreeSet<String>>,
) -> Result<Vec<NetworkSelection>, AnnotationError> {
    let asked: BTreeSet<String> = desired.iter().filter_map(|s| s.interface.clone()).collect();
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    for selection in desired.iter_mut().filter(|s| s.interface.is_none()) {
        let held = recorded.iter().find(|(ifname, attachment)| {
            attachment.selection.name == selection.name
                && attachment.selection.namespace == selection.namespace
                && !asked.contains(*ifname)
                && !kept.contains(ifname.as_str())
        });
        if let Some((ifname, attachment)) = held {
            kept.insert(ifname);
            selection
                .interface
                .clone_from(&attachment.selection.interface);
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
        if links.is_some_and(|links| links.contains(&ifname)) && !recorded.contains_key(&ifname) {
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

    fn ifnames(selections: &[NetworkSelection]) -> Vec<String> {
        selections.iter().map(NetworkSelection::ifname).collect()
    }

    #[test]
    fn asked_names_are_kept_and_the_rest_derived_from_the_network() {
        let named = name_interfaces(desired("a@eth9, b"), &BTreeMap::new(), Some(&links(&[])))
            .expect("named");
        assert_eq!(ifnames(&named), ["eth9".to_owned(), ifname("b")]);
    }

    #[test]
    fn a_recorded_interface_stays_when_the_element_no_longer_names_it() {
        let record = recorded(&desired("a@eth9"));
        let named = name_interfaces(desired("a"), &record, Some(&links(&["eth9"]))).expect("named");
        assert_eq!(ifnames(&named), ["eth9"]);
        // But not when another element now asks for that name.
        let named =
            name_interfaces(desired("a, b@eth9"), &record, Some(&links(&["eth9"]))).expect("named");
        assert_eq!(ifnames(&named), [ifname("a"), "eth9".to_owned()]);
    }

    #[test]
    fn one_network_twice_needs_two_names() {
        let both = name_interfaces(desired("a@eth9, a@eth10"), &BTreeMap::new(), None)
            .expect("two interfaces");
        assert_eq!(ifnames(&both), ["eth9", "eth10"]);
        let refused = name_interfaces(desired("a, a"), &BTreeMap::new(), None).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("[1].interface: network a would get interface"),
            "{refused}"
        );
        let clash = format!("a, b@{}", ifname("a"));
        assert!(name_interfaces(desired(&clash), &BTreeMap::new(), None).is_err());
    }

    #[test]
    fn a_link_podagent_did_not_make_is_not_taken() {
        let refused = name_interfaces(
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
        assert!(name_interfaces(desired("b@eth9"), &record, Some(&links(&["eth9"]))).is_ok());
    }
}
