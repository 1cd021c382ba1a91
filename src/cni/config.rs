//! Network configs: discovery of the primary config, lifting and per-plugin stdin.
//!
//! kactus-compatible "primary" mode uses the node's first config in lexical order, exactly as
//! the runtime does, so podagent's attachments go through the same plugin chain as the pod's
//! own interface. The node's CNI setup may be installed or changed after podagent starts, so
//! the directory is fingerprinted before every use and re-read when anything in it changed;
//! bad files are skipped with a warning naming the file and the reason, once per change.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{Map, Value};
use tracing::warn;

use super::error::CniError;

/// A CNI specification version (`major.minor.patch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SpecVersion(u32, u32, u32);

impl SpecVersion {
    /// `prevResult` on DEL exists from 0.4.0 on.
    pub(crate) const PREV_RESULT_ON_DEL: SpecVersion = SpecVersion(0, 4, 0);
    const OLDEST: SpecVersion = SpecVersion(0, 1, 0);
    const NEWEST: SpecVersion = SpecVersion(1, 1, 0);

    pub(crate) fn parse(text: &str) -> Option<SpecVersion> {
        let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Some(a)), Some(Some(b)), Some(Some(c)), None) => Some(SpecVersion(a, b, c)),
            _ => None,
        }
    }

    fn is_supported(self) -> bool {
        (Self::OLDEST..=Self::NEWEST).contains(&self)
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// A parsed network config list (a `.conf` is lifted into a list of one).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NetworkList {
    pub(crate) name: String,
    /// The version every plugin is run with (from `cniVersions` when present, 1.1).
    pub(crate) version: SpecVersion,
    /// Each plugin's config object as written, with its validated `type`.
    pub(crate) plugins: Vec<(String, Map<String, Value>)>,
    /// The exact bytes it was parsed from, cached so DEL can use what ADD used.
    pub(crate) bytes: Vec<u8>,
}

impl NetworkList {
    /// Parses a config list or a single plugin config (lifted); the error is the reason the
    /// file is unusable, for the warning and for [`CniError::NoConfig`].
    pub(crate) fn parse(bytes: &[u8]) -> Result<NetworkList, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|err| format!("not valid JSON: {err}"))?;
        let Value::Object(top) = value else {
            return Err("not a JSON object".to_owned());
        };
        let name = match top.get("name") {
            Some(Value::String(name)) if valid_network_name(name) => name.clone(),
            Some(Value::String(name)) => {
                return Err(format!(
                    "network name {name:?} must start with a letter or digit and contain only \
                     letters, digits, '_', '.' and '-'"
                ));
            }
            _ => return Err("no \"name\"".to_owned()),
        };
        let version = list_version(&top)?;
        let plugins = match top.get("plugins") {
            Some(Value::Array(list)) if list.is_empty() => return Err("no plugins".to_owned()),
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, p)| plugin_entry(p).map_err(|why| format!("plugin {i}: {why}")))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err("\"plugins\" is not a list".to_owned()),
            None => vec![plugin_entry(&Value::Object(top.clone()))?],
        };
        Ok(NetworkList {
            name,
            version,
            plugins,
            bytes: bytes.to_vec(),
        })
    }

    pub(crate) fn plugin_types(&self) -> impl Iterator<Item = &str> {
        self.plugins.iter().map(|(t, _)| t.as_str())
    }

    /// The stdin of plugin `index`: its config with the list's `name` and `cniVersion`
    /// replacing its own, `runtimeConfig` holding the capabilities it advertises that we have
    /// values for, and `prevResult` when given. Every other field is passed on untouched.
    pub(crate) fn plugin_stdin(
        &self,
        index: usize,
        capability_args: &Map<String, Value>,
        prev_result: Option<&Value>,
    ) -> Vec<u8> {
        let mut conf = self.plugins[index].1.clone();
        conf.insert("name".to_owned(), Value::String(self.name.clone()));
        conf.insert(
            "cniVersion".to_owned(),
            Value::String(self.version.to_string()),
        );
        let runtime_config: Map<String, Value> = match conf.get("capabilities") {
            Some(Value::Object(caps)) => caps
                .iter()
                .filter(|(_, enabled)| **enabled == Value::Bool(true))
                .filter_map(|(cap, _)| Some((cap.clone(), capability_args.get(cap)?.clone())))
                .collect(),
            _ => Map::new(),
        };
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".to_owned(), Value::Object(runtime_config));
        }
        if let Some(prev) = prev_result {
            conf.insert("prevResult".to_owned(), prev.clone());
        }
        // Serializing a map of JSON values cannot fail.
        serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
    }
}

