//! The table of configuration keys: the one place a setting is declared.
//!
//! Each row says everything about one key: its dotted path (which is also its TOML location and,
//! through [`env_var_name`], its `PODAGENT_*` variable), its built-in default, its command-line
//! flag with the Go podagent's name as an alias, the text that documents it, and how its value
//! is checked and stored into [`Config`]. The flag parser, the environment layer, the unknown-key
//! check, validation, `--help`, the shipped `etc/podagent.toml` and the README's key list are
//! all derived from this table, so adding a key means adding a row here and using the field it
//! sets; the tests at the bottom fail when the shipped file or the README drift from it.

use figment::value::Value;

use super::layers::Setting;
use super::validate::{
    absolute_path, annotation_key, bin_dirs, boolean, concurrency, duration, endpoint, env_names,
    listen_address, log_level, namespace_or_empty, network_mode, node_name, optional_absolute_path,
    runtime_kind, vendor,
};
use super::{Config, DEFAULT_KUBECONFIG};

/// A key's built-in default.
#[derive(Debug, Clone, Copy)]
pub(super) enum Builtin {
    Text(&'static str),
    Number(u64),
    Bool(bool),
    /// A list, written in the environment and on the command line as one string split on
    /// `separator`.
    List {
        items: &'static [&'static str],
        separator: char,
    },
    /// This machine's host name, lower-cased.
    HostName,
}

/// A key's command-line flag.
#[derive(Debug, Clone, Copy)]
pub(super) struct Flag {
    /// `--<long>`.
    pub(super) long: &'static str,
    /// The Go podagent's name for the same option, accepted as a visible alias.
    pub(super) go_alias: Option<&'static str>,
    pub(super) value_name: &'static str,
}

/// Checks a value (with its origin, for messages) and stores it into the configuration.
pub(super) type Apply = fn(&mut Config, &Setting<Value>) -> Result<(), String>;

/// One configuration key.
pub(super) struct Key {
    /// `table.name`, or `name` at the top level.
    pub(super) path: &'static str,
    pub(super) default: Builtin,
    pub(super) flag: Option<Flag>,
    /// What the key does, one or more lines; the first line is its summary.
    pub(super) doc: &'static str,
    pub(super) apply: Apply,
}

impl Key {
    /// The first line of the documentation.
    pub(super) fn summary(&self) -> &'static str {
        self.doc.lines().next().unwrap_or_default()
    }
}

impl Flag {
    /// `--cni-conf-dir/--cni-conf-path`: how a problem names the flag it came from.
    pub(super) fn names(&self) -> String {
        match self.go_alias {
            Some(alias) => format!("--{}/--{alias}", self.long),
            None => format!("--{}", self.long),
        }
    }
}

const fn flag(
    long: &'static str,
    go_alias: Option<&'static str>,
    value_name: &'static str,
) -> Flag {
    Flag {
        long,
        go_alias,
        value_name,
    }
}

