//! The configuration layers and where each value came from.
//!
//! figment merges the layers (TOML file → `PODAGENT_*` environment → flags); built-in defaults
//! are applied later, during validation, so that a value present here always has a real origin
//! that an error message can name: the file path, the environment variable or the flag.
//!
//! The environment and flag layers are built from the table of known keys, so a value gets the
//! key's type (a colon-separated list becomes an array, a number stays text when the key is
//! text) instead of figment's guess, and the table is also what makes unknown keys an error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;

use super::{ConfigError, Flags, Problem};

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("built-in default"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// How a text value from the environment or a flag becomes a typed value.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Number,
    /// A list written as one string, split on this separator.
    List(char),
}

struct Key {
    path: &'static str,
    kind: Kind,
    flag: Option<&'static str>,
}

const fn key(path: &'static str, kind: Kind, flag: Option<&'static str>) -> Key {
    Key { path, kind, flag }
}

/// Every key podagent understands. Anything else in any layer is reported as unknown.
const KEYS: &[Key] = &[
    key("node_name", Kind::Text, Some("--node-name/--node")),
    key("annotation_key", Kind::Text, Some("--annotation-key")),
    key("state_dir", Kind::Text, Some("--state-dir")),
    key("log_level", Kind::Text, Some("--log-level")),
    key("shutdown_grace", Kind::Text, None),
    key("kube.kubeconfig", Kind::Text, Some("--kubeconfig")),
    key(
        "runtime.kind",
        Kind::Text,
        Some("--runtime/--container-type"),
    ),
    key("runtime.endpoint", Kind::Text, Some("--runtime-endpoint")),
    key("runtime.timeout", Kind::Text, None),
    key(
        "cni.conf_dir",
        Kind::Text,
        Some("--cni-conf-dir/--cni-conf-path"),
    ),
    key(
        "cni.bin_dirs",
        Kind::List(':'),
        Some("--cni-bin-dirs/--cni-bin-path"),
    ),
    key(
        "cni.vendor",
        Kind::Text,
        Some("--cni-vendor/--cni-vendor-name"),
    ),
    key("cni.plugin_timeout", Kind::Text, None),
    key("cni.env_passthrough", Kind::List(','), None),
    key("reconcile.concurrency", Kind::Number, None),
    key("reconcile.retry_base", Kind::Text, None),
    key("reconcile.retry_cap", Kind::Text, None),
    key("reconcile.resync_period", Kind::Text, None),
];

/// Tables that group keys; a table name alone is not a setting.
const TABLES: &[&str] = &["kube", "runtime", "cni", "reconcile"];

const ENV_PREFIX: &str = "PODAGENT_";
const ENV_LAYER: &str = "environment";
const FLAG_LAYER: &str = "command-line flags";

fn find_key(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.path == path)
}

/// `cni.conf_dir` → `PODAGENT_CNI__CONF_DIR`.
pub(crate) fn env_var_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', "__").to_ascii_uppercase()
    )
}

fn typed(kind: Kind, text: &str) -> Value {
    match kind {
        Kind::Text => Value::from(text.to_string()),
        // figment's parser turns digits into a number and leaves anything else as text, which
        // then fails to deserialize with a message naming the expected type.
        Kind::Number => text.parse::<Value>().unwrap_or_else(|never| match never {}),
        Kind::List(separator) => Value::from(
            text.split(separator)
                .filter(|item| !item.is_empty())
                .map(|item| Value::from(item.to_string()))
                .collect::<Vec<_>>(),
        ),
    }
}

