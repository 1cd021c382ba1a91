//! Errors of the CNI engine.
//!
//! A CNI failure usually surfaces in a Kubernetes Event read by an operator who has never seen
//! podagent's code, so every message names the operation, the plugin, the network, the netns and
//! what to do next, and carries the tail of the plugin's stderr (where plugins log).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The CNI command a plugin is run with (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Del,
    Version,
}

impl Op {
    /// The value of `CNI_COMMAND`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Add => "ADD",
            Op::Del => "DEL",
            Op::Version => "VERSION",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which plugin run failed: the context every per-plugin error carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRun {
    pub op: Op,
    /// The plugin type (the binary's file name).
    pub plugin: String,
    /// The CNI network (list) name.
    pub(crate) network: String,
    /// The sandbox netns, for the commands that have one.
    pub(crate) netns: Option<PathBuf>,
    /// The interface name, for the commands that have one.
    pub(crate) ifname: Option<String>,
}

impl fmt::Display for PluginRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CNI {} by plugin `{}` for network `{}`",
            self.op, self.plugin, self.network
        )?;
        if let Some(ifname) = &self.ifname {
            write!(f, ", interface {ifname}")?;
        }
        if let Some(netns) = &self.netns {
            write!(f, " in netns {}", netns.display())?;
        }
        Ok(())
    }
}

/// Everything that can go wrong in the CNI engine.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("attachment has an invalid {field} {value:?}: {reason}")]
    InvalidTarget {
        field: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error(
        "no usable CNI network config in {}: {problems}; install the node's CNI config there \
         (a .conf, .conflist or .json file) or point podagent at the right directory",
        dir.display()
    )]
    NoConfig { dir: PathBuf, problems: String },

    #[error(
        "the CNI config of network `{network}` cannot be used: {reason}; fix the network object \
         and re-add the entry"
    )]
    BadNetworkConfig { network: String, reason: String },

    #[error("cannot read the CNI conf dir {}: {source}", dir.display())]
    ReadConfDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{run}: no plugin binary `{}` in {}; install the plugin there or fix the CNI bin dirs \
         and vendor settings",
        run.plugin, dirs(searched)
    )]
    PluginNotFound {
        run: Box<PluginRun>,
        searched: Vec<PathBuf>,
    },

    #[error("{run}: {} is not executable; fix its permissions", path.display())]
    NotExecutable { run: Box<PluginRun>, path: PathBuf },

    #[error(
        "{run}: {} cannot start here: its interpreter (the dynamic loader it is linked against, \
         or the program on its #! line) is missing; when podagent runs in a container, mount the \
         node's root and set cni.host_root to it, so plugins run with the node's own libraries",
        path.display()
    )]
    MissingInterpreter { run: Box<PluginRun>, path: PathBuf },

    #[error("{run}: cannot start {}: {source}", path.display())]
    Spawn {
        run: Box<PluginRun>,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{run}: talking to the plugin failed: {source}{}", tail(stderr))]
    PluginIo {
        run: Box<PluginRun>,
        #[source]
        source: io::Error,
        stderr: String,
    },

    #[error(
        "{run}: no answer within {after:?}, so the plugin and its child processes were killed; \
         look at the plugin's own log, or raise the CNI timeout if it is legitimately slow{}",
        tail(stderr)
    )]
    Timeout {
        run: Box<PluginRun>,
        after: Duration,
        stderr: String,
    },

    #[error("{run}: the plugin was killed by signal {signal}{}", tail(stderr))]
    Killed {
        run: Box<PluginRun>,
        signal: i32,
        stderr: String,
    },

    #[error("{run}: {}", failure(*exit_code, *code, msg, details, stderr))]
    Failed {
        run: Box<PluginRun>,
        exit_code: i32,
        /// The CNI error code from the plugin's error object, when it printed one.
        code: Option<u64>,
        msg: String,
        details: String,
        stderr: String,
    },

    #[error(
        "{run}: the plugin printed more than {limit} bytes on stdout, which no CNI result \
         needs; it is broken or not a CNI plugin{}",
        tail(stderr)
    )]
    OutputTooLarge {
        run: Box<PluginRun>,
        limit: usize,
        stderr: String,
    },

    #[error(
        "{run}: the plugin exited 0 without printing a result, which CNI {} requires{}",
        run.op, tail(stderr)
    )]
    NoResult { run: Box<PluginRun>, stderr: String },

    #[error(
        "{run}: the plugin printed an invalid answer: {reason}{}",
        tail(stderr)
    )]
    BadOutput {
        run: Box<PluginRun>,
        reason: String,
        stderr: String,
    },

    #[error("CNI {op} is not available for network `{network}` (cniVersion {version}): {reason}")]
    Unsupported {
        op: Op,
        network: String,
        version: String,
        reason: &'static str,
    },

    #[error(
        "cannot {action} the CNI result cache {}: {source}; check that podagent's state \
         directory is writable by it and not tampered with",
        path.display()
    )]
    Cache {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "the CNI result cache {} is unusable ({reason}); remove it, then detach the interface \
         by hand if it still exists",
        path.display()
    )]
    CacheCorrupt { path: PathBuf, reason: String },
}

