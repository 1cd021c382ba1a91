//! podagent's configuration: one plain, validated [`Config`] built from four layers.
//!
//! Layers, lowest first: built-in defaults → TOML file (`/opt/kaloom/etc/podagent.toml`, or
//! `--config FILE`) → `PODAGENT_*` environment variables (nested keys joined with `__`, e.g.
//! `PODAGENT_CNI__CONF_DIR`) → command-line flags. The layers are merged into raw optional
//! values first and validated once; validation reports every problem together, each naming the
//! key and where its value came from, because an operator editing a unit file or a TOML file
//! should fix everything in one round. Unknown keys are errors: they are nearly always typos
//! that would otherwise silently leave a default in place.
//!
//! Durations are written as strings with a unit: `"500ms"`, `"30s"`, `"5m"`, `"1h 30m"`.

mod cli;
mod keys;
mod layers;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cli::{Cli, Command, Flags, StatusArgs, StatusFormat};
pub(crate) use layers::Origin;

/// The runtime kinds are the runtime module's own; configuration only chooses one.
pub(crate) use crate::runtime::RuntimeKind;

/// The configuration file read when `--config` is not given (absent is fine).
pub(crate) const DEFAULT_CONFIG_FILE: &str = "/opt/kaloom/etc/podagent.toml";
/// The kubeconfig written by the RPM's `create-kubeconfig.sh`.
pub(crate) const DEFAULT_KUBECONFIG: &str = "/opt/kaloom/etc/podagent-kubeconfig.yaml";
/// podagent's CNI result cache, under its state dir (never `/var/lib/cni/results`, where a
/// runtime's CNI GC could delete it).
const CNI_CACHE_DIR: &str = "cni-results";
/// The exit code for a bad configuration or command line (`EX_USAGE` from sysexits.h).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// The validated configuration. Every field has a value; nothing here needs checking again.
/// The modules that own an outside system define their settings; this holds them as they are.
/// `Default` is the empty configuration [`Config::load`] fills in, not a usable one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// This node's name: only pods with `spec.nodeName` equal to it are watched.
    pub(crate) node_name: String,
    /// The pod annotation that lists the network attachments.
    pub(crate) annotation_key: String,
    /// Where podagent keeps its durable per-pod records and CNI result cache.
    pub(crate) state_dir: PathBuf,
    /// A `tracing` filter directive (`RUST_LOG` overrides it).
    pub log_level: String,
    /// How long in-flight work may run after SIGTERM before podagent exits anyway.
    pub(crate) shutdown_grace: Duration,
    pub(crate) kube: KubeSettings,
    pub(crate) runtime: crate::runtime::Settings,
    pub(crate) cni: crate::cni::Settings,
    pub(crate) networks: crate::networks::Settings,
    pub reconcile: ReconcileSettings,
    /// Where the metrics and health listener binds; `None` turns it off.
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KubeSettings {
    pub(crate) kubeconfig: PathBuf,
    /// Whether the path was configured rather than defaulted: only a defaulted, absent
    /// kubeconfig may fall back to the in-cluster service account.
    pub(crate) kubeconfig_explicit: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// How many pods may be reconciled at the same time.
    pub(crate) concurrency: usize,
    /// First retry delay after a failed reconcile; doubled per failure up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Every pod is reconciled at least this often, to repair drift nobody announced.
    pub resync_period: Duration,
}