/// Inserts `value` at the dotted `path` of `dict`.
fn insert(dict: &mut Dict, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            dict.insert(path.to_string(), value);
        }
        Some((table, rest)) => {
            let entry = dict
                .entry(table.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// A layer that is already a dictionary, named for error messages.
struct Layer {
    metadata: Metadata,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// The TOML file: `Some(path)` from `--config` must exist; the default path may be absent.
fn file_layer(explicit: Option<&Path>, default: &Path) -> Result<Option<Layer>, ConfigError> {
    let path = explicit.unwrap_or(default);
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
            return Ok(None);
        }
        Err(source) => {
            return Err(ConfigError::ReadFile {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let dict = Toml::from_str::<Dict>(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(Some(Layer {
        metadata: Metadata::from("configuration file", path),
        dict,
    }))
}

fn env_layer(vars: impl IntoIterator<Item = (String, String)>) -> Layer {
    let mut dict = Dict::new();
    for (name, text) in vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path = rest.to_ascii_lowercase().replace("__", ".");
        let kind = find_key(&path).map_or(Kind::Text, |k| k.kind);
        insert(&mut dict, &path, typed(kind, &text));
    }
    Layer {
        metadata: Metadata::named(ENV_LAYER),
        dict,
    }
}

fn flag_layer(flags: &Flags, problems: &mut Vec<Problem>) -> Layer {
    let mut dict = Dict::new();
    let mut set = |path: &str, text: &Option<String>| {
        if let (Some(text), Some(key)) = (text, find_key(path)) {
            insert(&mut dict, path, typed(key.kind, text));
        }
    };
    set("node_name", &flags.node_name);
    set("annotation_key", &flags.annotation_key);
    set("state_dir", &flags.state_dir);
    set("log_level", &flags.log_level);
    set("kube.kubeconfig", &flags.kubeconfig);
    set("runtime.kind", &flags.runtime);
    set("runtime.endpoint", &flags.runtime_endpoint);
    set("cni.conf_dir", &flags.cni_conf_dir);
    set("cni.bin_dirs", &flags.cni_bin_dirs);
    set("cni.vendor", &flags.cni_vendor);

    // The Go podagent took one endpoint flag per runtime and used the one matching
    // --container-type; without a type, a single endpoint flag also selects its runtime.
    if flags.runtime_endpoint.is_none() {
        let legacy = match (
            flags.runtime.as_deref(),
            &flags.crio_endpoint,
            &flags.docker_endpoint,
        ) {
            (Some("crio"), Some(crio), _) => Some((None, crio)),
            (Some("docker"), _, Some(docker)) => Some((None, docker)),
            (None, Some(crio), None) => Some((Some("crio"), crio)),
            (None, None, Some(docker)) => Some((Some("docker"), docker)),
            (None, Some(_), Some(_)) => {
                problems.push(Problem {
                    key: "runtime.endpoint".into(),
                    origin: Origin::Flag("--crio-endpoint"),
                    message: "both --crio-endpoint and --docker-endpoint given without \
                              --container-type: say which runtime to use"
                        .into(),
                });
                None
            }
            _ => None,
        };
        if let Some((kind, endpoint)) = legacy {
            if let Some(kind) = kind {
                insert(&mut dict, "runtime.kind", Value::from(kind.to_string()));
            }
            insert(&mut dict, "runtime.endpoint", Value::from(endpoint.clone()));
        }
    }
    Layer {
        metadata: Metadata::named(FLAG_LAYER),
        dict,
    }
}

/// A value together with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Setting<T> {
    pub(crate) value: T,
    pub(crate) origin: Origin,
}

/// The merged layers, queried key by key so that every bad value is reported, not only the
/// first one serde would stop at.
pub(crate) struct Layers {
    figment: Figment,
    flags: Flags,
}

impl Layers {
    pub(crate) fn build(
        flags: &Flags,
        env: impl IntoIterator<Item = (String, String)>,
        default_file: &Path,
        problems: &mut Vec<Problem>,
    ) -> Result<Layers, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file_layer(flags.config.as_deref(), default_file)? {
            figment = figment.merge(file);
        }
        let figment = figment
            .merge(env_layer(env))
            .merge(flag_layer(flags, problems));
        Ok(Layers {
            figment,
            flags: flags.clone(),
        })
    }

    fn origin(&self, path: &str, value: &Value) -> Origin {
        let Some(metadata) = self.figment.get_metadata(value.tag()) else {
            return Origin::Default;
        };
        if let Some(file) = metadata.source.as_ref().and_then(|s| s.file_path()) {
            return Origin::File(file.to_path_buf());
        }
        if metadata.name == FLAG_LAYER {
            return Origin::Flag(self.flag_name(path));
        }
        Origin::Env(env_var_name(path))
    }

    fn flag_name(&self, path: &str) -> &'static str {
        let flags = &self.flags;
        // Which legacy endpoint flag supplied runtime.endpoint (and runtime.kind, when no
        // --container-type was given); mirrors `flag_layer`.
        let legacy = match (&flags.runtime, &flags.crio_endpoint, &flags.docker_endpoint) {
            (Some(kind), Some(_), _) if kind == "crio" => Some("--crio-endpoint"),
            (Some(kind), _, Some(_)) if kind == "docker" => Some("--docker-endpoint"),
            (None, Some(_), None) => Some("--crio-endpoint"),
            (None, None, Some(_)) => Some("--docker-endpoint"),
            _ => None,
        }
        .filter(|_| flags.runtime_endpoint.is_none());
        match (path, legacy) {
            ("runtime.endpoint", Some(flag)) => flag,
            ("runtime.kind", Some(flag)) if flags.runtime.is_none() => flag,
            // Every key the flag layer sets has a flag name in the table.
            _ => find_key(path).and_then(|k| k.flag).unwrap_or("--config"),
        }
    }

    /// The value of `path` if any layer sets it; a value of the wrong type is a problem.
    pub(crate) fn get<T: DeserializeOwned>(
        &self,
        path: &'static str,
        problems: &mut Vec<Problem>,
    ) -> Option<Setting<T>> {
        let value = self.figment.find_value(path).ok()?;
        let origin = self.origin(path, &value);
        match value.deserialize::<T>() {
            Ok(value) => Some(Setting { value, origin }),
            Err(e) => {
                problems.push(Problem {
                    key: path.into(),
                    origin,
                    message: e.kind.to_string(),
                });
                None
            }
        }
    }

    /// Reports every key no layer should have set (usually a typo).
    pub(crate) fn unknown_keys(&self, problems: &mut Vec<Problem>) {
        let Ok(all) = self.figment.extract::<Dict>() else {
            return;
        };
        let mut found = BTreeMap::new();
        collect_unknown(&all, "", &mut found);
        for (path, value) in found {
            let origin = self.origin(&path, &value);
            problems.push(Problem {
                key: path,
                origin,
                message: "unknown key (see /opt/kaloom/etc/podagent.toml for the valid ones)"
                    .into(),
            });
        }
    }
}

fn collect_unknown(dict: &Dict, prefix: &str, found: &mut BTreeMap<String, Value>) {
    for (name, value) in dict {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if find_key(&path).is_some() {
            continue;
        }
        match value {
            Value::Dict(_, inner) if TABLES.contains(&path.as_str()) => {
                collect_unknown(inner, &path, found);
            }
            _ => {
                found.insert(path, value.clone());
            }
        }
    }
}
