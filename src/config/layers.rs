//! The configuration layers and where each value came from.
//!
//! figment merges the layers (TOML file → `PODAGENT_*` environment → flags); built-in defaults
//! are applied later, during validation, so that a value present here always has a real origin
//! that an error message can name: the file path, the environment variable or the flag.
//!
//! The environment and flag layers are built from the key table, so a value gets the key's type
//! (a colon-separated list becomes an array, a number stays text when the key is text) instead
//! of figment's guess, and the table is also what makes unknown keys an error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::keys::{self, env_var_name, key_path_of_env};
use super::{ConfigError, Flags, Problem};

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
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

const ENV_LAYER: &str = "environment";
const FLAG_LAYER: &str = "command-line flags";

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

/// A value given as text, typed as its key's default is; unknown keys stay text (they are
/// reported anyway).
fn typed(path: &str, text: &str) -> Value {
    keys::find(path).map_or_else(|| Value::from(text.to_string()), |k| k.default.typed(text))
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
        if let Some(path) = key_path_of_env(&name) {
            insert(&mut dict, &path, typed(&path, &text));
        }
    }
    Layer {
        metadata: Metadata::named(ENV_LAYER),
        dict,
    }
}

/// The flags as a layer, and for each key it sets the flag that set it (what error messages
/// name: `--cni-conf-dir/--cni-conf-path`, or a Go podagent endpoint flag).
fn flag_layer(
    flags: &Flags,
    problems: &mut Vec<Problem>,
) -> (Layer, BTreeMap<&'static str, String>) {
    let mut dict = Dict::new();
    let mut named = BTreeMap::new();
    for (key, flag_name, text) in flags.values() {
        insert(&mut dict, key, typed(key, text));
        named.insert(key, flag_name);
    }
    // The Go podagent took one endpoint flag per runtime and used the one matching
    // --container-type; without a type, a single endpoint flag also selects its runtime.
    let kind = flags.value("runtime.kind");
    if flags.value("runtime.endpoint").is_none() {
        let legacy = match (kind, flags.crio_endpoint(), flags.docker_endpoint()) {
            (Some("crio"), Some(crio), _) => Some(("crio", "--crio-endpoint", crio)),
            (Some("docker"), _, Some(docker)) => Some(("docker", "--docker-endpoint", docker)),
            (None, Some(crio), None) => Some(("crio", "--crio-endpoint", crio)),
            (None, None, Some(docker)) => Some(("docker", "--docker-endpoint", docker)),
            (None, Some(_), Some(_)) => {
                problems.push(Problem {
                    key: "runtime.endpoint".into(),
                    origin: Origin::Flag("--crio-endpoint".into()),
                    message: "both --crio-endpoint and --docker-endpoint given without \
                              --container-type: say which runtime to use"
                        .into(),
                });
                None
            }
            _ => None,
        };
        if let Some((runtime, flag_name, endpoint)) = legacy {
            if kind.is_none() {
                insert(&mut dict, "runtime.kind", Value::from(runtime.to_string()));
                named.insert("runtime.kind", flag_name.to_string());
            }
            insert(
                &mut dict,
                "runtime.endpoint",
                Value::from(endpoint.to_string()),
            );
            named.insert("runtime.endpoint", flag_name.to_string());
        }
    }
    let layer = Layer {
        metadata: Metadata::named(FLAG_LAYER),
        dict,
    };
    (layer, named)
}

/// A value together with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Setting<T> {
    pub(crate) value: T,
    pub(crate) origin: Origin,
}

impl<T> Setting<T> {
    /// A built-in default.
    pub(crate) fn default_of(value: T) -> Setting<T> {
        Setting {
            value,
            origin: Origin::Default,
        }
    }

    /// Whether no layer set the value.
    pub(crate) fn is_default(&self) -> bool {
        self.origin == Origin::Default
    }
}

/// The merged layers, queried key by key so that every bad value is reported, not only the
/// first one serde would stop at.
pub(crate) struct Layers {
    figment: Figment,
    /// Which flag set each key the flag layer holds.
    flag_names: BTreeMap<&'static str, String>,
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
        let (flag_layer, flag_names) = flag_layer(flags, problems);
        let figment = figment.merge(env_layer(env)).merge(flag_layer);
        Ok(Layers {
            figment,
            flag_names,
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
            // Every key the flag layer sets is named in `flag_names`.
            let name = self.flag_names.get(path).map_or("--config", String::as_str);
            return Origin::Flag(name.to_string());
        }
        Origin::Env(env_var_name(path))
    }

    /// The value of `path` if any layer sets it.
    pub(crate) fn get(&self, path: &str) -> Option<Setting<Value>> {
        let value = self.figment.find_value(path).ok()?;
        let origin = self.origin(path, &value);
        Some(Setting { value, origin })
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
        if keys::find(&path).is_some() {
            continue;
        }
        match value {
            Value::Dict(_, inner) if keys::is_table(&path) => {
                collect_unknown(inner, &path, found);
            }
            _ => {
                found.insert(path, value.clone());
            }
        }
    }
}
