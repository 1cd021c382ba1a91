//! The CNI engine: runs the node's CNI plugins to attach and detach pod interfaces.
//!
//! Every hot-plug ends in a plugin run, so this module has to be at least as correct as libcni
//! (the Go library runtimes use) and safer: no hung plugin may block the agent, no plugin error
//! may be lost, and a DEL must still work after an agent restart or a CNI config change.
//!
//! The parts, split by operation:
//! - `config`: finds the primary network config (first parseable file in lexical order,
//!   re-read when the directory changes), lifts a `.conf` into a one-plugin list and builds
//!   each plugin's stdin (`name`, `cniVersion`, `runtimeConfig`, `prevResult` injected);
//! - `env`: what a plugin sees besides stdin: validated `CNI_ARGS`, the minimal environment,
//!   the `CNI_PATH` search for its binary;
//! - `exec`: spawns one plugin in its own process group, with a timeout that kills the group;
//! - `result`: typed results (0.2.0 to 1.1.0) and plugin error objects;
//! - `cache`: the private result cache that lets DEL use exactly what ADD used;
//! - `invoker`: the chains (ADD in order with rollback, DEL in reverse, VERSION) behind the
//!   [`Cni`] trait.
//!
//! The contract is DESIGN.md §1 and §4; the CNI specification 1.0/1.1 decides where they are
//! silent. Which config an attachment runs is the caller's choice ([`Target::config`]): the
//! node's primary (kactus mode) or a network object's own (direct mode).

mod cache;
mod config;
mod env;
mod error;
mod exec;
mod invoker;
mod result;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;

pub use error::{CniError, HostRootError, Op, PluginRun};
pub use invoker::{Invoker, NetworkSummary, PluginVersion};
pub use result::{Cidr, CniResult, Dns, Interface, IpConfig, PluginError, Route};

/// How the invoker finds configs and plugins: the configuration's `cni.*` keys (`Default` is
/// empty, not usable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Directory holding the node's network configs (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// Plugin directories searched after the vendor directory (`/opt/cni/bin`).
    pub bin_dirs: Vec<PathBuf>,
    /// When set, `/opt/<vendor>/cni/bin` is searched first; otherwise `/opt/<plugin type>/bin`.
    pub vendor: Option<String>,
    /// Upper bound for one plugin run; the plugin's process group is killed after it.
    pub timeout: Duration,
    /// Variables handed to plugins unchanged besides `CNI_*` and `PATH`.
    pub env_passthrough: Vec<String>,
    /// podagent's own result cache directory (under its state dir, never
    /// `/var/lib/cni/results`, where a runtime's CNI GC could delete it).
    pub cache_dir: PathBuf,
    /// Where the node's root file system is mounted when podagent runs in a container: plugins
    /// are looked up under it and run chrooted into it, with the node's own libraries, tools
    /// and files, as the runtime would run them. The bin dirs and the vendor dir are then paths
    /// on the node. `None`: podagent runs on the node itself.
    pub host_root: Option<PathBuf>,
}

impl Settings {
    /// Whether the node's root at `host_root`, if set, is one plugins can run in: its `/proc`
    /// must be the node's and show podagent as itself, since plugins chrooted there find
    /// themselves and the pod's netns through `/proc/<pid>` (a DaemonSet without `hostPID`
    /// fails this; without the check every ADD would fail with a plugin's obscure `statfs`).
    pub fn check_host_root(&self) -> Result<(), HostRootError> {
        let Some(root) = &self.host_root else {
            return Ok(());
        };
        let seen =
            std::fs::read_link(root.join("proc/self")).map_err(|e| HostRootError::NoProc {
                root: root.clone(),
                problem: e.to_string(),
            })?;
        let own = std::process::id();
        if seen == Path::new(&own.to_string()) {
            Ok(())
        } else {
            Err(HostRootError::OtherPidNamespace {
                root: root.clone(),
                own,
                seen: seen.display().to_string(),
            })
        }
    }

    /// `path` (a path on the node) as podagent sees it, for lookups and messages.
    pub(crate) fn seen(&self, path: &Path) -> PathBuf {
        seen_in(self.host_root.as_deref(), path)
    }
}

/// `path` on the node as podagent sees it: under `root`, the node's root mounted in
/// podagent's container, when there is one.
fn seen_in(root: Option<&Path>, path: &Path) -> PathBuf {
    match root {
        Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_owned(),
    }
}

/// What a plugin run is aimed at: one network of one pod sandbox, with everything the plugin
/// needs to know about it. (What podagent writes down about an attachment is
/// `store::Attachment`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The pod sandbox id (`CNI_CONTAINERID`).
    pub sandbox_id: String,
    /// The sandbox's network namespace path (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The interface name inside the sandbox (`CNI_IFNAME`).
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// The attachment's network name from the pod annotation (`K8S_POD_NETWORK`).
    pub network: String,
    /// A MAC address already validated by the annotation module (`K8S_POD_IFMAC`, and the
    /// `mac` capability for plugins that advertise it).
    pub if_mac: Option<String>,
    /// The network's own config list, as JSON text (`direct` mode); `None`: the node's
    /// primary config. A DEL prefers what the cached ADD used over either.
    pub config: Option<String>,
    /// NPWG mode: what the element asks of the plugins, passed the way Multus passes it;
    /// `None` in the Kaloom modes.
    pub requested: Option<Requested>,
}

/// An NPWG element's requests as plugins receive them: `MAC=` (from [`Target::if_mac`]) and
/// `IP=` in `CNI_ARGS`, and the `ips`, `portMappings` and `bandwidth` capabilities for the
/// plugins that advertise them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    /// Addresses with prefix length, as the element gave them.
    pub ips: Vec<String>,
    pub port_mappings: Vec<serde_json::Value>,
    pub bandwidth: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Whether `bytes` is a config (list) the engine can run; the reason when not.
pub(crate) fn check_config(bytes: &[u8]) -> Result<(), String> {
    config::NetworkList::parse(bytes).map(drop)
}

/// The plugin types a config list runs, in order; none when it does not parse.
pub(crate) fn plugin_types(config: &str) -> Vec<String> {
    config::NetworkList::parse(config.as_bytes())
        .map(|list| list.plugin_types().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The CNI operations the reconciler needs, so it can be unit-tested against a fake.
///
/// The futures are boxed and `Send`, so the reconciler holds the engine as `Arc<dyn Cni>` like
/// every other edge and reconciles run on any runtime worker; one allocation per call is
/// nothing next to a plugin process.
pub trait Cni: Send + Sync {
    /// Attaches the interface; returns the final result of the plugin chain. Call it only for
    /// an interface missing from the netns: plugins refuse an existing one, and the DEL that
    /// follows any failed ADD then removes it. A target still cached from an earlier ADD (its
    /// interface was deleted by hand) is DELeted first, so its IPAM lease is released.
    fn add<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<CniResult, CniError>>;

    /// Detaches the interface; succeeds when it is already gone or the netns no longer exists.
    fn del<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<(), CniError>>;

    /// Drops what is remembered about a sandbox that is gone (the runtime's own teardown
    /// removed its netns). Fakes may keep this default, which remembers nothing.
    fn forget_sandbox<'a>(&'a self, sandbox_id: &'a str) -> BoxFuture<'a, Result<(), CniError>> {
        let _ = sandbox_id;
        Box::pin(async { Ok(()) })
    }
}
