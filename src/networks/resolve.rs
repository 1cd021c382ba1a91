//! Resolution: which network object an annotation entry names, and the CNI config it yields.
//!
//! Pure but for one read, so every namespace rule and every malformed `spec.config` is a unit
//! test: the cache hands in what the API server holds, the reconciler gets a config to run or
//! the reason it cannot have one, worded for a Warning Event. The read: a
//! NetworkAttachmentDefinition without `spec.config` names a config file of the node's CNI conf
//! dir (NPWG §3.4), looked up when it is resolved, so a file written after the object is found.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde_json::{Map, Value};

use super::{Definition, Mode, Settings};
use crate::annotation::NetworkSelection;

/// Far above any real network config; a bigger `spec.config` is refused unread.
pub(crate) const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// A network object as the cache keeps it: its config made runnable once, when the watch
/// delivers it, so resolving an entry at every reconcile is a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetworkObject {
    /// The config list podagent runs, or why `spec.config` cannot be run; `None`: the object
    /// has no `spec.config` (a NetworkAttachmentDefinition naming a file of the conf dir).
    pub(crate) config: Option<Result<String, String>>,
}

impl NetworkObject {
    /// Network `name` with `spec.plugin` and `spec.config` as written.
    pub(crate) fn new(name: &str, plugin: Option<&str>, config: Option<&str>) -> NetworkObject {
        NetworkObject {
            config: config.map(|config| normalize(name, plugin, config)),
        }
    }
}

/// The network objects known now, by namespace and name.
pub(crate) type Catalog = BTreeMap<(String, String), NetworkObject>;

/// Why an entry has no config to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unresolved {
    /// No object of that name in any namespace the rules allow.
    NotFound {
        kind: &'static str,
        namespaces: Vec<String>,
        name: String,
    },
    /// Namespace isolation refuses an entry naming another namespace.
    Isolated {
        kind: &'static str,
        namespace: String,
        name: String,
        pod_namespace: String,
    },
    /// The object exists but its `spec.config` cannot be run.
    Malformed {
        kind: &'static str,
        namespace: String,
        name: String,
        reason: String,
    },
    /// The object has no `spec.config` and the conf dir has no usable config of its name.
    NoConfig {
        namespace: String,
        name: String,
        reason: String,
    },
}

impl Unresolved {
    /// The Event reason.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Unresolved::NotFound { .. } => "NetworkNotFound",
            Unresolved::Isolated { .. } => "NetworkRefused",
            Unresolved::Malformed { .. } => "InvalidNetwork",
            Unresolved::NoConfig { .. } => "NetworkConfigNotFound",
        }
    }
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unresolved::NotFound {
                kind,
                namespaces,
                name,
            } => write!(
                f,
                "no {kind} {name} in namespace {}; the interface is added as soon as it is \
                 created",
                namespaces.join(" or ")
            ),
            Unresolved::Isolated {
                kind,
                namespace,
                name,
                pod_namespace,
            } => write!(
                f,
                "{kind} {namespace}/{name} is outside the pod's namespace {pod_namespace}, \
                 and networks.namespace_isolation is on; create the {kind} in {pod_namespace} \
                 or drop the entry's namespace"
            ),
            Unresolved::Malformed {
                kind,
                namespace,
                name,
                reason,
            } => write!(
                f,
                "{kind} {namespace}/{name} has an unusable spec.config: {reason}; nothing was \
                 run, fix the object and the interface is added"
            ),
            Unresolved::NoConfig {
                namespace,
                name,
                reason,
            } => write!(
                f,
                "NetworkAttachmentDefinition {namespace}/{name} has no spec.config, and {reason}; \
                 give it a spec.config or write a CNI config named {name} into the conf dir, \
                 then change the object or the pod to retry"
            ),
        }
    }
}

