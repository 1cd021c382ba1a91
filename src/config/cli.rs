//! The command line: subcommands and the flags that override the configuration file.
//!
//! Flags are only one layer of the configuration (see the parent module); they are kept as
//! text here so that every value, whatever its layer, goes through the same validation and its
//! errors name the flag it came from. The flags are built from the key table, so a key's flag,
//! help line and Go podagent alias (kept so that existing unit files and scripts keep working)
//! are declared once, with the key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Arg, ArgMatches, Args, FromArgMatches, Parser, Subcommand};

use super::DEFAULT_CONFIG_FILE;
use super::keys::{self, KEYS};

/// `podagent [run|check|status|version] [flags]`.
#[derive(Debug, Parser)]
#[command(
    name = "podagent",
    version,
    about = "Hot-plugs network interfaces into running Kubernetes pods through the node's CNI plugin"
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub flags: Flags,
}

impl Cli {
    /// The subcommand to run; `run` when none was given.
    pub fn command(&self) -> Command {
        self.command.clone().unwrap_or(Command::Run)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the agent (the default).
    Run,
    /// Check the configuration and every dependency, one line each; exit 0 only when all pass.
    Check,
    /// Show the attachments podagent holds on this node and any drift from the pods' network
    /// namespaces (no API server needed; needs root). Exit 0 no drift, 1 drift, 2 cannot look.
    Status(StatusArgs),
    /// Print the version, git commit, build date and supported container runtimes.
    Version,
}

/// What `podagent status` shows and how.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct StatusArgs {
    /// Only this pod.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub pod: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = StatusFormat::Table)]
    pub output: StatusFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    /// Aligned columns, one line per interface.
    Table,
    /// The whole report as one JSON document.
    Json,
}

/// Flags accepted by every subcommand: `--config`, one flag per key that has one in the key
/// table (with the Go podagent's name as an alias), and the Go podagent's per-runtime endpoint
/// flags. Values stay text; the configuration layers type and check them.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// Configuration file; the default file is used (and may be absent) without it.
    pub config: Option<PathBuf>,
    /// Key path → the text given to its flag.
    values: BTreeMap<&'static str, String>,
    crio_endpoint: Option<String>,
    docker_endpoint: Option<String>,
}

const CONFIG: &str = "config";
const CRIO_ENDPOINT: &str = "crio-endpoint";
const DOCKER_ENDPOINT: &str = "docker-endpoint";

impl Flags {
    /// Each key set by a flag: its path, how to name the flag in a message, the text given.
    pub(super) fn values(&self) -> impl Iterator<Item = (&'static str, String, &str)> {
        self.values.iter().map(|(path, text)| {
            let name = keys::find(path)
                .and_then(|k| k.flag)
                .map_or_else(|| format!("--{path}"), |f| f.names());
            (*path, name, text.as_str())
        })
    }

    /// The text given to the flag of key `path`.
    pub(super) fn value(&self, path: &str) -> Option<&str> {
        self.values.get(path).map(String::as_str)
    }

    pub(super) fn crio_endpoint(&self) -> Option<&str> {
        self.crio_endpoint.as_deref()
    }

    pub(super) fn docker_endpoint(&self) -> Option<&str> {
        self.docker_endpoint.as_deref()
    }
}

impl Args for Flags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let text = |id: &'static str, value_name: &'static str, help: String| {
            Arg::new(id)
                .long(id)
                .global(true)
                .value_name(value_name)
                .help(help)
        };
        let mut cmd = cmd.arg(
            text(
                CONFIG,
                "FILE",
                format!("Configuration file [default: {DEFAULT_CONFIG_FILE}, skipped when absent]"),
            )
            .value_parser(clap::value_parser!(PathBuf)),
        );
        for key in KEYS {
            if let Some(flag) = key.flag {
                let help = format!("{} (key `{}`)", key.summary(), key.path);
                let mut arg = text(flag.long, flag.value_name, help);
                if let Some(alias) = flag.go_alias {
                    arg = arg.visible_alias(alias);
                }
                cmd = cmd.arg(arg);
            }
        }
        cmd.arg(text(
            CRIO_ENDPOINT,
            "ENDPOINT",
            "CRI-O socket; used when the runtime is crio (Go podagent compatibility)".into(),
        ))
        .arg(text(
            DOCKER_ENDPOINT,
            "ENDPOINT",
            "Docker socket; used when the runtime is docker (Go podagent compatibility)".into(),
        ))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for Flags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Flags::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let text = |id: &str| matches.get_one::<String>(id).cloned();
        if let Some(path) = matches.get_one::<PathBuf>(CONFIG) {
            self.config = Some(path.clone());
        }
        for key in KEYS {
            if let Some(value) = key.flag.and_then(|flag| text(flag.long)) {
                self.values.insert(key.path, value);
            }
        }
        self.crio_endpoint = text(CRIO_ENDPOINT).or(self.crio_endpoint.take());
        self.docker_endpoint = text(DOCKER_ENDPOINT).or(self.docker_endpoint.take());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("podagent").chain(args.iter().copied()))
            .expect("arguments parse")
    }

    #[test]
    fn no_subcommand_means_run() {
        assert_eq!(parse(&[]).command(), Command::Run);
    }

    #[test]
    fn flags_are_accepted_before_and_after_the_subcommand() {
        let after = parse(&["check", "--config", "/x.toml"]);
        assert_eq!(after.command(), Command::Check);
        assert_eq!(after.flags.config, Some(PathBuf::from("/x.toml")));
        let before = parse(&["--config", "/y.toml", "run"]);
        assert_eq!(before.flags.config, Some(PathBuf::from("/y.toml")));
    }

    #[test]
    fn go_podagent_option_names_are_aliases() {
        let cli = parse(&[
            "--node=n1",
            "--cni-bin-path=/a:/b",
            "--cni-conf-path=/c",
            "--cni-vendor-name=kaloom",
            "--container-type=crio",
        ]);
        assert_eq!(cli.flags.value("node_name"), Some("n1"));
        assert_eq!(cli.flags.value("cni.bin_dirs"), Some("/a:/b"));
        assert_eq!(cli.flags.value("cni.conf_dir"), Some("/c"));
        assert_eq!(cli.flags.value("cni.vendor"), Some("kaloom"));
        assert_eq!(cli.flags.value("runtime.kind"), Some("crio"));
    }
}