/// One bad setting: which key, where its value came from, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub(crate) key: String,
    pub(crate) origin: Origin,
    pub(crate) message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` (from {}): {}", self.key, self.origin, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse configuration file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid configuration:{}", list(problems))]
    Invalid { problems: Vec<Problem> },
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

impl Config {
    /// Loads the configuration from the default file (or `--config`), the process environment
    /// and `flags`.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let host_name = hostname::get()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        Config::load_from(
            flags,
            std::env::vars(),
            Path::new(DEFAULT_CONFIG_FILE),
            &host_name,
        )
    }

    /// [`Config::load`] with every input injected, for tests.
    pub fn load_from(
        flags: &Flags,
        env: impl IntoIterator<Item = (String, String)>,
        default_file: &Path,
        host_name: &str,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let layers = layers::Layers::build(flags, env, default_file, &mut problems)?;
        // Every key's default or configured value replaces the empty values before anyone
        // sees the configuration.
        let mut config = Config::default();
        for key in keys::KEYS {
            let setting = layers
                .get(key.path)
                .unwrap_or_else(|| layers::Setting::default_of(key.default.value(host_name)));
            if let Err(message) = (key.apply)(&mut config, &setting) {
                problems.push(Problem {
                    key: key.path.into(),
                    origin: setting.origin,
                    message,
                });
            }
        }
        // The annotation a mode reads by default is its own.
        if layers.get("annotation_key").is_none()
            && config.networks.mode == crate::networks::Mode::Npwg
        {
            crate::networks::NPWG_ANNOTATION.clone_into(&mut config.annotation_key);
        }
        let has_problem = |key: &str| problems.iter().any(|p| p.key == key);
        if !has_problem("reconcile.retry_base")
            && !has_problem("reconcile.retry_cap")
            && config.reconcile.retry_base > config.reconcile.retry_cap
        {
            let origin = layers
                .get("reconcile.retry_cap")
                .map_or(Origin::Default, |s| s.origin);
            problems.push(Problem {
                key: "reconcile.retry_cap".into(),
                origin,
                message: format!(
                    "{:?} is shorter than reconcile.retry_base {:?}",
                    config.reconcile.retry_cap, config.reconcile.retry_base
                ),
            });
        }
        layers.unknown_keys(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const HOST: &str = "Node-1";

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write temp file");
        file
    }

    fn no_default_file() -> PathBuf {
        PathBuf::from("/nonexistent/podagent-test/podagent.toml")
    }

    fn load(flags: &Flags, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(flags, env(vars), &no_default_file(), HOST)
    }

    /// The flags of a command line, parsed as the binary parses them.
    fn flags(args: &[&str]) -> Flags {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("podagent").chain(args.iter().copied()))
            .expect("flags parse")
            .flags
    }

    fn config_flag(path: impl Into<PathBuf>) -> Flags {
        let mut flags = Flags::default();
        flags.config = Some(path.into());
        flags
    }

    fn with_file(file: &tempfile::NamedTempFile) -> Flags {
        config_flag(file.path().to_path_buf())
    }

    fn problems(result: Result<Config, ConfigError>) -> Vec<Problem> {
        match result {
            Err(ConfigError::Invalid { problems }) => problems,
            other => panic!("expected invalid configuration, got {other:?}"),
        }
    }

    fn builtin_defaults() -> Config {
        load(&Flags::default(), &[]).expect("defaults are valid")
    }

    #[test]
    fn defaults_apply_when_nothing_is_configured() {
        let config = builtin_defaults();
        assert_eq!(config.node_name, "node-1", "host name, lower-cased");
        assert_eq!(config.annotation_key, "networks");
        assert_eq!(config.kube.kubeconfig, PathBuf::from(DEFAULT_KUBECONFIG));
        assert!(!config.kube.kubeconfig_explicit);
        assert_eq!(config.runtime.kind, RuntimeKind::Auto);
        assert_eq!(config.runtime.endpoint, None);
        assert_eq!(config.cni.conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(config.cni.bin_dirs, vec![PathBuf::from("/opt/cni/bin")]);
        assert_eq!(config.cni.vendor, None);
        assert_eq!(
            config.cni.env_passthrough,
            [
                "_CNI_LOGGING_LEVEL",
                "_CNI_LOGGING_FILE",
                "_CNI_LOGGING_PREFIX"
            ]
        );
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/podagent"));
        assert_eq!(config.reconcile.concurrency, 4);
        assert_eq!(config.reconcile.resync_period, Duration::from_secs(300));
    }

    #[test]
    fn npwg_mode_reads_the_npwg_annotation_unless_told_otherwise() {
        let npwg = load(&flags(&["--networks-mode", "npwg"]), &[]).expect("valid");
        assert_eq!(npwg.annotation_key, "k8s.v1.cni.cncf.io/networks");
        let chosen = load(
            &flags(&["--networks-mode", "npwg", "--annotation-key", "networks"]),
            &[],
        )
        .expect("valid");
        assert_eq!(chosen.annotation_key, "networks");
    }

    #[test]
    fn shipped_file_equals_the_builtin_defaults() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/podagent.toml");
        let flags = config_flag(shipped);
        let from_file = load(&flags, &[]).expect("the shipped file is valid");
        let mut expected = builtin_defaults();
        // The file names the kubeconfig, which makes it explicit; the path is the same.
        expected.kube.kubeconfig_explicit = true;
        assert_eq!(from_file, expected);
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_explicit_file_is_an_error() {
        assert!(load(&Flags::default(), &[]).is_ok());
        let flags = config_flag(no_default_file());
        match load(&flags, &[]) {
            Err(ConfigError::ReadFile { path, .. }) => assert_eq!(path, no_default_file()),
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn later_layers_win_file_then_env_then_flags() {
        let file = toml_file(
            "annotation_key = \"from-file\"\nstate_dir = \"/file\"\n[cni]\nconf_dir = \"/file/net.d\"\nvendor = \"filevendor\"\n",
        );
        let vars = [
            ("PODAGENT_STATE_DIR", "/env"),
            ("PODAGENT_CNI__CONF_DIR", "/env/net.d"),
        ];
        let config_path = file.path().to_str().unwrap();
        let given = flags(&["--config", config_path, "--cni-conf-dir", "/flag/net.d"]);
        let config = load(&given, &vars).expect("valid");
        assert_eq!(config.annotation_key, "from-file");
        assert_eq!(config.state_dir, PathBuf::from("/env"));
        assert_eq!(config.cni.conf_dir, PathBuf::from("/flag/net.d"));
        assert_eq!(config.cni.vendor.as_deref(), Some("filevendor"));
    }

    #[test]
    fn env_lists_are_split_and_numbers_parsed() {
        let vars = [
            ("PODAGENT_CNI__BIN_DIRS", "/a:/b"),
            ("PODAGENT_CNI__ENV_PASSTHROUGH", "FOO,BAR"),
            ("PODAGENT_RECONCILE__CONCURRENCY", "8"),
            ("PODAGENT_NODE_NAME", "1234"),
        ];
        let config = load(&Flags::default(), &vars).expect("valid");
        assert_eq!(
            config.cni.bin_dirs,
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(config.cni.env_passthrough, ["FOO", "BAR"]);
        assert_eq!(config.reconcile.concurrency, 8);
        assert_eq!(config.node_name, "1234", "a numeric name stays text");
    }

    #[test]
    fn cni_bin_path_flag_is_colon_separated() {
        let given = flags(&["--cni-bin-path", "/usr/lib/cni:/opt/cni/bin"]);
        let config = load(&given, &[]).expect("valid");
        assert_eq!(
            config.cni.bin_dirs,
            [PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")]
        );
    }

    #[test]
    fn endpoints_accept_unix_urls_and_bare_paths() {
        for (given, expected) in [
            (
                "unix:///run/containerd/containerd.sock",
                "/run/containerd/containerd.sock",
            ),
            ("/run/crio/crio.sock", "/run/crio/crio.sock"),
        ] {
            let config = load(&flags(&["--runtime-endpoint", given]), &[]).expect("valid");
            assert_eq!(config.runtime.endpoint, Some(PathBuf::from(expected)));
        }
    }

    #[test]
    fn go_endpoint_flags_follow_the_container_type() {
        let docker = flags(&[
            "--container-type=docker",
            "--crio-endpoint=/run/crio/crio.sock",
            "--docker-endpoint=unix:///var/run/docker.sock",
        ]);
        let config = load(&docker, &[]).expect("valid");
        assert_eq!(config.runtime.kind, RuntimeKind::Docker);
        assert_eq!(
            config.runtime.endpoint,
            Some(PathBuf::from("/var/run/docker.sock"))
        );

        let crio_only = flags(&["--crio-endpoint", "/run/crio/crio.sock"]);
        let config = load(&crio_only, &[]).expect("valid");
        assert_eq!(config.runtime.kind, RuntimeKind::Crio);
        let relative = problems(load(&flags(&["--crio-endpoint", "crio.sock"]), &[]));
        assert_eq!(relative[0].key, "runtime.endpoint");
        assert_eq!(relative[0].origin, Origin::Flag("--crio-endpoint".into()));

        let both = flags(&["--crio-endpoint", "/a", "--docker-endpoint", "/b"]);
        let found = problems(load(&both, &[]));
        assert_eq!(found[0].origin, Origin::Flag("--crio-endpoint".into()));
    }

    #[test]
    fn every_problem_is_reported_with_its_key_and_origin() {
        let file = toml_file(
            "state_dir = \"relative\"\n[reconcile]\nconcurrency = 0\nresync_period = \"soon\"\n",
        );
        let vars = [("PODAGENT_RUNTIME__KIND", "podman")];
        let config_path = file.path().to_str().unwrap();
        let given = flags(&["--config", config_path, "--cni-conf-path", "net.d"]);
        let found = problems(load(&given, &vars));
        let at = |key: &str| {
            found
                .iter()
                .find(|p| p.key == key)
                .unwrap_or_else(|| panic!("no problem for {key} in {found:?}"))
        };
        assert_eq!(found.len(), 5, "{found:?}");
        assert_eq!(
            at("state_dir").origin,
            Origin::File(file.path().to_path_buf())
        );
        assert_eq!(
            at("reconcile.concurrency").origin,
            Origin::File(file.path().to_path_buf())
        );
        assert!(at("reconcile.resync_period").message.contains("\"soon\""));
        assert_eq!(
            at("runtime.kind").origin,
            Origin::Env("PODAGENT_RUNTIME__KIND".into())
        );
        assert_eq!(
            at("cni.conf_dir").origin,
            Origin::Flag("--cni-conf-dir/--cni-conf-path".into())
        );
    }

    #[test]
    fn unknown_keys_are_errors_in_every_layer() {
        let file = toml_file("anotation_key = \"typo\"\n[cni]\nconfdir = \"/x\"\n");
        let vars = [("PODAGENT_RUNTIME__ENDPIONT", "/x")];
        let found = problems(load(&with_file(&file), &vars));
        let keys: Vec<(&str, &Origin)> =
            found.iter().map(|p| (p.key.as_str(), &p.origin)).collect();
        let in_file = Origin::File(file.path().to_path_buf());
        assert!(keys.contains(&("anotation_key", &in_file)), "{keys:?}");
        assert!(keys.contains(&("cni.confdir", &in_file)), "{keys:?}");
        assert!(
            keys.contains(&(
                "runtime.endpiont",
                &Origin::Env("PODAGENT_RUNTIME__ENDPIONT".into())
            )),
            "{keys:?}"
        );
    }

    #[test]
    fn wrong_types_are_reported_not_fatal() {
        let file = toml_file("annotation_key = 5\n[cni]\nbin_dirs = \"/opt/cni/bin\"\n");
        let found = problems(load(&with_file(&file), &[]));
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["annotation_key", "cni.bin_dirs"]);
    }

    #[test]
    fn unparsable_file_names_the_file() {
        let file = toml_file("[cni\n");
        match load(&with_file(&file), &[]) {
            Err(ConfigError::ParseFile { path, .. }) => assert_eq!(path, file.path()),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn retry_base_longer_than_cap_is_rejected() {
        let vars = [
            ("PODAGENT_RECONCILE__RETRY_BASE", "10m"),
            ("PODAGENT_RECONCILE__RETRY_CAP", "1m"),
        ];
        let found = problems(load(&Flags::default(), &vars));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key, "reconcile.retry_cap");
    }

    #[test]
    fn invalid_values_are_rejected() {
        for (var, value) in [
            ("PODAGENT_NODE_NAME", "bad_name!"),
            ("PODAGENT_ANNOTATION_KEY", "-bad-"),
            ("PODAGENT_LOG_LEVEL", "loud=[["),
            ("PODAGENT_RUNTIME__ENDPOINT", "tcp://1.2.3.4:2375"),
            ("PODAGENT_CNI__VENDOR", "../etc"),
            ("PODAGENT_CNI__ENV_PASSTHROUGH", "CNI_NETNS"),
            ("PODAGENT_CNI__PLUGIN_TIMEOUT", "0s"),
            ("PODAGENT_RECONCILE__CONCURRENCY", "many"),
            ("PODAGENT_KUBE__KUBECONFIG", "kubeconfig.yaml"),
        ] {
            let found = problems(load(&Flags::default(), &[(var, value)]));
            assert_eq!(found.len(), 1, "{var}={value}: {found:?}");
            assert_eq!(found[0].origin, Origin::Env(var.into()), "{var}");
        }
    }

    #[test]
    fn configured_kubeconfig_is_explicit() {
        let config = load(&flags(&["--kubeconfig", "/etc/kube.yaml"]), &[]).expect("valid");
        assert!(config.kube.kubeconfig_explicit);
    }

    #[test]
    fn invalid_host_name_asks_for_node_name() {
        let found = problems(Config::load_from(
            &Flags::default(),
            env(&[]),
            &no_default_file(),
            "",
        ));
        assert_eq!(found[0].key, "node_name");
        assert_eq!(found[0].origin, Origin::Default);
    }

    #[test]
    fn problem_message_names_key_and_source() {
        let found = problems(load(&Flags::default(), &[("PODAGENT_STATE_DIR", "x")]));
        assert_eq!(
            found[0].to_string(),
            "`state_dir` (from environment variable PODAGENT_STATE_DIR): must be an absolute path, got \"x\""
        );
    }

    /// Compares a file of the repository with what the key table renders for it; with
    /// `PODAGENT_BLESS=1` in the environment, writes the rendering instead.
    fn assert_rendered(relative: &str, actual: &str, rendered: &str) {
        if std::env::var_os("PODAGENT_BLESS").is_some() {
            return;
        }
        assert!(
            actual == rendered,
            "{relative} is not what the key table (src/config/keys.rs) renders; run the test \
             with PODAGENT_BLESS=1 to rewrite it, or make it read:\n{rendered}"
        );
    }

    #[test]
    fn shipped_file_is_rendered_from_the_key_table() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/podagent.toml");
        let rendered = keys::render::toml_file();
        if std::env::var_os("PODAGENT_BLESS").is_some() {
            std::fs::write(&path, &rendered).expect("write etc/podagent.toml");
        }
        let shipped = std::fs::read_to_string(&path).expect("read etc/podagent.toml");
        assert_rendered("etc/podagent.toml", &shipped, &rendered);
    }

    #[test]
    fn readme_key_list_is_rendered_from_the_key_table() {
        const BEGIN: &str = "<!-- keys: rendered from src/config/keys.rs -->\n";
        const END: &str = "<!-- end of keys -->\n";
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let readme = std::fs::read_to_string(&path).expect("read README.md");
        let (Some(start), Some(end)) = (readme.find(BEGIN), readme.find(END)) else {
            panic!("README.md has no key list between {BEGIN:?} and {END:?}");
        };
        let listed = &readme[start + BEGIN.len()..end];
        let rendered = keys::render::readme_table();
        if std::env::var_os("PODAGENT_BLESS").is_some() {
            let updated = format!(
                "{}{rendered}{}",
                &readme[..start + BEGIN.len()],
                &readme[end..]
            );
            std::fs::write(&path, updated).expect("write README.md");
        }
        assert_rendered("README.md's key list", listed, &rendered);
    }

    #[test]
    fn help_names_every_flag_its_alias_and_its_key() {
        use clap::CommandFactory;
        let help = <Cli as CommandFactory>::command()
            .render_long_help()
            .to_string();
        for key in keys::KEYS {
            let Some(flag) = key.flag else { continue };
            assert!(
                help.contains(&format!("--{} <{}>", flag.long, flag.value_name)),
                "{help}"
            );
            assert!(
                help.contains(&format!("{} (key `{}`)", key.summary(), key.path)),
                "{help}"
            );
            if let Some(alias) = flag.go_alias {
                assert!(help.contains(&format!("--{alias}")), "{help}");
            }
        }
    }

    #[test]
    fn every_key_has_an_environment_variable_that_sets_it() {
        for key in keys::KEYS {
            let var = keys::env_var_name(key.path);
            let text = match key.default {
                keys::Builtin::List { items, separator } => items.join(&separator.to_string()),
                keys::Builtin::Number(n) => n.to_string(),
                keys::Builtin::Bool(b) => b.to_string(),
                keys::Builtin::Text(text) => text.to_string(),
                keys::Builtin::HostName => "node-2".to_string(),
            };
            let from_env = load(&Flags::default(), &[(&var, &text)]).expect(&var);
            let mut expected = builtin_defaults();
            if key.path == "node_name" {
                expected.node_name = "node-2".into();
            }
            if key.path == "kube.kubeconfig" {
                expected.kube.kubeconfig_explicit = true;
            }
            assert_eq!(from_env, expected, "{var}={text}");
        }
    }
}
