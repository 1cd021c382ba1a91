//! The checks a key's value goes through before it is stored: one function per kind of value,
//! each returning the typed value or a message that the caller files under the key and the
//! value's origin. The key table picks the check for each key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::Value;
use serde::de::DeserializeOwned;

use super::RuntimeKind;
use super::layers::{Origin, Setting};
use crate::names::{check_label, check_subdomain, is_qualified_name};
use crate::networks::Mode;

const MAX_CONCURRENCY: u64 = 64;

/// The value as `T`; a value of another type is reported in figment's words ("invalid type:
/// found integer, expected a string").
fn typed<T: DeserializeOwned>(setting: &Setting<Value>) -> Result<T, String> {
    setting
        .value
        .deserialize::<T>()
        .map_err(|e| e.kind.to_string())
}

pub(super) fn text(setting: &Setting<Value>) -> Result<String, String> {
    typed(setting)
}

pub(super) fn absolute_path(setting: &Setting<Value>) -> Result<PathBuf, String> {
    let value = text(setting)?;
    absolute(&value)
}

/// An absolute path, or nothing when empty.
pub(super) fn optional_absolute_path(setting: &Setting<Value>) -> Result<Option<PathBuf>, String> {
    let value = text(setting)?;
    if value.is_empty() {
        Ok(None)
    } else {
        absolute(&value).map(Some)
    }
}

fn absolute(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!("must be an absolute path, got {value:?}"))
    }
}

pub(super) fn duration(setting: &Setting<Value>) -> Result<Duration, String> {
    let value = text(setting)?;
    let parsed = value
        .parse::<jiff::SignedDuration>()
        .map_err(|e| e.to_string())
        .and_then(|d| Duration::try_from(d).map_err(|e| e.to_string()));
    match parsed {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be longer than zero".into()),
        Err(e) => Err(format!(
            "{value:?} is not a duration such as \"500ms\", \"30s\" or \"5m\" ({e})"
        )),
    }
}

/// A DNS subdomain, lower-cased as the kubelet does with the host name.
pub(super) fn node_name(setting: &Setting<Value>) -> Result<String, String> {
    let value = text(setting)?;
    let name = value.to_ascii_lowercase();
    match check_subdomain(&name) {
        Ok(()) => Ok(name),
        Err(_) if setting.origin == Origin::Default => Err(format!(
            "the host name {value:?} is not a valid node name; set node_name"
        )),
        Err(reason) => Err(format!("not a valid node name: {reason}")),
    }
}

/// `name` or `prefix/name`, as Kubernetes accepts annotation keys.
pub(super) fn annotation_key(setting: &Setting<Value>) -> Result<String, String> {
    let value = text(setting)?;
    let valid = match value.rsplit_once('/') {
        Some((prefix, name)) => check_subdomain(prefix).is_ok() && is_qualified_name(name),
        None => is_qualified_name(&value),
    };
    if valid {
        Ok(value)
    } else {
        Err(format!("{value:?} is not a valid annotation key"))
    }
}

pub(super) fn log_level(setting: &Setting<Value>) -> Result<String, String> {
    let value = text(setting)?;
    match tracing_subscriber::EnvFilter::builder().parse(&value) {
        Ok(_) => Ok(value),
        Err(e) => Err(format!(
            "{value:?} is not a log filter such as \"info\" ({e})"
        )),
    }
}

pub(super) fn boolean(setting: &Setting<Value>) -> Result<bool, String> {
    typed(setting)
}

pub(super) fn network_mode(setting: &Setting<Value>) -> Result<Mode, String> {
    let value = text(setting)?;
    Mode::parse(&value).ok_or_else(|| format!("{value:?} is not one of {}", Mode::NAMES.join(", ")))
}

/// An `IP:port` to listen on (`[::1]:port` for IPv6), or empty for none.
pub(super) fn listen_address(
    setting: &Setting<Value>,
) -> Result<Option<std::net::SocketAddr>, String> {
    let value = text(setting)?;
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        format!(
            "{value:?} is not an IP address and port such as \"127.0.0.1:9754\" or \"[::1]:9754\""
        )
    })
}

/// A namespace name, or empty for none.
pub(super) fn namespace_or_empty(setting: &Setting<Value>) -> Result<Option<String>, String> {
    let value = text(setting)?;
    if value.is_empty() {
        return Ok(None);
    }
    check_label(&value).map_err(|reason| format!("not a namespace name: {reason}"))?;
    Ok(Some(value))
}

pub(super) fn runtime_kind(setting: &Setting<Value>) -> Result<RuntimeKind, String> {
    match text(setting)?.as_str() {
        "auto" => Ok(RuntimeKind::Auto),
        "containerd" => Ok(RuntimeKind::Containerd),
        "crio" | "cri-o" => Ok(RuntimeKind::Crio),
        "docker" => Ok(RuntimeKind::Docker),
        other => Err(format!(
            "{other:?} is not one of auto, containerd, crio, docker"
        )),
    }
}

/// A socket the runtime module accepts (`unix:///path` or `/path`); empty means the kind's
/// default sockets.
pub(super) fn endpoint(setting: &Setting<Value>) -> Result<Option<PathBuf>, String> {
    let value = text(setting)?;
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    crate::runtime::socket_path(Path::new(value))
        .map(Some)
        .map_err(|e| e.to_string())
}

pub(super) fn bin_dirs(setting: &Setting<Value>) -> Result<Vec<PathBuf>, String> {
    let dirs: Vec<String> = typed(setting)?;
    if dirs.is_empty() {
        return Err("needs at least one directory".into());
    }
    dirs.iter().map(|dir| absolute(dir)).collect()
}

/// A plain name: it becomes a path component.
pub(super) fn vendor(setting: &Setting<Value>) -> Result<Option<String>, String> {
    let value = text(setting)?;
    let value = value.trim();
    if value.is_empty() {
        Ok(None)
    } else if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value != "."
        && value != ".."
    {
        Ok(Some(value.to_string()))
    } else {
        Err(format!(
            "{value:?} must be a plain name: it becomes /opt/<vendor>/cni/bin"
        ))
    }
}

pub(super) fn env_names(setting: &Setting<Value>) -> Result<Vec<String>, String> {
    let names: Vec<String> = typed(setting)?;
    let bad: Vec<&String> = names
        .iter()
        .filter(|name| !is_env_name(name) || name.starts_with("CNI_"))
        .collect();
    if bad.is_empty() {
        Ok(names)
    } else {
        Err(format!(
            "{bad:?}: not variable names, or CNI_* names (podagent sets those itself)"
        ))
    }
}

pub(super) fn concurrency(setting: &Setting<Value>) -> Result<usize, String> {
    let n: u64 = typed(setting)?;
    match usize::try_from(n) {
        Ok(count) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(count),
        _ => Err(format!("must be between 1 and {MAX_CONCURRENCY}, got {n}")),
    }
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
