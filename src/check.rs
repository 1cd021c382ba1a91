//! `podagent check`: what an operator runs after installing the RPM.
//!
//! Each dependency the daemon needs gets one line, `✓` or `✗`, with the detail that proves it
//! (the server URL, the runtime version, the CNI config file) or the reason it failed, phrased
//! so the fix is obvious. Checks use the same code paths as the daemon (the same client, the
//! same runtime connection, the same CNI invoker), so a passing check means the daemon will get
//! as far. The exit code is 0 only when every line is a `✓`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::cni::{Invoker, NetworkSummary};
use crate::config::{Config, DEFAULT_CONFIG_FILE, EXIT_BAD_CONFIG, Flags};
use crate::error_chain::render;
use crate::kubeapi::{
    self, Credentials, KubeClient, NODE_BOUND_POLICY, NetworkWatcher, PodWatcher, Speaks,
};
use crate::metrics::Metrics;
use crate::networks::{Catalog, Mode};
use crate::runtime::{self, Runtime};

/// No single check may hang the command: an unreachable server fails within this.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) passed: bool,
    pub(crate) what: &'static str,
    pub(crate) detail: String,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.passed { '✓' } else { '✗' };
        write!(f, "{mark} {}: {}", self.what, self.detail)
    }
}

fn line(what: &'static str, outcome: Result<String, String>) -> Line {
    let (passed, detail) = match outcome {
        Ok(detail) => (true, detail),
        Err(reason) => (false, reason),
    };
    Line {
        passed,
        what,
        detail,
    }
}