/// Every key podagent understands, in the order the shipped file lists them. Anything else in
/// any layer is reported as unknown.
pub(super) static KEYS: &[Key] = &[
    Key {
        path: "node_name",
        default: Builtin::HostName,
        flag: Some(flag("node-name", Some("node"), "NAME")),
        doc: "This node's name as the API server knows it; only pods scheduled here are watched.",
        apply: |c, s| {
            c.node_name = node_name(s)?;
            Ok(())
        },
    },
    Key {
        path: "annotation_key",
        default: Builtin::Text("networks"),
        flag: Some(flag("annotation-key", None, "KEY")),
        doc: "The pod annotation that lists the network attachments to hot-plug.\n\
              Unset in npwg mode, it is k8s.v1.cni.cncf.io/networks.",
        apply: |c, s| {
            c.annotation_key = annotation_key(s)?;
            Ok(())
        },
    },
    Key {
        path: "state_dir",
        default: Builtin::Text("/var/lib/podagent"),
        flag: Some(flag("state-dir", None, "DIR")),
        doc: "Durable per-pod records and podagent's private CNI result cache.",
        apply: |c, s| {
            c.state_dir = absolute_path(s)?;
            c.cni.cache_dir = c.state_dir.join(super::CNI_CACHE_DIR);
            Ok(())
        },
    },
    Key {
        path: "log_level",
        default: Builtin::Text("info"),
        flag: Some(flag("log-level", None, "LEVEL")),
        doc: "Log filter: error, warn, info, debug, trace, or directives such as \"podagent=debug\".\n\
              RUST_LOG overrides it.",
        apply: |c, s| {
            c.log_level = log_level(s)?;
            Ok(())
        },
    },
    Key {
        path: "shutdown_grace",
        default: Builtin::Text("30s"),
        flag: None,
        doc: "After SIGTERM, how long in-flight CNI calls may run before podagent exits anyway.",
        apply: |c, s| {
            c.shutdown_grace = duration(s)?;
            Ok(())
        },
    },
    Key {
        path: "kube.kubeconfig",
        default: Builtin::Text(DEFAULT_KUBECONFIG),
        flag: Some(flag("kubeconfig", None, "FILE")),
        doc: "Kubeconfig with podagent's credentials (a token or a client certificate).\n\
              Exec plugins are not supported. When this default file is absent and the pod's\n\
              service-account files exist, the in-cluster configuration is used instead.",
        apply: |c, s| {
            c.kube.kubeconfig = absolute_path(s)?;
            c.kube.kubeconfig_explicit = !s.is_default();
            Ok(())
        },
    },
    Key {
        path: "runtime.kind",
        default: Builtin::Text("auto"),
        flag: Some(flag("runtime", Some("container-type"), "KIND")),
        doc: "Container runtime holding the pod sandboxes: auto, containerd, crio or docker.\n\
              \"auto\" uses the first socket that answers: containerd, CRI-O, then Docker.",
        apply: |c, s| {
            c.runtime.kind = runtime_kind(s)?;
            Ok(())
        },
    },
    Key {
        path: "runtime.endpoint",
        default: Builtin::Text(""),
        flag: Some(flag("runtime-endpoint", None, "ENDPOINT")),
        doc: "Runtime socket, \"unix:///path\" or \"/path\"; empty means the runtime's well-known socket.\n\
              The Go podagent's --crio-endpoint and --docker-endpoint flags set it too.",
        apply: |c, s| {
            c.runtime.endpoint = endpoint(s)?;
            Ok(())
        },
    },
    Key {
        path: "runtime.timeout",
        default: Builtin::Text("10s"),
        flag: None,
        doc: "Deadline of every call to the runtime.",
        apply: |c, s| {
            c.runtime.timeout = duration(s)?;
            Ok(())
        },
    },
    Key {
        path: "cni.conf_dir",
        default: Builtin::Text("/etc/cni/net.d"),
        flag: Some(flag("cni-conf-dir", Some("cni-conf-path"), "DIR")),
        doc: "Directory of the node's CNI configuration.\n\
              The first .conf, .conflist or .json file in lexical order that parses is used.",
        apply: |c, s| {
            c.cni.conf_dir = absolute_path(s)?;
            Ok(())
        },
    },
    Key {
        path: "cni.bin_dirs",
        default: Builtin::List {
            items: &["/opt/cni/bin"],
            separator: ':',
        },
        flag: Some(flag("cni-bin-dirs", Some("cni-bin-path"), "DIRS")),
        doc: "Plugin directories, searched after /opt/<vendor>/cni/bin.\n\
              Colon-separated on the command line and in the environment.",
        apply: |c, s| {
            c.cni.bin_dirs = bin_dirs(s)?;
            Ok(())
        },
    },
    Key {
        path: "cni.vendor",
        default: Builtin::Text(""),
        flag: Some(flag("cni-vendor", Some("cni-vendor-name"), "NAME")),
        doc: "Vendor name: when set, plugins are looked up in /opt/<vendor>/cni/bin first.\n\
              When empty, they are looked up in /opt/<plugin type>/bin first.",
        apply: |c, s| {
            c.cni.vendor = vendor(s)?;
            Ok(())
        },
    },
    Key {
        path: "cni.host_root",
        default: Builtin::Text(""),
        flag: Some(flag("cni-host-root", None, "DIR")),
        doc: "Where the node's root is mounted when podagent runs in a container (the DaemonSets: /host).\n\
              Plugins are then looked up under it and run chrooted into it, with the node's own\n\
              libraries and tools; cni.bin_dirs and the vendor dir are paths on the node.\n\
              podagent must share the node's PID namespace (hostPID), or it refuses to start.\n\
              Empty: podagent runs on the node and plugins run as they are.",
        apply: |c, s| {
            c.cni.host_root = optional_absolute_path(s)?;
            Ok(())
        },
    },
    Key {
        path: "cni.plugin_timeout",
        default: Builtin::Text("30s"),
        flag: None,
        doc: "Upper bound of one plugin run; a plugin still running after it is killed.",
        apply: |c, s| {
            c.cni.timeout = duration(s)?;
            Ok(())
        },
    },
    Key {
        path: "cni.env_passthrough",
        default: Builtin::List {
            items: &[
                "_CNI_LOGGING_LEVEL",
                "_CNI_LOGGING_FILE",
                "_CNI_LOGGING_PREFIX",
            ],
            separator: ',',
        },
        flag: None,
        doc: "Environment variables passed to plugins besides CNI_* and PATH (kactus reads these).",
        apply: |c, s| {
            c.cni.env_passthrough = env_names(s)?;
            Ok(())
        },
    },
    Key {
        path: "networks.mode",
        default: Builtin::Text("kactus"),
        flag: Some(flag("networks-mode", None, "MODE")),
        doc: "Where each network's CNI config comes from: kactus, direct or npwg.\n\
              \"kactus\" runs the node's primary config, which must be kactus (it resolves the network).\n\
              \"direct\" runs the config of the kaloom.com/v1 Network the entry names, on any primary CNI.\n\
              \"npwg\" reads the k8s.v1.cni.cncf.io/networks annotation and runs the config of the\n\
              k8s.cni.cncf.io/v1 NetworkAttachmentDefinition each element names (Multus' objects).",
        apply: |c, s| {
            c.networks.mode = network_mode(s)?;
            Ok(())
        },
    },
    Key {
        path: "networks.fallback_namespace",
        default: Builtin::Text("default"),
        flag: None,
        doc: "Direct mode: where a Network is looked for when neither the entry's nor the pod's namespace has it.\n\
              kactus read Networks from \"default\" only; empty disables the fallback.",
        apply: |c, s| {
            c.networks.fallback_namespace = namespace_or_empty(s)?;
            Ok(())
        },
    },
    Key {
        path: "networks.namespace_isolation",
        default: Builtin::Bool(false),
        flag: None,
        doc: "Direct and npwg modes: refuse entries that name a network object in a namespace other\n\
              than the pod's.",
        apply: |c, s| {
            c.networks.namespace_isolation = boolean(s)?;
            Ok(())
        },
    },
    Key {
        path: "networks.accept_other_primary",
        default: Builtin::Bool(false),
        flag: None,
        doc: "Kactus mode: accept a primary CNI config whose first plugin is not kactus.\n\
              Without it podagent warns at startup and `podagent check` fails: any other primary would be\n\
              asked for a second pod interface, not the named network. Set it only for a primary that\n\
              resolves networks itself as kactus does; otherwise use mode \"direct\".",
        apply: |c, s| {
            c.networks.accept_other_primary = boolean(s)?;
            Ok(())
        },
    },
    Key {
        path: "reconcile.concurrency",
        default: Builtin::Number(4),
        flag: None,
        doc: "How many pods may be reconciled at the same time (1 to 64).",
        apply: |c, s| {
            c.reconcile.concurrency = concurrency(s)?;
            Ok(())
        },
    },
    Key {
        path: "reconcile.retry_base",
        default: Builtin::Text("1s"),
        flag: None,
        doc: "Delay before retrying a failed reconcile, doubled per failure up to retry_cap.",
        apply: |c, s| {
            c.reconcile.retry_base = duration(s)?;
            Ok(())
        },
    },
    Key {
        path: "reconcile.retry_cap",
        default: Builtin::Text("5m"),
        flag: None,
        doc: "The longest delay between retries of a failed reconcile.",
        apply: |c, s| {
            c.reconcile.retry_cap = duration(s)?;
            Ok(())
        },
    },
    Key {
        path: "reconcile.resync_period",
        default: Builtin::Text("5m"),
        flag: None,
        doc: "Every pod is reconciled at least this often, to repair drift nobody announced.\n\
              Drift is, for example, an interface deleted by hand.",
        apply: |c, s| {
            c.reconcile.resync_period = duration(s)?;
            Ok(())
        },
    },
    Key {
        path: "metrics.listen",
        default: Builtin::Text("127.0.0.1:9754"),
        flag: Some(flag("metrics-listen", None, "ADDRESS")),
        doc: "Address of the HTTP listener serving /metrics (Prometheus), /healthz and /readyz.\n\
              An IP address and port, in the Prometheus exporter range by default; empty turns it off.\n\
              Loopback by default: the metrics name networks and the node's activity, nothing more.",
        apply: |c, s| {
            c.metrics_listen = listen_address(s)?;
            Ok(())
        },
    },
];