/// The spec's rule for network names; also keeps them safe inside cache file names.
fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `cniVersions` (1.1) wins when it names a version we support: the highest such one.
fn list_version(top: &Map<String, Value>) -> Result<SpecVersion, String> {
    if let Some(Value::Array(versions)) = top.get("cniVersions")
        && let Some(best) = versions
            .iter()
            .filter_map(|v| v.as_str().and_then(SpecVersion::parse))
            .filter(|v| v.is_supported())
            .max()
    {
        return Ok(best);
    }
    let Some(text) = top.get("cniVersion").and_then(Value::as_str) else {
        return Err("no \"cniVersion\"".to_owned());
    };
    match SpecVersion::parse(text) {
        Some(version) if version.is_supported() => Ok(version),
        Some(_) => Err(format!(
            "cniVersion {text} is not supported (podagent speaks {} to {})",
            SpecVersion::OLDEST,
            SpecVersion::NEWEST
        )),
        None => Err(format!("cniVersion {text:?} is not a version")),
    }
}

fn plugin_entry(plugin: &Value) -> Result<(String, Map<String, Value>), String> {
    let Value::Object(conf) = plugin else {
        return Err("not a JSON object".to_owned());
    };
    match conf.get("type") {
        // The type is a file name looked up in CNI_PATH: a path would escape the bin dirs.
        Some(Value::String(t)) if !t.is_empty() && !t.contains('/') && t != "." && t != ".." => {
            Ok((t.clone(), conf.clone()))
        }
        Some(other) => Err(format!("\"type\" {other} is not a plugin file name")),
        None => Err("no \"type\"".to_owned()),
    }
}

/// The primary config of a conf dir, re-read whenever the directory's content changes.
#[derive(Debug)]
pub(crate) struct ConfDir {
    dir: PathBuf,
    loaded: Mutex<Option<Loaded>>,
}

#[derive(Debug)]
struct Loaded {
    fingerprint: Vec<FileStamp>,
    primary: Result<Arc<Primary>, String>,
}

/// The chosen config and the file it came from.
#[derive(Debug)]
pub(crate) struct Primary {
    pub(crate) file: PathBuf,
    pub(crate) list: NetworkList,
}