async fn bounded<T>(work: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(CHECK_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")))
}

/// Loads the configuration and runs every check, printing each line as it completes.
pub fn run(flags: &Flags) -> ExitCode {
    let config = match Config::load(flags) {
        Ok(config) => config,
        Err(e) => {
            println!("{}", line("config valid", Err(render(&e))));
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let file = match &flags.config {
        Some(path) => path.display().to_string(),
        None if Path::new(DEFAULT_CONFIG_FILE).exists() => DEFAULT_CONFIG_FILE.to_string(),
        None => "built-in defaults".to_string(),
    };
    println!(
        "{}",
        line(
            "config valid",
            Ok(format!("{file}, node {}", config.node_name))
        )
    );
    // Warnings (a world-readable kubeconfig) belong on the terminal too.
    let _ = crate::telemetry::init("warn", false);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            println!("{}", line("async runtime", Err(render(&e))));
            return ExitCode::FAILURE;
        }
    };
    let all_passed = runtime.block_on(checks(&config, |l| println!("{l}")));
    if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the checks after "config valid", reporting each line; true when all passed.
pub(crate) async fn checks(config: &Config, mut report: impl FnMut(&Line)) -> bool {
    let mut all_passed = true;
    let mut emit = |l: Line| {
        all_passed &= l.passed;
        report(&l);
    };

    let credentials = Credentials::resolve(&config.kube);
    let kube = bounded(async {
        kubeapi::connect(&credentials, &Metrics::new())
            .await
            .map_err(|e| render(&e))
    })
    .await;
    emit(line(
        "kubeconfig readable",
        kube.as_ref()
            .map(|k| kubeconfig_detail(&credentials, k))
            .map_err(Clone::clone),
    ));
    match &kube {
        Ok(kube) => {
            emit(line(
                "pods on this node listable",
                list_pods(config, kube).await,
            ));
            emit(line("events creatable", create_event(config, kube).await));
            emit(line(
                "identity speaks for this node",
                identity(config, kube).await,
            ));
            emit(line(
                "admission policy enforced",
                admission_policy(kube).await,
            ));
        }
        Err(_) => {
            let skipped = || Err("not checked: no usable kubeconfig".to_string());
            emit(line("pods on this node listable", skipped()));
            emit(line("events creatable", skipped()));
            emit(line("identity speaks for this node", skipped()));
            emit(line("admission policy enforced", skipped()));
        }
    }
    let catalog = match (config.networks.mode, kube.as_ref()) {
        (Mode::Kactus, _) => None,
        (Mode::Direct | Mode::Npwg, Err(_)) => {
            Some(Err("not checked: no usable kubeconfig".to_owned()))
        }
        (mode @ (Mode::Direct | Mode::Npwg), Ok(kube)) => {
            let watcher = NetworkWatcher::new(kube.clone(), mode);
            Some(bounded(async { watcher.list().await.map_err(|e| render(&e)) }).await)
        }
    };
    emit(line(
        "networks resolvable",
        networks(config.networks.mode, catalog.as_ref()),
    ));

    emit(line(
        "container runtime reachable",
        container_runtime(config).await,
    ));

    if let Some(root) = &config.cni.host_root {
        emit(line(
            "node root usable",
            config
                .cni
                .check_host_root()
                .map(|()| format!("{}, in the node's PID namespace", root.display()))
                .map_err(|e| render(&e)),
        ));
    }
    let invoker = Invoker::new(config.cni.clone());
    match config.networks.mode {
        Mode::Kactus => {
            let primary =
                bounded(async { invoker.primary_config().await.map_err(|e| render(&e)) }).await;
            let usable = primary.as_ref().map_err(Clone::clone).and_then(|p| {
                kactus_primary(p, config.networks.accept_other_primary)?;
                Ok(format!(
                    "network {}, type {}, cniVersion {}, file {}",
                    p.name,
                    p.plugin_types.join(" → "),
                    p.cni_version,
                    p.file.display()
                ))
            });
            emit(line("CNI primary config usable", usable));
            let plugins = match primary {
                Ok(_) => plugin_binaries(&invoker).await,
                Err(_) => Err("not checked: no usable CNI config".to_string()),
            };
            emit(line("CNI plugin binaries present", plugins));
        }
        mode @ (Mode::Direct | Mode::Npwg) => {
            let kind = mode.object_kind();
            emit(line(
                "CNI primary config usable",
                Ok(format!(
                    "not used in {} mode: each {kind}'s own config is run",
                    mode.as_str()
                )),
            ));
            let plugins = match catalog {
                Some(Ok(catalog)) => network_plugins(&invoker, &catalog, kind).await,
                _ => Err(format!(
                    "not checked: the {kind} objects could not be listed"
                )),
            };
            emit(line("CNI plugin binaries present", plugins));
        }
    }

    emit(line(
        "state dir writable",
        state_dir_writable(&config.state_dir),
    ));
    all_passed
}

/// In kactus mode the primary must be kactus: any other plugin would be asked for a second
/// pod interface, never the network the entry names.
pub(crate) fn kactus_primary(primary: &NetworkSummary, accepted: bool) -> Result<(), String> {
    match primary.plugin_types.first() {
        Some(first) if first != "kactus" && !accepted => Err(format!(
            "{} (network {}) runs `{first}` first, not kactus: in kactus mode podagent would ask \
             `{first}` for a second pod interface instead of the named network; set \
             networks.mode = \"direct\" to run each Network's own config, or \
             networks.accept_other_primary = true if this primary resolves networks as kactus does",
            primary.file.display(),
            primary.name
        )),
        _ => Ok(()),
    }
}

/// Where networks come from, and outside kactus mode whether podagent can read them
/// (`catalog`: the listed objects, `None` in kactus mode).
fn networks(mode: Mode, catalog: Option<&Result<Catalog, String>>) -> Result<String, String> {
    let catalog = match catalog {
        None => {
            return Ok("kactus mode: the node's primary CNI config resolves each network".into());
        }
        Some(listed) => listed.as_ref().map_err(Clone::clone)?,
    };
    let unusable: Vec<String> = catalog
        .iter()
        .filter_map(|((namespace, name), object)| match &object.config {
            Some(Err(reason)) => Some(format!("{namespace}/{name}: {reason}")),
            _ => None,
        })
        .collect();
    let on_disk = catalog.values().filter(|o| o.config.is_none()).count();
    let mut note = match unusable.len() {
        0 => String::new(),
        n => format!(
            "; {n} with an unusable spec.config (their entries get an InvalidNetwork Event): {}",
            unusable.join("; ")
        ),
    };
    if on_disk > 0 {
        note.push_str(&format!(
            "; {on_disk} without spec.config, resolved from the CNI conf dir when used"
        ));
    }
    Ok(format!(
        "{} mode: {} {} objects ({}) listable in all namespaces{note}",
        mode.as_str(),
        catalog.len(),
        mode.object_kind(),
        crate::kubeapi::api_version(mode),
    ))
}

/// Direct and npwg mode: every plugin type the usable `kind` objects' own configs run answers
/// VERSION (a definition resolved from the conf dir is read when used, not here). Each
/// object's list is asked only when it brings a type not asked yet.
async fn network_plugins(
    invoker: &Invoker,
    catalog: &Catalog,
    kind: &str,
) -> Result<String, String> {
    let mut asked = BTreeSet::new();
    let mut answered = BTreeMap::new();
    let mut failed = Vec::new();
    for ((namespace, name), object) in catalog {
        let Some(Ok(config)) = &object.config else {
            continue;
        };
        let types = crate::cni::plugin_types(config);
        if types.iter().all(|t| asked.contains(t)) {
            continue;
        }
        asked.extend(types);
        match bounded(async {
            invoker
                .version_of(name, config)
                .await
                .map_err(|e| render(&e))
        })
        .await
        {
            Ok(versions) => {
                for v in versions {
                    answered.entry(v.plugin).or_insert(v.cni_version);
                }
            }
            Err(error) => failed.push(format!("{kind} {namespace}/{name}: {error}")),
        }
    }
    if !failed.is_empty() {
        return Err(failed.join("; "));
    }
    if answered.is_empty() {
        return Ok(format!("no usable {kind} objects yet: no plugin to ask"));
    }
    let shown: Vec<String> = answered
        .iter()
        .map(|(plugin, version)| format!("{plugin} (cniVersion {version})"))
        .collect();
    Ok(format!("{} answered VERSION", shown.join(", ")))
}

fn kubeconfig_detail(credentials: &Credentials, kube: &KubeClient) -> String {
    let warning = match credentials {
        Credentials::Kubeconfig(path) if kubeapi::world_readable(path) => {
            " (warning: world-readable, chmod 600 it)"
        }
        _ => "",
    };
    format!("{credentials}, server {}{warning}", kube.url)
}

async fn list_pods(config: &Config, kube: &KubeClient) -> Result<String, String> {
    let watcher = PodWatcher::new(
        kube.clone(),
        &config.node_name,
        &config.annotation_key,
        None,
        Duration::from_secs(1),
    );
    let (pods, _) = bounded(async { watcher.list().await.map_err(|e| render(&e)) }).await?;
    Ok(format!(
        "{}: {} pods on node {}",
        kube.url,
        pods.len(),
        config.node_name
    ))
}

async fn create_event(config: &Config, kube: &KubeClient) -> Result<String, String> {
    bounded(async {
        kubeapi::can_create_events(kube, &config.node_name)
            .await
            .map_err(|e| render(&e))
    })
    .await?;
    Ok("server-side dry run of an events.k8s.io/v1 Event accepted".to_string())
}

/// Whether the credential is this node's own, the one the admission policy keeps to this
/// node's pods.
async fn identity(config: &Config, kube: &KubeClient) -> Result<String, String> {
    let identity = bounded(async { kubeapi::who_am_i(kube).await.map_err(|e| render(&e)) }).await?;
    let node = &config.node_name;
    let user = &identity.username;
    let fix = format!(
        "run create-kubeconfig.sh --node {node} and install the kubeconfig it writes on this node"
    );
    match identity.speaks {
        Speaks::ForNode(named) if named == *node => Ok(format!("{user} speaks for node {node}")),
        Speaks::ForNode(other) => Err(format!(
            "{user} speaks for node {other}, not for this node {node} (a kubeconfig copied from \
             another node?): {fix}"
        )),
        Speaks::ForNoNode => Err(format!(
            "{user} is shared by every node and speaks for none, so the admission policy cannot \
             keep it to this node's pods: {fix}"
        )),
        Speaks::Unknown => Err(format!(
            "{user} is not a podagent identity (kube-system/podagent-node-<node>, or \
             kube-system/podagent with a pod-bound token): {fix}"
        )),
    }
}

/// Whether the API server denies what podagent's credential must not do.
async fn admission_policy(kube: &KubeClient) -> Result<String, String> {
    let actions = bounded(async {
        kubeapi::node_bound_policy(kube)
            .await
            .map_err(|e| render(&e))
    })
    .await?;
    match actions {
        Some(actions) if actions.iter().any(|a| a == "Deny") => Ok(format!(
            "ValidatingAdmissionPolicy {NODE_BOUND_POLICY} bound with {}",
            actions.join(", ")
        )),
        Some(actions) => Err(format!(
            "ValidatingAdmissionPolicy {NODE_BOUND_POLICY} is bound with [{}], not Deny: podagent's \
             credential can change any pod; set validationActions: [Deny] in its binding",
            actions.join(", ")
        )),
        None => Err(format!(
            "ValidatingAdmissionPolicy {NODE_BOUND_POLICY} is not installed, so podagent's \
             credential can change any pod: kubectl apply -f \
             /opt/kaloom/share/podagent/manifests/podagent-admission-policy.yaml (Kubernetes 1.30 \
             or later)"
        )),
    }
}

async fn container_runtime(config: &Config) -> Result<String, String> {
    let settings = &config.runtime;
    bounded(async {
        let runtime = runtime::connect(settings).await.map_err(|e| render(&e))?;
        let version = runtime.version().await.map_err(|e| render(&e))?;
        Ok(format!(
            "{} ({} {}, API {}) at {}",
            version.kind,
            version.name,
            version.version,
            version.api_version,
            runtime.endpoint().display()
        ))
    })
    .await
}

async fn plugin_binaries(invoker: &Invoker) -> Result<String, String> {
    let versions = bounded(async { invoker.version().await.map_err(|e| render(&e)) }).await?;
    let found: Vec<String> = versions
        .iter()
        .map(|v| format!("{} (cniVersion {})", v.plugin, v.cni_version))
        .collect();
    Ok(format!("{} answered VERSION", found.join(", ")))
}

/// Creates the state dir if needed and proves a file can be written and removed in it.
fn state_dir_writable(dir: &Path) -> Result<String, String> {
    let probe = dir.join(format!(".podagent-check-{}", std::process::id()));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"check"))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_a_mark_and_the_detail() {
        assert_eq!(
            line("state dir writable", Ok("/var/lib/podagent".into())).to_string(),
            "✓ state dir writable: /var/lib/podagent"
        );
        assert_eq!(
            line("events creatable", Err("forbidden".into())).to_string(),
            "✗ events creatable: forbidden"
        );
    }

    #[test]
    fn state_dir_check_creates_the_dir_and_leaves_nothing_behind() {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("state");
        assert!(state_dir_writable(&dir).is_ok());
        assert_eq!(std::fs::read_dir(&dir).expect("dir exists").count(), 0);
    }

    #[test]
    fn unwritable_state_dir_names_the_path() {
        let err = state_dir_writable(Path::new("/proc/podagent-state")).expect_err("fails");
        assert!(err.starts_with("/proc/podagent-state"), "{err}");
    }
}
