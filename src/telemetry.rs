//! Logging: `tracing` events to journald when podagent runs under systemd, to stderr otherwise.
//!
//! Operators read podagent's logs with `journalctl -u podagent`, and filter them by pod or
//! network (`journalctl POD=team/web-0 NETWORK=green`). That only works when events reach journald
//! natively with their fields as journal fields: the stderr stream systemd would capture
//! otherwise flattens them into text. So under systemd (`JOURNAL_STREAM` set, or the journald
//! socket present) events go straight to the journal with `SYSLOG_IDENTIFIER=podagent` and each
//! field upper-cased without prefix (`pod` → `POD`, `network` → `NETWORK`, `ifname` → `IFNAME`,
//! `sandbox` → `SANDBOX`). Elsewhere (a terminal, a container) they are human-readable lines on
//! stderr.
//!
//! The level comes from the configuration; `RUST_LOG`, when set, wins, so a one-off debugging
//! session needs no config edit.

use std::io::IsTerminal;
use std::path::Path;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The socket journald's native protocol listens on.
pub(crate) const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";
/// The identifier every journal entry carries, for `journalctl -t podagent`.
pub(crate) const SYSLOG_IDENTIFIER: &str = "podagent";

/// Where log events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    Stderr,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?} (from {from}): {source}")]
    Filter {
        filter: String,
        from: &'static str,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot install the log subscriber: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
}

/// Whether podagent's logs should go to journald: started by systemd with the journal as its
/// output stream, or on a host whose journald listens.
pub(crate) fn journald_expected() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() || Path::new(JOURNALD_SOCKET).exists()
}

/// syslog's meaning of the levels: routine messages are `info` (6), not tracing-journald's
/// default `notice` (5), so `journalctl -p notice` shows only what deserves attention.
fn priorities() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// The filter: `RUST_LOG` when set and not empty, else the configured level.
fn filter(log_level: &str, rust_log: Option<String>) -> Result<EnvFilter, TelemetryError> {
    let (filter, from) = match rust_log {
        Some(env) if !env.trim().is_empty() => (env, "RUST_LOG"),
        _ => (log_level.to_string(), "log_level"),
    };
    EnvFilter::builder()
        .parse(&filter)
        .map_err(|source| TelemetryError::Filter {
            filter,
            from,
            source,
        })
}

/// Installs the global subscriber. `prefer_journald` is false for interactive subcommands
/// (`check`), whose output belongs on the terminal.
pub fn init(log_level: &str, prefer_journald: bool) -> Result<Sink, TelemetryError> {
    let filter = filter(log_level, std::env::var("RUST_LOG").ok())?;
    let journald = if prefer_journald && journald_expected() {
        match tracing_journald::layer() {
            Ok(layer) => Some(layer),
            Err(e) => {
                // Fall back rather than run blind; the reason is logged once stderr is set up.
                eprintln!(
                    "podagent: journald socket {JOURNALD_SOCKET} unusable ({e}), logging to stderr"
                );
                None
            }
        }
    } else {
        None
    };
    match journald {
        Some(layer) => {
            let layer = layer
                .with_field_prefix(None)
                .with_syslog_identifier(SYSLOG_IDENTIFIER.to_string())
                .with_priority_mappings(priorities());
            tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init()?;
            Ok(Sink::Journald)
        }
        None => {
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        // Colours only for a person at a terminal, not in captured output.
                        .with_ansi(std::io::stderr().is_terminal()),
                )
                .try_init()?;
            Ok(Sink::Stderr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_level_is_used_without_rust_log() {
        let f = filter("podagent=debug", None).expect("valid");
        assert_eq!(f.to_string(), "podagent=debug");
    }

    #[test]
    fn rust_log_overrides_the_configured_level() {
        let f = filter("info", Some("trace".into())).expect("valid");
        assert_eq!(f.to_string(), "trace");
        let empty = filter("info", Some(" ".into())).expect("valid");
        assert_eq!(empty.to_string(), "info");
    }

    #[test]
    fn bad_rust_log_names_its_source() {
        let err = filter("info", Some("x=[[".into())).expect_err("invalid filter");
        assert!(err.to_string().contains("from RUST_LOG"), "{err}");
    }
}