/// Resolves `selection` of a pod in `pod_namespace` against `catalog`; an object without
/// `spec.config` resolves to the config named after it in `conf_dir`.
///
/// The namespace is the entry's own, else the pod's, else (direct mode) the fallback namespace
/// when the object is absent from the pod's. With isolation on, an entry naming a namespace
/// other than the pod's is refused; the fallback stays allowed, it is the operator's choice.
pub(crate) fn resolve(
    catalog: &Catalog,
    selection: &NetworkSelection,
    pod_namespace: &str,
    settings: &Settings,
    conf_dir: &Path,
) -> Result<Definition, Unresolved> {
    let kind = settings.mode.object_kind();
    let name = &selection.name;
    let candidates: Vec<String> = match &selection.namespace {
        Some(namespace) => {
            if settings.namespace_isolation && namespace != pod_namespace {
                return Err(Unresolved::Isolated {
                    kind,
                    namespace: namespace.clone(),
                    name: name.clone(),
                    pod_namespace: pod_namespace.to_owned(),
                });
            }
            vec![namespace.clone()]
        }
        None => std::iter::once(pod_namespace.to_owned())
            .chain(
                settings
                    .fallback_namespace
                    .clone()
                    .filter(|fallback| fallback != pod_namespace && settings.mode == Mode::Direct),
            )
            .collect(),
    };
    let Some((namespace, object)) = candidates.iter().find_map(|namespace| {
        catalog
            .get(&(namespace.clone(), name.clone()))
            .map(|object| (namespace, object))
    }) else {
        return Err(Unresolved::NotFound {
            kind,
            namespaces: candidates,
            name: name.clone(),
        });
    };
    let config = match &object.config {
        Some(config) => config.clone().map_err(|reason| Unresolved::Malformed {
            kind,
            namespace: namespace.clone(),
            name: name.clone(),
            reason,
        })?,
        None => from_conf_dir(conf_dir, name).map_err(|reason| Unresolved::NoConfig {
            namespace: namespace.clone(),
            name: name.clone(),
            reason,
        })?,
    };
    Ok(Definition {
        namespace: namespace.clone(),
        name: name.clone(),
        config,
    })
}

/// The config of `conf_dir` whose `name` is `name`, as Multus finds it: the first of the
/// `.conf`, `.conflist` and `.json` files in name order, made runnable like a `spec.config`.
/// Files that cannot be read or parsed are passed over, as the CNI runtime's own discovery
/// does; a named one that cannot be run is the reason.
fn from_conf_dir(conf_dir: &Path, name: &str) -> Result<String, String> {
    let not_found = || format!("{} holds no CNI config named {name}", conf_dir.display());
    let entries = std::fs::read_dir(conf_dir)
        .map_err(|e| format!("{} cannot be read: {e}", conf_dir.display()))?;
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|ext| ext == "conf" || ext == "conflist" || ext == "json")
        })
        .collect();
    files.sort();
    for file in files {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if !meta.is_file() || meta.len() > MAX_CONFIG_BYTES as u64 {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let named = serde_json::from_str::<Value>(&text)
            .is_ok_and(|v| v.get("name").and_then(Value::as_str) == Some(name));
        if named {
            return normalize(name, None, &text)
                .map_err(|reason| format!("{} cannot be run: {reason}", file.display()));
        }
    }
    Err(not_found())
}

/// `spec.config` as the config list podagent runs: a single plugin config is lifted into a
/// list of one, `name` comes from the object when absent, and `type` from `spec.plugin` when
/// a single config has none. The result is checked the way the CNI engine will parse it.
fn normalize(name: &str, plugin: Option<&str>, config: &str) -> Result<String, String> {
    if config.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "it is {} bytes, more than the {MAX_CONFIG_BYTES} podagent accepts",
            config.len()
        ));
    }
    let value: Value =
        serde_json::from_str(config).map_err(|err| format!("not valid JSON: {err}"))?;
    let Value::Object(mut top) = value else {
        return Err("not a JSON object".to_owned());
    };
    top.entry("name")
        .or_insert_with(|| Value::String(name.to_owned()));
    let list = if top.contains_key("plugins") {
        top
    } else {
        if let Some(plugin) = plugin {
            top.entry("type")
                .or_insert_with(|| Value::String(plugin.to_owned()));
        }
        lift(top)
    };
    let text = Value::Object(list).to_string();
    crate::cni::check_config(text.as_bytes())?;
    Ok(text)
}

