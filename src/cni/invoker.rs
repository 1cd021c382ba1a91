//! The plugin chains: what runs, in which order, with which `prevResult`, and what is cached.
//!
//! ADD runs the list in order, feeding each plugin the previous one's result; if any step
//! fails, DEL runs for the whole list (the spec's advice) so no half-made attachment is left
//! behind, then the ADD error is reported. DEL runs in reverse order with what the cache says
//! ADD used (config, `CNI_ARGS`, capability args, and the final result as `prevResult` from
//! 0.4.0 on), keeps going past a failing plugin so every plugin gets a chance to release its
//! part, and reports the first error; the cache entry is dropped only when all succeeded.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tracing::{debug, instrument, warn};

use super::cache::{Entry, ResultCache};
use super::config::{ConfDir, NetworkList, Primary, SpecVersion};
use super::env::{self, Lookup, ValidTarget};
use super::error::{CniError, Op, PluginRun};
use super::exec::{self, Invocation, Output};
use super::result::CniResult;
use super::{Cni, Settings, Target};
use crate::metrics::Metrics;

/// What `podagent check` shows about the primary network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSummary {
    pub name: String,
    pub cni_version: String,
    pub plugin_types: Vec<String>,
    pub file: PathBuf,
}

/// A plugin's answer to VERSION.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginVersion {
    #[serde(skip)]
    pub plugin: String,
    pub(crate) cni_version: String,
    pub supported_versions: Vec<String>,
}

/// The real [`Cni`]: runs the node's plugin binaries.
#[derive(Debug)]
pub struct Invoker {
    settings: Settings,
    conf: Arc<ConfDir>,
    cache: ResultCache,
    metrics: Metrics,
}

/// Runs filesystem work (directory scans, fsync) off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

impl Invoker {
    /// Touches nothing yet: the conf dir and the cache are read when first needed, so the
    /// agent can start before the node's CNI setup is installed.
    pub fn new(settings: Settings) -> Invoker {
        Invoker {
            conf: Arc::new(ConfDir::new(settings.conf_dir.clone())),
            cache: ResultCache::new(settings.cache_dir.clone()),
            settings,
            metrics: Metrics::new(),
        }
    }

    /// Counts every plugin run in `metrics` (by plugin type, command and outcome).
    pub(crate) fn with_metrics(self, metrics: Metrics) -> Invoker {
        Invoker { metrics, ..self }
    }

    async fn primary(&self) -> Result<Arc<Primary>, CniError> {
        let conf = Arc::clone(&self.conf);
        blocking(move || conf.primary()).await
    }

    /// The primary network config as it is now.
    pub async fn primary_config(&self) -> Result<NetworkSummary, CniError> {
        let primary = self.primary().await?;
        Ok(NetworkSummary {
            name: primary.list.name.clone(),
            cni_version: primary.list.version.to_string(),
            plugin_types: primary.list.plugin_types().map(str::to_owned).collect(),
            file: primary.file.clone(),
        })
    }

    /// Asks each plugin type of the primary config which CNI versions it speaks.
    pub async fn version(&self) -> Result<Vec<PluginVersion>, CniError> {
        let primary = self.primary().await?;
        self.versions(&primary.list).await
    }

    /// The same for the plugins of network `network`'s own config list (direct mode).
    pub(crate) async fn version_of(
        &self,
        network: &str,
        config: &str,
    ) -> Result<Vec<PluginVersion>, CniError> {
        let list =
            NetworkList::parse(config.as_bytes()).map_err(|reason| CniError::BadNetworkConfig {
                network: network.to_owned(),
                reason,
            })?;
        self.versions(&list).await
    }

    async fn versions(&self, list: &NetworkList) -> Result<Vec<PluginVersion>, CniError> {
        let mut seen = BTreeSet::new();
        let mut versions = Vec::new();
        for index in 0..list.plugins.len() {
            let plugin = list.plugins[index].0.clone();
            if !seen.insert(plugin.clone()) {
                continue;
            }
            let run = plugin_run(Op::Version, list, index, None);
            let stdin = json!({ "cniVersion": list.version.to_string() }).to_string();
            let out = self.exec(&run, None, stdin.into_bytes()).await?;
            let mut answer: PluginVersion =
                serde_json::from_slice(&out.stdout).map_err(|err| bad_output(&run, &out, err))?;
            answer.plugin = plugin;
            versions.push(answer);
        }
        Ok(versions)
    }

