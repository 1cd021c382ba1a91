//! Where an attachment's CNI config comes from (DESIGN.md §1a): the network mode.
//!
//! In `kactus` mode podagent runs the node's primary config and kactus, as that primary,
//! looks the network up; nobody but kactus reads network objects. In `direct` mode podagent
//! resolves each annotation entry to a `kaloom.com/v1` `Network` itself and runs that
//! network's own config, so it serves nodes whatever their primary CNI is, and tears down what
//! it made, since no other plugin knows of it. The mode decides the few places where the two
//! differ; everything else (plan, CNI engine, records, feedback) is shared. `npwg` mode is
//! `direct` for Multus users: the NPWG annotation and NetworkAttachmentDefinitions.
//!
//! The objects come from one cluster-wide list+watch (`kubeapi::networks`) into a [`Catalog`]
//! held here, never fetched per attach; [`resolve`] is pure.

mod interfaces;
mod resolve;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::annotation::{self, AnnotationError, NetworkSelection, npwg};

pub(crate) use interfaces::{claims, name_interfaces};
pub(crate) use resolve::{Catalog, NetworkObject, Unresolved};

/// The `networks.*` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) mode: Mode,
    /// The namespace looked in when an entry names none and the pod's own has no such
    /// object (kactus read `default` only); `None` disables.
    pub(crate) fallback_namespace: Option<String>,
    /// Refuse entries that name a namespace other than the pod's.
    pub(crate) namespace_isolation: bool,
    /// Kactus mode: a primary whose first plugin is not kactus is deliberate.
    pub(crate) accept_other_primary: bool,
}

/// Which network source a node uses (`networks.mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The node's primary config, kactus resolving the network (the seed's behaviour).
    #[default]
    Kactus,
    /// `kaloom.com/v1` `Network` objects, each network's own plugin run by podagent.
    Direct,
    /// The NPWG annotation and `k8s.cni.cncf.io/v1` NetworkAttachmentDefinitions, run by
    /// podagent as in `direct` mode.
    Npwg,
}

/// The NPWG networks annotation, read in `npwg` mode unless `annotation_key` says otherwise.
pub(crate) const NPWG_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

impl Mode {
    /// The key's values, in the order the docs list them.
    pub(crate) const NAMES: [&'static str; 3] = ["kactus", "direct", "npwg"];

    pub(crate) fn parse(text: &str) -> Option<Mode> {
        match text {
            "kactus" => Some(Mode::Kactus),
            "direct" => Some(Mode::Direct),
            "npwg" => Some(Mode::Npwg),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Kactus => "kactus",
            Mode::Direct => "direct",
            Mode::Npwg => "npwg",
        }
    }

    /// The kind of object an entry names, as messages call it.
    pub(crate) const fn object_kind(self) -> &'static str {
        match self {
            Mode::Kactus | Mode::Direct => "Network",
            Mode::Npwg => "NetworkAttachmentDefinition",
        }
    }

    /// The selections an annotation value asks for, parsed the mode's way.
    pub(crate) fn desired(
        self,
        value: Option<&str>,
    ) -> Result<Vec<NetworkSelection>, AnnotationError> {
        match self {
            Mode::Kactus | Mode::Direct => annotation::parse(value),
            Mode::Npwg => Ok(npwg::parse(value)?
                .into_iter()
                .map(npwg::Element::into_selection)
                .collect()),
        }
    }
}

/// The config an attachment was made with, as its record keeps it: DEL runs with exactly
/// these bytes even after the object was edited or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Definition {
    /// Where the object was found.
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// The config list podagent ran (a single config lifted), as JSON text.
    pub(crate) config: String,
}

/// What to run for one annotation entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// The node's primary config (`kactus` mode).
    Primary,
    /// A network object's config (`direct` mode).
    Network(Definition),
    /// Nothing can be run for it now; the reason is for a Warning Event.
    Unresolved(Unresolved),
}

/// The node's network source: the mode, its settings and, in `direct` mode, the catalog the
/// watch keeps current. Clones share the catalog.
#[derive(Debug, Clone)]
pub(crate) struct Networks {
    settings: Settings,
    catalog: Arc<RwLock<Catalog>>,
    /// Where a NetworkAttachmentDefinition without `spec.config` finds its config.
    conf_dir: PathBuf,
}

