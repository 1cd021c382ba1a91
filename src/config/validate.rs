//! Raw settings (each optional, with its origin) and their one-time validation into a
//! [`Config`]. Defaults live here, next to the checks, so the shipped `etc/podagent.toml`
//! can be tested against them.

use std::path::PathBuf;
use std::time::Duration;

use super::layers::{Layers, Origin, Setting};
use super::{
    CniSettings, Config, DEFAULT_KUBECONFIG, KubeSettings, Problem, ReconcileSettings, RuntimeKind,
    RuntimeSettings,
};

pub(super) const DEFAULT_ANNOTATION_KEY: &str = "networks";
pub(super) const DEFAULT_STATE_DIR: &str = "/var/lib/podagent";
pub(super) const DEFAULT_LOG_LEVEL: &str = "info";
pub(super) const DEFAULT_SHUTDOWN_GRACE: &str = "30s";
pub(super) const DEFAULT_RUNTIME_KIND: &str = "auto";
pub(super) const DEFAULT_RUNTIME_TIMEOUT: &str = "10s";
pub(super) const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
pub(super) const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";
pub(super) const DEFAULT_PLUGIN_TIMEOUT: &str = "30s";
pub(super) const DEFAULT_ENV_PASSTHROUGH: &[&str] = &[
    "_CNI_LOGGING_LEVEL",
    "_CNI_LOGGING_FILE",
    "_CNI_LOGGING_PREFIX",
];
pub(super) const DEFAULT_CONCURRENCY: u64 = 4;
pub(super) const DEFAULT_RETRY_BASE: &str = "1s";
pub(super) const DEFAULT_RETRY_CAP: &str = "5m";
pub(super) const DEFAULT_RESYNC_PERIOD: &str = "5m";
const MAX_CONCURRENCY: u64 = 64;

/// The merged layers, typed but not yet checked or defaulted.
pub(super) struct RawConfig {
    node_name: Option<Setting<String>>,
    annotation_key: Option<Setting<String>>,
    state_dir: Option<Setting<String>>,
    log_level: Option<Setting<String>>,
    shutdown_grace: Option<Setting<String>>,
    kubeconfig: Option<Setting<String>>,
    runtime_kind: Option<Setting<String>>,
    runtime_endpoint: Option<Setting<String>>,
    runtime_timeout: Option<Setting<String>>,
    cni_conf_dir: Option<Setting<String>>,
    cni_bin_dirs: Option<Setting<Vec<String>>>,
    cni_vendor: Option<Setting<String>>,
    cni_plugin_timeout: Option<Setting<String>>,
    cni_env_passthrough: Option<Setting<Vec<String>>>,
    concurrency: Option<Setting<u64>>,
    retry_base: Option<Setting<String>>,
    retry_cap: Option<Setting<String>>,
    resync_period: Option<Setting<String>>,
}

fn or_default<T>(setting: Option<Setting<T>>, default: T) -> Setting<T> {
    setting.unwrap_or(Setting {
        value: default,
        origin: Origin::Default,
    })
}

fn text(setting: Option<Setting<String>>, default: &str) -> Setting<String> {
    or_default(setting, default.to_string())
}

/// Collects the problems of one validation pass, each with its key and origin.
struct Checker<'a> {
    problems: &'a mut Vec<Problem>,
}