const ENV_PREFIX: &str = "PODAGENT_";

pub(super) fn find(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.path == path)
}

/// Whether `path` names a table that groups keys (`cni`), which is not a setting itself.
pub(super) fn is_table(path: &str) -> bool {
    KEYS.iter().any(|k| {
        k.path
            .split_once('.')
            .is_some_and(|(table, _)| table == path)
    })
}

/// `cni.conf_dir` → `PODAGENT_CNI__CONF_DIR`.
pub(super) fn env_var_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', "__").to_ascii_uppercase()
    )
}

/// `PODAGENT_CNI__CONF_DIR` → `cni.conf_dir`; `None` for variables that are not podagent's.
pub(super) fn key_path_of_env(name: &str) -> Option<String> {
    name.strip_prefix(ENV_PREFIX)
        .map(|rest| rest.to_ascii_lowercase().replace("__", "."))
}

impl Builtin {
    /// The default as a configuration value; `host_name` stands in for [`Builtin::HostName`].
    pub(super) fn value(&self, host_name: &str) -> Value {
        match self {
            Builtin::Text(text) => Value::from(text.to_string()),
            Builtin::Number(n) => Value::from(*n),
            Builtin::Bool(b) => Value::from(*b),
            Builtin::List { items, .. } => Value::from(
                items
                    .iter()
                    .map(|i| Value::from(i.to_string()))
                    .collect::<Vec<_>>(),
            ),
            Builtin::HostName => Value::from(host_name.to_string()),
        }
    }