/// What identifies a file's content without reading it: a rename, an edit in place or a
/// replacement all change one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl ConfDir {
    pub(crate) fn new(dir: PathBuf) -> ConfDir {
        ConfDir {
            dir,
            loaded: Mutex::new(None),
        }
    }

    /// The primary config: the first candidate file in lexical order that parses.
    pub(crate) fn primary(&self) -> Result<Arc<Primary>, CniError> {
        let fingerprint = self.fingerprint()?;
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let current = match loaded.take() {
            Some(same) if same.fingerprint == fingerprint => same,
            _ => Loaded {
                primary: self.choose(&fingerprint),
                fingerprint,
            },
        };
        let primary = match &current.primary {
            Ok(primary) => Ok(Arc::clone(primary)),
            Err(problems) => Err(CniError::NoConfig {
                dir: self.dir.clone(),
                problems: problems.clone(),
            }),
        };
        *loaded = Some(current);
        primary
    }

    fn fingerprint(&self) -> Result<Vec<FileStamp>, CniError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CniError::ReadConfDir {
                    dir: self.dir.clone(),
                    source,
                });
            }
        };
        let mut stamps = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| CniError::ReadConfDir {
                dir: self.dir.clone(),
                source,
            })?;
            let path = entry.path();
            let candidate = path
                .extension()
                .is_some_and(|ext| ext == "conf" || ext == "conflist" || ext == "json");
            if !candidate {
                continue;
            }
            // Follows symlinks: installers often link configs into the directory.
            let meta = std::fs::metadata(&path).ok();
            stamps.push(FileStamp {
                modified: meta.as_ref().and_then(|m| m.modified().ok()),
                len: meta.as_ref().map_or(0, |m| m.len()),
                inode: meta.as_ref().map_or(0, std::os::unix::fs::MetadataExt::ino),
                path,
            });
        }
        stamps.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(stamps)
    }

    fn choose(&self, files: &[FileStamp]) -> Result<Arc<Primary>, String> {
        let mut problems = Vec::new();
        for stamp in files {
            let parsed = std::fs::read(&stamp.path)
                .map_err(|err| format!("unreadable: {err}"))
                .and_then(|bytes| NetworkList::parse(&bytes));
            match parsed {
                Ok(list) => {
                    return Ok(Arc::new(Primary {
                        file: stamp.path.clone(),
                        list,
                    }));
                }
                Err(reason) => {
                    warn!(file = %stamp.path.display(), %reason, "skipping CNI network config");
                    problems.push(format!("{}: {reason}", stamp.path.display()));
                }
            }
        }
        if problems.is_empty() {
            Err("no *.conf, *.conflist or *.json file".to_owned())
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stdin_of(list: &NetworkList, index: usize, caps: Value, prev: Option<Value>) -> Value {
        let Value::Object(caps) = caps else {
            panic!("caps must be an object")
        };
        serde_json::from_slice(&list.plugin_stdin(index, &caps, prev.as_ref())).unwrap()
    }

    #[test]
    fn single_conf_is_lifted_into_a_list_of_one() {
        let bytes = br#"{"cniVersion":"0.3.1","name":"green","type":"bridge","bridge":"br0"}"#;
        let list = NetworkList::parse(bytes).unwrap();
        assert_eq!(list.name, "green");
        assert_eq!(list.version, SpecVersion(0, 3, 1));
        assert_eq!(list.plugin_types().collect::<Vec<_>>(), ["bridge"]);
        assert_eq!(list.bytes, bytes);
        let stdin = stdin_of(&list, 0, json!({}), None);
        assert_eq!(stdin["bridge"], "br0");
        assert_eq!(stdin.get("runtimeConfig"), None);
        assert_eq!(stdin.get("prevResult"), None);
    }

    #[test]
    fn list_name_and_version_replace_the_plugins_own() {
        let list = NetworkList::parse(
            br#"{"cniVersion":"1.0.0","name":"blue","plugins":[
                {"type":"bridge","name":"other","cniVersion":"0.3.0","ipam":{"type":"host-local"}},
                {"type":"tuning","sysctl":{"net.core.somaxconn":"500"}}]}"#,
        )
        .unwrap();
        let prev = json!({"cniVersion": "1.0.0", "interfaces": []});
        let stdin = stdin_of(&list, 1, json!({}), Some(prev.clone()));
        assert_eq!(stdin["name"], "blue");
        assert_eq!(stdin["cniVersion"], "1.0.0");
        assert_eq!(stdin["prevResult"], prev);
        assert_eq!(stdin["sysctl"]["net.core.somaxconn"], "500");
        let first = stdin_of(&list, 0, json!({}), None);
        assert_eq!(
            (first["name"].as_str(), first["cniVersion"].as_str()),
            (Some("blue"), Some("1.0.0"))
        );
        assert_eq!(first["ipam"]["type"], "host-local");
    }

    #[test]
    fn runtime_config_is_advertised_capabilities_we_have_values_for() {
        let list = NetworkList::parse(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[
                {"type":"tuning","capabilities":{"mac":true,"ips":true,"bandwidth":false}},
                {"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        let caps = json!({"mac": "02:00:00:00:00:01", "bandwidth": {"rate": 1}});
        let tuning = stdin_of(&list, 0, caps.clone(), None);
        assert_eq!(tuning["runtimeConfig"], json!({"mac": "02:00:00:00:00:01"}));
        let portmap = stdin_of(&list, 1, caps, None);
        assert_eq!(portmap.get("runtimeConfig"), None);
    }

    #[test]
    fn cni_versions_picks_the_highest_supported() {
        let list = NetworkList::parse(
            br#"{"cniVersion":"1.0.0","cniVersions":["0.4.0","1.1.0","9.0.0"],"name":"n",
                 "plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert_eq!(list.version, SpecVersion(1, 1, 0));
    }

    #[test]
    fn unusable_configs_say_why() {
        let cases: [(&[u8], &str); 8] = [
            (b"{", "not valid JSON"),
            (b"[]", "not a JSON object"),
            (br#"{"cniVersion":"1.0.0","type":"bridge"}"#, "no \"name\""),
            (
                br#"{"cniVersion":"1.0.0","name":"-x","type":"bridge"}"#,
                "must start with",
            ),
            (br#"{"name":"n","type":"bridge"}"#, "no \"cniVersion\""),
            (
                br#"{"cniVersion":"2.0.0","name":"n","type":"bridge"}"#,
                "not supported",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "no plugins",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../sh"}]}"#,
                "plugin 0",
            ),
        ];
        for (bytes, reason) in cases {
            let err = NetworkList::parse(bytes).unwrap_err();
            assert!(
                err.contains(reason),
                "{:?}: {err}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn missing_conf_dir_is_no_config_not_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let conf = ConfDir::new(dir.path().join("net.d"));
        let err = conf.primary().unwrap_err();
        assert!(matches!(err, CniError::NoConfig { .. }), "{err}");
    }
}
