//! The command line: subcommands and the flags that override the configuration file.
//!
//! Flags are only one layer of the configuration (see the parent module); they are kept as
//! plain `Option<String>`s here so that every value, whatever its layer, goes through the same
//! validation and its errors name the flag it came from. The original Go podagent's option names
//! are accepted as aliases so that existing unit files and scripts keep working.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// `podagent [run|check|version] [flags]`.
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
        self.command.unwrap_or(Command::Run)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the agent (the default).
    Run,
    /// Check the configuration and every dependency, one line each; exit 0 only when all pass.
    Check,
    /// Print the version, git commit, build date and supported container runtimes.
    Version,
}

/// Flags accepted by every subcommand. Each overrides the matching configuration key.
#[derive(Debug, Clone, Default, Args)]
pub struct Flags {
    /// Configuration file [default: /opt/kaloom/etc/podagent.toml, skipped when absent].
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Name of this node, as the API server knows it (key `node_name`).
    #[arg(
        long = "node-name",
        visible_alias = "node",
        global = true,
        value_name = "NAME"
    )]
    pub(crate) node_name: Option<String>,
    /// Kubeconfig file (key `kube.kubeconfig`).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) kubeconfig: Option<String>,
    /// Pod annotation holding the network attachments (key `annotation_key`).
    #[arg(long = "annotation-key", global = true, value_name = "KEY")]
    pub(crate) annotation_key: Option<String>,
    /// Container runtime: auto, containerd, crio or docker (key `runtime.kind`).
    #[arg(
        long = "runtime",
        visible_alias = "container-type",
        global = true,
        value_name = "KIND"
    )]
    pub(crate) runtime: Option<String>,
    /// Runtime socket, `unix:///path` or a bare path (key `runtime.endpoint`).
    #[arg(long = "runtime-endpoint", global = true, value_name = "ENDPOINT")]
    pub(crate) runtime_endpoint: Option<String>,
    /// CRI-O socket; used when the runtime is crio (Go podagent compatibility).
    #[arg(long = "crio-endpoint", global = true, value_name = "ENDPOINT")]
    pub(crate) crio_endpoint: Option<String>,
    /// Docker socket; used when the runtime is docker (Go podagent compatibility).
    #[arg(long = "docker-endpoint", global = true, value_name = "ENDPOINT")]
    pub(crate) docker_endpoint: Option<String>,
    /// Directory holding the node's CNI configuration (key `cni.conf_dir`).
    #[arg(
        long = "cni-conf-dir",
        visible_alias = "cni-conf-path",
        global = true,
        value_name = "DIR"
    )]
    pub(crate) cni_conf_dir: Option<String>,
    /// Colon-separated CNI plugin directories (key `cni.bin_dirs`).
    #[arg(
        long = "cni-bin-dirs",
        visible_alias = "cni-bin-path",
        global = true,
        value_name = "DIRS"
    )]
    pub(crate) cni_bin_dirs: Option<String>,
    /// CNI vendor name: plugins are looked up in /opt/<vendor>/cni/bin first (key `cni.vendor`).
    #[arg(
        long = "cni-vendor",
        visible_alias = "cni-vendor-name",
        global = true,
        value_name = "NAME"
    )]
    pub(crate) cni_vendor: Option<String>,
    /// Directory for podagent's durable records (key `state_dir`).
    #[arg(long = "state-dir", global = true, value_name = "DIR")]
    pub(crate) state_dir: Option<String>,
    /// Log filter such as `info` or `podagent=debug` (key `log_level`; RUST_LOG wins).
    #[arg(long = "log-level", global = true, value_name = "LEVEL")]
    pub(crate) log_level: Option<String>,
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
        assert_eq!(cli.flags.node_name.as_deref(), Some("n1"));
        assert_eq!(cli.flags.cni_bin_dirs.as_deref(), Some("/a:/b"));
        assert_eq!(cli.flags.cni_conf_dir.as_deref(), Some("/c"));
        assert_eq!(cli.flags.cni_vendor.as_deref(), Some("kaloom"));
        assert_eq!(cli.flags.runtime.as_deref(), Some("crio"));
    }
}