    /// How a value given as text (environment, flag) becomes a value of this key's type.
    pub(super) fn typed(&self, text: &str) -> Value {
        match self {
            Builtin::Text(_) | Builtin::HostName => Value::from(text.to_string()),
            // figment's parser turns digits into a number and leaves anything else as text,
            // which then fails to deserialize with a message naming the expected type.
            Builtin::Number(_) | Builtin::Bool(_) => {
                text.parse::<Value>().unwrap_or_else(|never| match never {})
            }
            Builtin::List { separator, .. } => Value::from(
                text.split(*separator)
                    .filter(|item| !item.is_empty())
                    .map(|item| Value::from(item.to_string()))
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

#[cfg(test)]
pub(super) mod render {
    //! The documents derived from the table: the shipped configuration file and the README's
    //! key list. Tests compare them with the files in the repository.

    use super::{Builtin, Flag, KEYS, Key, env_var_name};

    const FILE_HEADER: &str = "\
# podagent configuration (/opt/kaloom/etc/podagent.toml).
#
# Every key is shown with its built-in default. Settings are layered, later wins:
#   built-in defaults -> this file (or `--config FILE`) -> PODAGENT_* environment variables
#   (nested keys joined with \"__\", e.g. PODAGENT_CNI__CONF_DIR) -> command-line flags.
# Unknown keys are errors. Durations are strings with a unit: \"500ms\", \"30s\", \"5m\", \"1h 30m\".
# Check a configuration with `podagent check --config FILE`.
";

    fn toml_value(default: &Builtin) -> String {
        let quoted = |s: &str| format!("\"{s}\"");
        match default {
            Builtin::Text(text) => quoted(text),
            Builtin::Number(n) => n.to_string(),
            Builtin::Bool(b) => b.to_string(),
            Builtin::List { items, .. } => {
                format!(
                    "[{}]",
                    items
                        .iter()
                        .map(|i| quoted(i))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            Builtin::HostName => quoted("node-1"),
        }
    }

    /// `--cni-conf-dir (alias --cni-conf-path)`.
    fn describe(flag: &Flag) -> String {
        match flag.go_alias {
            Some(alias) => format!("--{} (alias --{alias})", flag.long),
            None => format!("--{}", flag.long),
        }
    }

    fn name_in_table(key: &Key) -> &'static str {
        key.path.split_once('.').map_or(key.path, |(_, name)| name)
    }

    /// `etc/podagent.toml`.
    pub(in crate::config) fn toml_file() -> String {
        let mut out = FILE_HEADER.to_string();
        let mut table = None;
        for key in KEYS {
            let this_table = key.path.split_once('.').map(|(t, _)| t);
            if this_table != table {
                if let Some(t) = this_table {
                    out.push_str(&format!("\n[{t}]\n"));
                }
                table = this_table;
            } else {
                out.push('\n');
            }
            for line in key.doc.lines() {
                out.push_str(&format!("# {line}\n"));
            }
            if let Builtin::HostName = key.default {
                out.push_str("# Default: the host name, lower-cased.\n");
            }
            if let Some(flag) = &key.flag {
                out.push_str(&format!("# Flag: {}.\n", describe(flag)));
            }
            let line = format!("{} = {}", name_in_table(key), toml_value(&key.default));
            match key.default {
                Builtin::HostName => out.push_str(&format!("# {line}\n")),
                _ => out.push_str(&format!("{line}\n")),
            }
        }
        out
    }

    /// The README's table of keys.
    pub(in crate::config) fn readme_table() -> String {
        let mut out = String::from(
            "| key | default | flag | environment | meaning |\n|---|---|---|---|---|\n",
        );
        for key in KEYS {
            let default = match key.default {
                Builtin::HostName => "host name, lower-cased".to_string(),
                Builtin::Text("") => "empty".to_string(),
                ref other => format!("`{}`", toml_value(other)),
            };
            let flag = key
                .flag
                .map_or_else(String::new, |f| format!("`{}`", describe(&f)));
            out.push_str(&format!(
                "| `{}` | {default} | {flag} | `{}` | {} |\n",
                key.path,
                env_var_name(key.path),
                key.summary()
            ));
        }
        out
    }
}