    /// Looks the plugin up and runs it.
    async fn exec(
        &self,
        run: &PluginRun,
        target: Option<(&ValidTarget, &str)>,
        stdin: Vec<u8>,
    ) -> Result<Output, CniError> {
        let dirs = env::search_dirs(&self.settings, &run.plugin);
        let binary = match env::find_plugin(&self.settings, &dirs, &run.plugin) {
            Ok(binary) => binary,
            Err(Lookup::Missing) => {
                return Err(CniError::PluginNotFound {
                    run: Box::new(run.clone()),
                    searched: dirs.iter().map(|dir| self.settings.seen(dir)).collect(),
                });
            }
            Err(Lookup::NotExecutable(path)) => {
                return Err(CniError::NotExecutable {
                    run: Box::new(run.clone()),
                    path,
                });
            }
        };
        let env = env::plugin_env(run.op, &dirs, target, &self.settings);
        let started = Instant::now();
        let outcome = exec::run(Invocation {
            run,
            binary: &binary,
            root: self.settings.host_root.as_deref(),
            env: &env,
            stdin,
            timeout: self.settings.timeout,
        })
        .await;
        self.metrics.plugin_run(
            &run.plugin,
            run.op.as_str(),
            outcome.is_ok(),
            started.elapsed(),
        );
        debug!(
            op = %run.op,
            plugin = %run.plugin,
            network = %run.network,
            binary = %binary.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = outcome.is_ok(),
            "CNI plugin run"
        );
        outcome
    }