impl CniError {
    /// True when a plugin asked to be called again later (CNI error code 11).
    pub fn is_retry_later(&self) -> bool {
        matches!(self, CniError::Failed { code: Some(11), .. })
    }

    /// The CNI error code a plugin reported, if any.
    pub(crate) fn code(&self) -> Option<u64> {
        match self {
            CniError::Failed { code, .. } => *code,
            _ => None,
        }
    }

    pub(crate) fn cache(action: &'static str, path: &Path, source: io::Error) -> Self {
        CniError::Cache {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

fn dirs(searched: &[PathBuf]) -> String {
    let list: Vec<String> = searched.iter().map(|d| d.display().to_string()).collect();
    list.join(", ")
}

fn tail(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; plugin stderr: {stderr}")
    }
}

fn failure(exit_code: i32, code: Option<u64>, msg: &str, details: &str, stderr: &str) -> String {
    let mut text = match code {
        Some(11) => format!("the plugin asks to try again later (CNI code 11): {msg}"),
        Some(code) => format!("failed with CNI error code {code} (exit status {exit_code}): {msg}"),
        None => format!("failed with exit status {exit_code}: {msg}"),
    };
    if !details.is_empty() {
        text.push_str(" (");
        text.push_str(details);
        text.push(')');
    }
    text.push_str(&tail(stderr));
    text
}

/// Why `cni.host_root` cannot stand for the node's root.
#[derive(Debug, thiserror::Error)]
pub enum HostRootError {
    #[error(
        "cni.host_root {}: cannot read {}: {problem}; mount the node's / there, its /proc \
         included (hostPath / at /host), or leave cni.host_root unset on the node itself",
        root.display(),
        root.join("proc/self").display()
    )]
    NoProc { root: PathBuf, problem: String },

    #[error(
        "cni.host_root {}: podagent is process {own} in its own PID namespace but {seen} in the \
         node's /proc ({}): plugins chrooted there would look for themselves and for the pod's \
         netns under the wrong /proc/<pid>; run podagent in the node's PID namespace \
         (hostPID: true in the pod spec)",
        root.display(),
        root.join("proc").display()
    )]
    OtherPidNamespace {
        root: PathBuf,
        own: u32,
        seen: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Box<PluginRun> {
        Box::new(PluginRun {
            op: Op::Add,
            plugin: "bridge".into(),
            network: "green".into(),
            netns: Some("/var/run/netns/x".into()),
            ifname: Some("net9f27410725ab".into()),
        })
    }

    #[test]
    fn code_11_is_retry_later_and_says_so() {
        let err = CniError::Failed {
            run: run(),
            exit_code: 1,
            code: Some(11),
            msg: "busy".into(),
            details: String::new(),
            stderr: String::new(),
        };
        assert!(err.is_retry_later());
        let text = err.to_string();
        assert!(text.contains("try again later"), "{text}");
        assert!(
            text.contains("plugin `bridge`") && text.contains("/var/run/netns/x"),
            "{text}"
        );
    }

    #[test]
    fn other_codes_are_not_retry_later() {
        let err = CniError::Failed {
            run: run(),
            exit_code: 1,
            code: Some(7),
            msg: "bad config".into(),
            details: "field x".into(),
            stderr: "log line".into(),
        };
        assert!(!err.is_retry_later());
        assert_eq!(err.code(), Some(7));
        let text = err.to_string();
        assert!(
            text.contains("code 7") && text.contains("field x"),
            "{text}"
        );
        assert!(text.contains("plugin stderr: log line"), "{text}");
    }

    #[test]
    fn not_found_names_every_directory_searched() {
        let err = CniError::PluginNotFound {
            run: run(),
            searched: vec!["/opt/bridge/bin".into(), "/opt/cni/bin".into()],
        };
        let text = err.to_string();
        assert!(text.contains("`bridge`"), "{text}");
        assert!(text.contains("/opt/bridge/bin, /opt/cni/bin"), "{text}");
    }
}