impl Networks {
    pub(crate) fn new(settings: Settings, conf_dir: impl Into<PathBuf>) -> Networks {
        Networks {
            settings,
            catalog: Arc::default(),
            conf_dir: conf_dir.into(),
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        self.settings.mode
    }

    /// Whether podagent must DEL its attachments when a pod or sandbox goes: nobody else
    /// knows them outside `kactus` mode.
    pub(crate) fn owns_teardown(&self) -> bool {
        self.settings.mode != Mode::Kactus
    }

    pub(crate) fn resolve(&self, selection: &NetworkSelection, pod_namespace: &str) -> Resolution {
        match self.settings.mode {
            Mode::Kactus => Resolution::Primary,
            Mode::Direct | Mode::Npwg => {
                let catalog = self.catalog.read().unwrap_or_else(PoisonError::into_inner);
                let resolved = resolve::resolve(
                    &catalog,
                    selection,
                    pod_namespace,
                    &self.settings,
                    &self.conf_dir,
                );
                match resolved {
                    Ok(definition) => Resolution::Network(definition),
                    Err(why) => Resolution::Unresolved(why),
                }
            }
        }
    }

    /// Replaces the whole catalog (a fresh list); returns the names that changed.
    pub(crate) fn replace(&self, fresh: Catalog) -> BTreeSet<String> {
        let mut catalog = self.catalog.write().unwrap_or_else(PoisonError::into_inner);
        let changed = catalog
            .iter()
            .filter(|(key, object)| fresh.get(*key) != Some(*object))
            .chain(
                fresh
                    .iter()
                    .filter(|(key, object)| catalog.get(*key) != Some(*object)),
            )
            .map(|((_, name), _)| name.clone())
            .collect();
        *catalog = fresh;
        changed
    }

    /// Sets (`Some`) or removes (`None`) one object; whether anything changed.
    pub(crate) fn update(
        &self,
        namespace: &str,
        name: &str,
        object: Option<NetworkObject>,
    ) -> bool {
        let mut catalog = self.catalog.write().unwrap_or_else(PoisonError::into_inner);
        let key = (namespace.to_owned(), name.to_owned());
        match object {
            Some(object) => catalog.insert(key, object.clone()) != Some(object),
            None => catalog.remove(&key).is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct() -> Networks {
        Networks::new(
            Settings {
                mode: Mode::Direct,
                ..Settings::default()
            },
            "/nonexistent",
        )
    }

    /// An object whose config runs plugin `plugin<tag>`.
    fn object(tag: &str) -> NetworkObject {
        let config = format!(r#"{{"cniVersion":"1.0.0","type":"plugin{tag}"}}"#);
        NetworkObject::new("data", None, Some(&config))
    }

    #[test]
    fn kactus_mode_always_runs_the_primary_and_owns_no_teardown() {
        let networks = Networks::new(Settings::default(), "/nonexistent");
        let selection = NetworkSelection::named("data");
        assert_eq!(networks.resolve(&selection, "default"), Resolution::Primary);
        assert!(!networks.owns_teardown());
        assert!(direct().owns_teardown());
    }

    #[test]
    fn replace_and_update_report_what_changed() {
        let networks = direct();
        let key = |ns: &str, name: &str| (ns.to_owned(), name.to_owned());
        let first: Catalog = [(key("a", "x"), object("1")), (key("a", "y"), object("2"))].into();
        assert_eq!(
            networks.replace(first.clone()),
            ["x", "y"].map(String::from).into()
        );
        assert!(networks.replace(first).is_empty());
        let second: Catalog = [(key("a", "x"), object("1")), (key("b", "z"), object("3"))].into();
        assert_eq!(
            networks.replace(second),
            ["y", "z"].map(String::from).into()
        );
        assert!(!networks.update("a", "x", Some(object("1"))));
        assert!(networks.update("a", "x", Some(object("9"))));
        assert!(networks.update("a", "x", None));
        assert!(!networks.update("a", "x", None));
    }

    #[test]
    fn mode_names_round_trip() {
        for name in Mode::NAMES {
            assert_eq!(Mode::parse(name).map(Mode::as_str), Some(name));
        }
        assert_eq!(Mode::parse("multus"), None);
    }
}