impl Checker<'_> {
    fn fail<T>(&mut self, key: &str, origin: &Origin, message: String) -> Option<T> {
        self.problems.push(Problem {
            key: key.into(),
            origin: origin.clone(),
            message,
        });
        None
    }

    fn absolute_path(&mut self, key: &str, setting: &Setting<String>) -> Option<PathBuf> {
        let path = PathBuf::from(&setting.value);
        if path.is_absolute() {
            Some(path)
        } else {
            self.fail(
                key,
                &setting.origin,
                format!("must be an absolute path, got {:?}", setting.value),
            )
        }
    }

    fn duration(&mut self, key: &str, setting: &Setting<String>) -> Option<Duration> {
        let parsed = setting
            .value
            .parse::<jiff::SignedDuration>()
            .map_err(|e| e.to_string())
            .and_then(|d| Duration::try_from(d).map_err(|e| e.to_string()));
        match parsed {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => self.fail(key, &setting.origin, "must be longer than zero".into()),
            Err(e) => self.fail(
                key,
                &setting.origin,
                format!(
                    "{:?} is not a duration such as \"500ms\", \"30s\" or \"5m\" ({e})",
                    setting.value
                ),
            ),
        }
    }

    fn node_name(&mut self, setting: &Setting<String>) -> Option<String> {
        let name = setting.value.to_ascii_lowercase();
        if is_dns_subdomain(&name) {
            Some(name)
        } else if setting.origin == Origin::Default {
            self.fail(
                "node_name",
                &setting.origin,
                format!(
                    "the host name {:?} is not a valid node name; set node_name",
                    setting.value
                ),
            )
        } else {
            self.fail(
                "node_name",
                &setting.origin,
                format!(
                    "{:?} is not a valid node name (DNS subdomain)",
                    setting.value
                ),
            )
        }
    }

    fn annotation_key(&mut self, setting: &Setting<String>) -> Option<String> {
        let valid = match setting.value.rsplit_once('/') {
            Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_name(name),
            None => is_qualified_name(&setting.value),
        };
        if valid {
            Some(setting.value.clone())
        } else {
            self.fail(
                "annotation_key",
                &setting.origin,
                format!("{:?} is not a valid annotation key", setting.value),
            )
        }
    }

    fn runtime_kind(&mut self, setting: &Setting<String>) -> Option<RuntimeKind> {
        match setting.value.as_str() {
            "auto" => Some(RuntimeKind::Auto),
            "containerd" => Some(RuntimeKind::Containerd),
            "crio" | "cri-o" => Some(RuntimeKind::Crio),
            "docker" => Some(RuntimeKind::Docker),
            other => self.fail(
                "runtime.kind",
                &setting.origin,
                format!("{other:?} is not one of auto, containerd, crio, docker"),
            ),
        }
    }

    /// `unix:///path` or `/path`; empty means the kind's default.
    fn endpoint(&mut self, setting: &Setting<String>) -> Option<Option<PathBuf>> {
        let value = setting.value.trim();
        if value.is_empty() {
            return Some(None);
        }
        let path = value.strip_prefix("unix://").unwrap_or(value);
        if path.starts_with('/') {
            Some(Some(PathBuf::from(path)))
        } else {
            self.fail(
                "runtime.endpoint",
                &setting.origin,
                format!("{value:?} is not a unix socket: use unix:///path or /path"),
            )
        }
    }

    fn bin_dirs(&mut self, setting: &Setting<Vec<String>>) -> Option<Vec<PathBuf>> {
        if setting.value.is_empty() {
            return self.fail(
                "cni.bin_dirs",
                &setting.origin,
                "needs at least one directory".into(),
            );
        }
        let mut dirs = Vec::new();
        for dir in &setting.value {
            let one = Setting {
                value: dir.clone(),
                origin: setting.origin.clone(),
            };
            dirs.push(self.absolute_path("cni.bin_dirs", &one)?);
        }
        Some(dirs)
    }

    fn vendor(&mut self, setting: &Setting<String>) -> Option<Option<String>> {
        let value = setting.value.trim();
        if value.is_empty() {
            Some(None)
        } else if value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value != "."
            && value != ".."
        {
            Some(Some(value.to_string()))
        } else {
            self.fail(
                "cni.vendor",
                &setting.origin,
                format!("{value:?} must be a plain name: it becomes /opt/<vendor>/cni/bin"),
            )
        }
    }

    fn env_names(&mut self, setting: &Setting<Vec<String>>) -> Option<Vec<String>> {
        let bad: Vec<&String> = setting
            .value
            .iter()
            .filter(|name| !is_env_name(name) || name.starts_with("CNI_"))
            .collect();
        if bad.is_empty() {
            Some(setting.value.clone())
        } else {
            self.fail(
                "cni.env_passthrough",
                &setting.origin,
                format!("{bad:?}: not variable names, or CNI_* names (podagent sets those itself)"),
            )
        }
    }

    fn concurrency(&mut self, setting: &Setting<u64>) -> Option<usize> {
        match usize::try_from(setting.value) {
            Ok(n) if (1..=MAX_CONCURRENCY).contains(&setting.value) => Some(n),
            _ => self.fail(
                "reconcile.concurrency",
                &setting.origin,
                format!(
                    "must be between 1 and {MAX_CONCURRENCY}, got {}",
                    setting.value
                ),
            ),
        }
    }

    fn log_level(&mut self, setting: &Setting<String>) -> Option<String> {
        match tracing_subscriber::EnvFilter::builder().parse(&setting.value) {
            Ok(_) => Some(setting.value.clone()),
            Err(e) => self.fail(
                "log_level",
                &setting.origin,
                format!(
                    "{:?} is not a log filter such as \"info\" ({e})",
                    setting.value
                ),
            ),
        }
    }
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// The name part of a Kubernetes annotation key.
fn is_qualified_name(name: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    name.len() <= 63
        && alnum(name.chars().next())
        && alnum(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl RawConfig {
    pub(super) fn collect(layers: &Layers, problems: &mut Vec<Problem>) -> RawConfig {
        RawConfig {
            node_name: layers.get("node_name", problems),
            annotation_key: layers.get("annotation_key", problems),
            state_dir: layers.get("state_dir", problems),
            log_level: layers.get("log_level", problems),
            shutdown_grace: layers.get("shutdown_grace", problems),
            kubeconfig: layers.get("kube.kubeconfig", problems),
            runtime_kind: layers.get("runtime.kind", problems),
            runtime_endpoint: layers.get("runtime.endpoint", problems),
            runtime_timeout: layers.get("runtime.timeout", problems),
            cni_conf_dir: layers.get("cni.conf_dir", problems),
            cni_bin_dirs: layers.get("cni.bin_dirs", problems),
            cni_vendor: layers.get("cni.vendor", problems),
            cni_plugin_timeout: layers.get("cni.plugin_timeout", problems),
            cni_env_passthrough: layers.get("cni.env_passthrough", problems),
            concurrency: layers.get("reconcile.concurrency", problems),
            retry_base: layers.get("reconcile.retry_base", problems),
            retry_cap: layers.get("reconcile.retry_cap", problems),
            resync_period: layers.get("reconcile.resync_period", problems),
        }
    }

    /// Applies defaults and checks every setting; `None` when any problem was found.
    pub(super) fn validate(self, host_name: &str, problems: &mut Vec<Problem>) -> Option<Config> {
        let mut c = Checker { problems };
        let kubeconfig_explicit = self.kubeconfig.is_some();
        let retry_base = text(self.retry_base, DEFAULT_RETRY_BASE);
        let retry_cap = text(self.retry_cap, DEFAULT_RETRY_CAP);

        let node_name = c.node_name(&text(self.node_name, host_name));
        let annotation_key = c.annotation_key(&text(self.annotation_key, DEFAULT_ANNOTATION_KEY));
        let state_dir = c.absolute_path("state_dir", &text(self.state_dir, DEFAULT_STATE_DIR));
        let log_level = c.log_level(&text(self.log_level, DEFAULT_LOG_LEVEL));
        let shutdown_grace = c.duration(
            "shutdown_grace",
            &text(self.shutdown_grace, DEFAULT_SHUTDOWN_GRACE),
        );
        let kubeconfig = c.absolute_path(
            "kube.kubeconfig",
            &text(self.kubeconfig, DEFAULT_KUBECONFIG),
        );
        let kind = c.runtime_kind(&text(self.runtime_kind, DEFAULT_RUNTIME_KIND));
        let endpoint = c.endpoint(&text(self.runtime_endpoint, ""));
        let runtime_timeout = c.duration(
            "runtime.timeout",
            &text(self.runtime_timeout, DEFAULT_RUNTIME_TIMEOUT),
        );
        let conf_dir = c.absolute_path(
            "cni.conf_dir",
            &text(self.cni_conf_dir, DEFAULT_CNI_CONF_DIR),
        );
        let bin_dirs = c.bin_dirs(&or_default(
            self.cni_bin_dirs,
            vec![DEFAULT_CNI_BIN_DIR.to_string()],
        ));
        let vendor = c.vendor(&text(self.cni_vendor, ""));
        let plugin_timeout = c.duration(
            "cni.plugin_timeout",
            &text(self.cni_plugin_timeout, DEFAULT_PLUGIN_TIMEOUT),
        );
        let env_passthrough = c.env_names(&or_default(
            self.cni_env_passthrough,
            DEFAULT_ENV_PASSTHROUGH
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ));
        let concurrency = c.concurrency(&or_default(self.concurrency, DEFAULT_CONCURRENCY));
        let base = c.duration("reconcile.retry_base", &retry_base);
        let cap = c.duration("reconcile.retry_cap", &retry_cap);
        let resync_period = c.duration(
            "reconcile.resync_period",
            &text(self.resync_period, DEFAULT_RESYNC_PERIOD),
        );
        if let (Some(base), Some(cap)) = (base, cap)
            && base > cap
        {
            c.fail::<()>(
                "reconcile.retry_cap",
                &retry_cap.origin,
                format!(
                    "{:?} is shorter than reconcile.retry_base {:?}",
                    retry_cap.value, retry_base.value
                ),
            );
        }

        Some(Config {
            node_name: node_name?,
            annotation_key: annotation_key?,
            state_dir: state_dir?,
            log_level: log_level?,
            shutdown_grace: shutdown_grace?,
            kube: KubeSettings {
                kubeconfig: kubeconfig?,
                kubeconfig_explicit,
            },
            runtime: RuntimeSettings {
                kind: kind?,
                endpoint: endpoint?,
                timeout: runtime_timeout?,
            },
            cni: CniSettings {
                conf_dir: conf_dir?,
                bin_dirs: bin_dirs?,
                vendor: vendor?,
                plugin_timeout: plugin_timeout?,
                env_passthrough: env_passthrough?,
            },
            reconcile: ReconcileSettings {
                concurrency: concurrency?,
                retry_base: base?,
                retry_cap: cap?,
                resync_period: resync_period?,
            },
        })
    }
}