/// A single plugin config as a list of one: `name` and `cniVersion` move to the list.
fn lift(mut conf: Map<String, Value>) -> Map<String, Value> {
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(value) = conf.remove(key) {
            list.insert(key.to_owned(), value);
        }
    }
    list.insert(
        "plugins".to_owned(),
        Value::Array(vec![Value::Object(conf)]),
    );
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            mode: super::super::Mode::Direct,
            fallback_namespace: Some("default".into()),
            ..Settings::default()
        }
    }

    /// `spec.plugin` and `spec.config` of an object.
    type Spec = (Option<&'static str>, String);

    fn bridge(bridge: &str) -> Spec {
        (
            Some("bridge"),
            format!(
                r#"{{"cniVersion":"0.3.1","type":"bridge","bridge":"{bridge}","ipam":{{"type":"host-local","subnet":"10.1.0.0/24"}}}}"#
            ),
        )
    }

    fn catalog(objects: &[(&str, &str, Spec)]) -> Catalog {
        objects
            .iter()
            .map(|(ns, name, (plugin, config))| {
                let object = NetworkObject::new(name, *plugin, Some(config));
                ((ns.to_string(), name.to_string()), object)
            })
            .collect()
    }

    fn entry(json: &str) -> NetworkSelection {
        serde_json::from_str(json).expect("selection")
    }

    /// Resolution with no conf dir to fall back on.
    fn resolve(
        catalog: &Catalog,
        selection: &NetworkSelection,
        pod_namespace: &str,
        settings: &Settings,
    ) -> Result<Definition, Unresolved> {
        super::resolve(
            catalog,
            selection,
            pod_namespace,
            settings,
            Path::new("/nonexistent"),
        )
    }

    fn config(definition: &Definition) -> Value {
        serde_json::from_str(&definition.config).expect("config JSON")
    }

    #[test]
    fn a_single_config_becomes_a_list_of_one_named_after_the_object() {
        let catalog = catalog(&[("team", "data", bridge("br-team"))]);
        let found =
            resolve(&catalog, &entry(r#"{"name":"data"}"#), "team", &settings()).expect("resolved");
        assert_eq!(
            (found.namespace.as_str(), found.name.as_str()),
            ("team", "data")
        );
        let list = config(&found);
        assert_eq!(list["name"], "data");
        assert_eq!(list["cniVersion"], "0.3.1");
        assert_eq!(list["plugins"][0]["type"], "bridge");
        assert_eq!(list["plugins"][0]["bridge"], "br-team");
        assert!(list["plugins"][0].get("name").is_none());
    }

    #[test]
    fn the_type_comes_from_spec_plugin_when_the_config_has_none() {
        let object = (
            Some("macvlan"),
            r#"{"cniVersion":"1.0.0","master":"eth9"}"#.to_owned(),
        );
        let catalog = catalog(&[("default", "fast", object)]);
        let found = resolve(
            &catalog,
            &entry(r#"{"name":"fast"}"#),
            "default",
            &settings(),
        )
        .expect("resolved");
        assert_eq!(config(&found)["plugins"][0]["type"], "macvlan");
    }

    #[test]
    fn a_config_list_keeps_its_own_name_and_plugins() {
        let object = (
            None,
            r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bridge"},{"type":"tuning"}]}"#.to_owned(),
        );
        let catalog = catalog(&[("default", "chain", object)]);
        let found = resolve(
            &catalog,
            &entry(r#"{"name":"chain"}"#),
            "default",
            &settings(),
        )
        .expect("resolved");
        let list = config(&found);
        assert_eq!(list["name"], "other");
        assert_eq!(list["plugins"][1]["type"], "tuning");
    }

    #[test]
    fn namespace_rules_entry_then_pod_then_fallback() {
        let catalog = catalog(&[
            ("default", "data", bridge("br-default")),
            ("team", "data", bridge("br-team")),
            ("other", "data", bridge("br-other")),
        ]);
        let s = settings();
        let bridge_of = |d: Definition| config(&d)["plugins"][0]["bridge"].clone();
        let own = resolve(&catalog, &entry(r#"{"name":"data"}"#), "team", &s).expect("team");
        assert_eq!(bridge_of(own), "br-team");
        let named = resolve(
            &catalog,
            &entry(r#"{"name":"data","namespace":"other"}"#),
            "team",
            &s,
        )
        .expect("other");
        assert_eq!(bridge_of(named), "br-other");
        let fallback =
            resolve(&catalog, &entry(r#"{"name":"data"}"#), "lonely", &s).expect("fallback");
        assert_eq!(fallback.namespace, "default");
        assert_eq!(bridge_of(fallback), "br-default");
    }

    #[test]
    fn without_a_fallback_only_the_pods_namespace_counts() {
        let catalog = catalog(&[("default", "data", bridge("br-default"))]);
        let s = Settings {
            fallback_namespace: None,
            ..settings()
        };
        let missing = resolve(&catalog, &entry(r#"{"name":"data"}"#), "lonely", &s);
        assert_eq!(
            missing,
            Err(Unresolved::NotFound {
                kind: "Network",
                namespaces: vec!["lonely".into()],
                name: "data".into()
            })
        );
    }

    #[test]
    fn missing_names_every_namespace_looked_in() {
        let missing = resolve(
            &Catalog::new(),
            &entry(r#"{"name":"data"}"#),
            "team",
            &settings(),
        )
        .expect_err("missing");
        assert_eq!(missing.reason(), "NetworkNotFound");
        assert_eq!(
            missing.to_string(),
            "no Network data in namespace team or default; the interface is added as soon as \
             it is created"
        );
    }

    #[test]
    fn isolation_refuses_another_namespace_but_keeps_the_fallback() {
        let catalog = catalog(&[
            ("default", "data", bridge("br-default")),
            ("other", "data", bridge("br-other")),
        ]);
        let s = Settings {
            namespace_isolation: true,
            ..settings()
        };
        let refused = resolve(
            &catalog,
            &entry(r#"{"name":"data","namespace":"other"}"#),
            "team",
            &s,
        )
        .expect_err("refused");
        assert_eq!(refused.reason(), "NetworkRefused");
        assert!(refused.to_string().contains("other/data"), "{refused}");
        assert!(resolve(&catalog, &entry(r#"{"name":"data"}"#), "team", &s).is_ok());
        assert!(
            resolve(
                &catalog,
                &entry(r#"{"name":"data","namespace":"team"}"#),
                "team",
                &s
            )
            .is_err_and(|e| e.reason() == "NetworkNotFound")
        );
    }

    #[test]
    fn malformed_configs_say_why_and_name_the_object() {
        let big = format!(r#"{{"type":"bridge","pad":"{}"}}"#, "x".repeat(1 << 20));
        let cases = [
            ("not json", "not valid JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"cniVersion":"0.3.1"}"#, "no \"type\""),
            (
                r#"{"cniVersion":"0.3.1","type":"../../bin/sh"}"#,
                "is not a plugin file name",
            ),
            (r#"{"type":"bridge"}"#, "no \"cniVersion\""),
            (big.as_str(), "more than the 65536 podagent accepts"),
        ];
        for (text, why) in cases {
            let object = (None, text.to_owned());
            let catalog = catalog(&[("default", "bad", object)]);
            let error = resolve(
                &catalog,
                &entry(r#"{"name":"bad"}"#),
                "default",
                &settings(),
            )
            .expect_err(text);
            assert_eq!(error.reason(), "InvalidNetwork");
            let shown = error.to_string();
            assert!(
                shown.contains("Network default/bad") && shown.contains(why),
                "{shown}"
            );
        }
    }

    fn npwg() -> Settings {
        Settings {
            mode: Mode::Npwg,
            ..settings()
        }
    }

    #[test]
    fn npwg_mode_has_no_fallback_namespace_and_names_the_kind() {
        let catalog = catalog(&[("default", "data", bridge("br-default"))]);
        let missing = resolve(&catalog, &entry(r#"{"name":"data"}"#), "team", &npwg())
            .expect_err("no fallback");
        assert_eq!(
            missing.to_string(),
            "no NetworkAttachmentDefinition data in namespace team; the interface is added as \
             soon as it is created"
        );
    }

    #[test]
    fn a_definition_without_config_is_the_conf_dir_file_of_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &str| std::fs::write(dir.path().join(file), text).unwrap();
        write(
            "00-other.conflist",
            r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bridge"}]}"#,
        );
        write(
            "10-data.conf",
            r#"{"cniVersion":"0.4.0","name":"data","type":"macvlan"}"#,
        );
        write(
            "20-data.conflist",
            r#"{"cniVersion":"1.0.0","name":"data","plugins":[{"type":"ipvlan"}]}"#,
        );
        write(
            "30-broken.conf",
            r#"{"cniVersion":"1.0.0","name":"broken"}"#,
        );
        write("notes.txt", r#"{"name":"text"}"#);
        let mut catalog = Catalog::new();
        for name in ["data", "broken", "text", "absent"] {
            catalog.insert(
                ("team".into(), name.into()),
                NetworkObject::new(name, None, None),
            );
        }
        let at = |name: &str| {
            let selection = entry(&format!(r#"{{"name":"{name}"}}"#));
            super::resolve(&catalog, &selection, "team", &npwg(), dir.path())
        };
        let data = at("data").expect("from the conf dir");
        assert_eq!(config(&data)["plugins"][0]["type"], "macvlan");
        let broken = at("broken").expect_err("no type");
        assert_eq!(broken.reason(), "NetworkConfigNotFound");
        assert!(
            broken.to_string().contains("30-broken.conf cannot be run"),
            "{broken}"
        );
        for name in ["text", "absent"] {
            let missing = at(name).expect_err(name);
            assert!(
                missing
                    .to_string()
                    .contains(&format!("holds no CNI config named {name}")),
                "{missing}"
            );
        }
    }
}