    /// DEL for the whole list in reverse order; every plugin runs, the first error is kept.
    async fn del_list(
        &self,
        list: &NetworkList,
        target: &ValidTarget,
        cni_args: &str,
        capability_args: &Map<String, Value>,
        prev_result: Option<&Value>,
    ) -> Result<(), CniError> {
        // 0.3.x plugins do not expect a prevResult on DEL.
        let prev_result = prev_result.filter(|_| list.version >= SpecVersion::PREV_RESULT_ON_DEL);
        let mut first_error = None;
        for index in (0..list.plugins.len()).rev() {
            let run = plugin_run(Op::Del, list, index, Some(target));
            let stdin = list.plugin_stdin(index, capability_args, prev_result);
            if let Err(err) = self.exec(&run, Some((target, cni_args)), stdin).await {
                warn!(error = %err, "CNI DEL failed; continuing with the remaining plugins");
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// ADD for the whole list in order; the final plugin's result is the list's.
    async fn add_list(
        &self,
        list: &NetworkList,
        target: &ValidTarget,
    ) -> Result<CniResult, CniError> {
        let mut prev: Option<CniResult> = None;
        for index in 0..list.plugins.len() {
            let run = plugin_run(Op::Add, list, index, Some(target));
            let prev_raw = prev.as_ref().map(|r| &r.raw);
            let stdin = list.plugin_stdin(index, &target.capability_args, prev_raw);
            let out = self
                .exec(&run, Some((target, &target.cni_args)), stdin)
                .await?;
            prev = Some(add_result(&run, &out)?);
        }
        prev.ok_or_else(|| CniError::Unsupported {
            op: Op::Add,
            network: list.name.clone(),
            version: list.version.to_string(),
            reason: "the config lists no plugins",
        })
    }

    async fn cached(&self, target: &ValidTarget) -> Result<Option<(PathBuf, Entry)>, CniError> {
        let cache = self.cache.clone();
        let (sandbox_id, ifname) = (target.sandbox_id.clone(), target.ifname.clone());
        blocking(move || cache.find(&sandbox_id, &ifname)).await
    }
}

impl Cni for Invoker {
    fn add<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<CniResult, CniError>> {
        Box::pin(self.attach(target))
    }

    fn del<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<(), CniError>> {
        Box::pin(self.detach(target))
    }

    fn forget_sandbox<'a>(&'a self, sandbox_id: &'a str) -> BoxFuture<'a, Result<(), CniError>> {
        Box::pin(self.forget_cached(sandbox_id))
    }
}

impl Invoker {
    #[instrument(name = "add", skip_all, fields(sandbox = %a.sandbox_id, ifname = %a.ifname, network = %a.network))]
    async fn attach(&self, a: &Target) -> Result<CniResult, CniError> {
        let target = ValidTarget::new(a)?;
        let list = self.list_for(a).await?;
        if let Some((path, entry)) = self.cached(&target).await? {
            // The reconciler only adds what it saw missing, so an entry here is a leftover of
            // an interface removed behind our back: release what it still holds (an IPAM
            // lease, host-side links) before making a new one.
            warn!(sandbox = %target.sandbox_id, ifname = %target.ifname, network = %entry.network_name,
                "deleting a stale cached attachment before ADD");
            self.del_cached(&target, path, entry).await?;
        }
        let list = list.as_ref();
        let result = match self.add_list(list, &target).await {
            Ok(result) => result,
            Err(err) => {
                if let Err(rollback) = self.rollback(list, &target, None).await {
                    warn!(error = %rollback, "DEL after a failed ADD failed too");
                }
                return Err(err);
            }
        };
        let entry = Entry::new(
            &list.name,
            &target.sandbox_id,
            &target.ifname,
            &list.bytes,
            &target.cni_args,
            &target.capability_args,
            result.raw.clone(),
        );
        let cache = self.cache.clone();
        if let Err(err) = blocking(move || cache.write(&entry)).await {
            // Without a cache entry a later DEL could not do what this ADD did: undo it now.
            if let Err(rollback) = self.rollback(list, &target, Some(&result.raw)).await {
                warn!(error = %rollback, "DEL after a failed cache write failed too");
            }
            return Err(err);
        }
        Ok(result)
    }

    #[instrument(name = "del", skip_all, fields(sandbox = %a.sandbox_id, ifname = %a.ifname, network = %a.network))]
    async fn detach(&self, a: &Target) -> Result<(), CniError> {
        let target = ValidTarget::new(a)?;
        let Some((path, entry)) = self.cached(&target).await? else {
            // Nothing cached (attached by kactus, or before a crash): the attachment's config
            // and its own args, without prevResult.
            let list = self.list_for(a).await?;
            let (args, caps) = (&target.cni_args, &target.capability_args);
            return self
                .del_list(list.as_ref(), &target, args, caps, None)
                .await;
        };
        self.del_cached(&target, path, entry).await
    }

    /// The config list `target` names: its own, else the node's primary.
    async fn list_for(&self, target: &Target) -> Result<Listed, CniError> {
        match &target.config {
            Some(text) => NetworkList::parse(text.as_bytes())
                .map(Listed::Own)
                .map_err(|reason| CniError::BadNetworkConfig {
                    network: target.network.clone(),
                    reason,
                }),
            None => self.primary().await.map(Listed::Primary),
        }
    }

    async fn forget_cached(&self, sandbox_id: &str) -> Result<(), CniError> {
        env::validate_sandbox_id(sandbox_id)?;
        let cache = self.cache.clone();
        let id = sandbox_id.to_owned();
        let removed = blocking(move || cache.forget_sandbox(&id)).await?;
        debug!(sandbox = %sandbox_id, removed, "forgot cached CNI results");
        Ok(())
    }
}

impl Invoker {
    /// DEL with what the cached ADD used; the entry goes once every plugin succeeded.
    async fn del_cached(
        &self,
        target: &ValidTarget,
        path: PathBuf,
        entry: Entry,
    ) -> Result<(), CniError> {
        let list = NetworkList::parse(entry.config.as_bytes()).map_err(|reason| {
            CniError::CacheCorrupt {
                path: path.clone(),
                reason,
            }
        })?;
        let (args, caps) = (&entry.cni_args, &entry.capability_args);
        self.del_list(&list, target, args, caps, Some(&entry.result))
            .await?;
        let cache = self.cache.clone();
        blocking(move || cache.remove(&path)).await
    }

    /// DEL after a failed ADD, with the attachment's own args.
    async fn rollback(
        &self,
        list: &NetworkList,
        target: &ValidTarget,
        final_result: Option<&Value>,
    ) -> Result<(), CniError> {
        let (args, caps) = (&target.cni_args, &target.capability_args);
        self.del_list(list, target, args, caps, final_result).await
    }
}

/// A config list to run: a target's own, or the node's primary as the conf dir holds it.
enum Listed {
    Own(NetworkList),
    Primary(Arc<Primary>),
}

impl AsRef<NetworkList> for Listed {
    fn as_ref(&self) -> &NetworkList {
        match self {
            Listed::Own(list) => list,
            Listed::Primary(primary) => &primary.list,
        }
    }
}

fn plugin_run(op: Op, list: &NetworkList, index: usize, target: Option<&ValidTarget>) -> PluginRun {
    PluginRun {
        op,
        plugin: list.plugins[index].0.clone(),
        network: list.name.clone(),
        netns: target.map(|t| t.netns.clone()),
        ifname: target.map(|t| t.ifname.clone()),
    }
}

/// An ADD must print a result; an empty object is tolerated (kactus), nothing at all is not.
fn add_result(run: &PluginRun, out: &Output) -> Result<CniResult, CniError> {
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::NoResult {
            run: Box::new(run.clone()),
            stderr: out.stderr.clone(),
        });
    }
    CniResult::from_slice(&out.stdout).map_err(|reason| bad_output(run, out, reason))
}

fn bad_output(run: &PluginRun, out: &Output, reason: impl std::fmt::Display) -> CniError {
    let shown: String = String::from_utf8_lossy(&out.stdout)
        .chars()
        .take(120)
        .collect();
    CniError::BadOutput {
        run: Box::new(run.clone()),
        reason: format!("{reason} (stdout starts with {shown:?})"),
        stderr: out.stderr.clone(),
    }
}
