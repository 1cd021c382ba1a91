//! The network namespace path inside a CRI runtime's verbose `PodSandboxStatus` info.
//!
//! CRI has no field for the sandbox's netns path; kubelet never needs it. Both containerd and
//! CRI-O put the sandbox's OCI runtime spec (and the sandbox process pid, when there is one: a
//! CRI-O sandbox without an infra container has none) into the verbose `info["info"]` JSON, and
//! the spec's `linux.namespaces[type=network].path` is the path the runtime itself handed to
//! CNI. Using it verbatim matters: the original podagent rewrote it and broke on runtimes that
//! pin namespaces elsewhere. When the spec names a network namespace without a path (the
//! sandbox process created it), `/proc/<pid>/ns/net` reaches the same one.
//!
//! Kept apart from the gRPC code so the parsing is unit-tested against recorded answers.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The key both containerd and CRI-O use in the verbose info map.
const INFO_KEY: &str = "info";

/// Why the verbose info yields no netns path.
#[derive(Debug, thiserror::Error)]
pub enum VerboseInfoError {
    #[error("the verbose status has no {INFO_KEY:?} entry (keys: {keys})")]
    MissingInfo { keys: String },
    #[error("the verbose {INFO_KEY:?} entry is not the expected JSON")]
    InvalidJson(#[source] serde_json::Error),
    #[error("the runtime spec has no network namespace: the pod uses the host network")]
    HostNetwork,
    #[error("neither a network namespace path nor a running sandbox pid is present")]
    NoNetnsPath,
}

#[derive(Debug, Deserialize)]
struct Info {
    #[serde(default)]
    pid: Option<i64>,
    #[serde(rename = "runtimeSpec", default)]
    runtime_spec: Option<Spec>,
}

#[derive(Debug, Deserialize)]
struct Spec {
    #[serde(default)]
    linux: Option<Linux>,
}

#[derive(Debug, Deserialize)]
struct Linux {
    #[serde(default)]
    namespaces: Vec<Namespace>,
}

#[derive(Debug, Deserialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: Option<String>,
}

/// The sandbox's network namespace path from a verbose `PodSandboxStatusResponse.info`.
pub fn sandbox_netns(info: &HashMap<String, String>) -> Result<PathBuf, VerboseInfoError> {
    let raw = info.get(INFO_KEY).ok_or_else(|| {
        let mut keys: Vec<&str> = info.keys().map(String::as_str).collect();
        keys.sort_unstable();
        VerboseInfoError::MissingInfo {
            keys: keys.join(", "),
        }
    })?;
    let info: Info = serde_json::from_str(raw).map_err(VerboseInfoError::InvalidJson)?;
    let namespaces = info
        .runtime_spec
        .and_then(|spec| spec.linux)
        .map(|linux| linux.namespaces);
    if let Some(namespaces) = namespaces {
        match namespaces.into_iter().find(|ns| ns.kind == "network") {
            // No network entry means the sandbox shares the node's namespace: `/proc/<pid>`
            // would point at the host, where podagent must never plug anything.
            None => return Err(VerboseInfoError::HostNetwork),
            Some(Namespace {
                path: Some(path), ..
            }) if !path.is_empty() => return Ok(PathBuf::from(path)),
            Some(_) => {}
        }
    }
    match info.pid {
        Some(pid) if pid > 0 => Ok(PathBuf::from(format!("/proc/{pid}/ns/net"))),
        _ => Err(VerboseInfoError::NoNetnsPath),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(json: &str) -> HashMap<String, String> {
        HashMap::from([(INFO_KEY.to_owned(), json.to_owned())])
    }

    /// A sandbox with an infra container (a pod sharing its PID namespace): pid, image and
    /// spec. The sandboxes of the real CRI-O in the integration tests have none (per-container
    /// PID, as the kubelet asks by default), and CRI-O then answers with the spec alone.
    #[test]
    fn crio_infra_container_info_yields_the_pinned_namespace_path() {
        let path = sandbox_netns(&info(include_str!("testdata/crio-sandbox-info.json")))
            .expect("CRI-O verbose info has a netns path");
        assert_eq!(
            path,
            PathBuf::from("/var/run/netns/5f3c5f0e-6a4a-4a0d-9a7c-3bb1c4e1d2a8")
        );
    }

    #[test]
    fn containerd_recorded_info_yields_the_cni_namespace_path() {
        let path = sandbox_netns(&info(include_str!("testdata/containerd-sandbox-info.json")))
            .expect("containerd verbose info has a netns path");
        assert_eq!(
            path,
            PathBuf::from("/var/run/netns/cni-3f1d5a0c-8e7b-2c4d-91aa-0b6e5d7c9f12")
        );
    }

    #[test]
    fn network_namespace_without_path_falls_back_to_the_sandbox_pid() {
        let json = r#"{"pid":4242,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"network"}]}}}"#;
        assert_eq!(
            sandbox_netns(&info(json)).ok(),
            Some(PathBuf::from("/proc/4242/ns/net"))
        );
    }

    #[test]
    fn pid_alone_is_enough_without_a_runtime_spec() {
        assert_eq!(
            sandbox_netns(&info(r#"{"pid":17}"#)).ok(),
            Some(PathBuf::from("/proc/17/ns/net"))
        );
    }

    #[test]
    fn host_network_sandbox_is_refused_even_with_a_pid() {
        let json = r#"{"pid":4242,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"ipc"}]}}}"#;
        assert!(matches!(
            sandbox_netns(&info(json)),
            Err(VerboseInfoError::HostNetwork)
        ));
    }

    #[test]
    fn stopped_sandbox_without_path_or_pid_is_an_error() {
        assert!(matches!(
            sandbox_netns(&info(r#"{"pid":0}"#)),
            Err(VerboseInfoError::NoNetnsPath)
        ));
        // Nothing to go on at all.
        assert!(matches!(
            sandbox_netns(&info("{}")),
            Err(VerboseInfoError::NoNetnsPath)
        ));
    }

    #[test]
    fn missing_or_garbled_info_is_an_error_not_a_panic() {
        let no_info = HashMap::from([("other".to_owned(), "{}".to_owned())]);
        assert!(matches!(
            sandbox_netns(&no_info),
            Err(VerboseInfoError::MissingInfo { keys }) if keys == "other"
        ));
        assert!(matches!(
            sandbox_netns(&info("not json")),
            Err(VerboseInfoError::InvalidJson(_))
        ));
        assert!(matches!(
            sandbox_netns(&info(r#"{"pid":"twelve"}"#)),
            Err(VerboseInfoError::InvalidJson(_))
        ));
    }
}
