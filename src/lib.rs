//! podagent: a node agent that hot-plugs network interfaces into running Kubernetes pods.
//!
//! It watches the pods of its node, reads each pod's `networks` annotation, finds the pod's
//! network namespace through the container runtime and runs the node's CNI plugin to add or
//! remove the matching `net<md5(name)[:12]>` interface, without restarting the pod.
//!
//! One module per noun (see `DESIGN` in the README): the pure decision (`plan`) sits in the
//! middle; every outside system (API server, runtime, CNI plugins, netns, systemd, filesystem)
//! sits behind its own module at the edge.
//!
//! The public surface is what the `podagent` binary, the integration tests, the benchmark and
//! the fuzz targets need, nothing more. The binary uses `config` (`Cli`, `Flags`, `Config`,
//! `EXIT_BAD_CONFIG`), `check::run`, `status::run`, `daemon::run`, `systemd::SdNotify`,
//! `telemetry::init` and `error_chain::render`. The tests of the real edges use `annotation`
//! (`parse`, `ifname`, the limits, and `npwg::parse` for the NPWG form, which the daemon does
//! not use yet), `plan` (the pure planner), `pod::PodRef`, `runtime` (`connect`, `CriRuntime`, the
//! `Runtime` trait, `Settings`, `Sandbox`), `netns::inspect`, `cni` (`Invoker`, the `Cni` trait,
//! `Target`, `Settings`, results and errors), `store` (`Store`, `PodRecord`) and
//! `kubeapi::PodView`; the hidden `fuzzing` module re-exports the parsers of raw outside input
//! for the fuzz targets. Everything else is `pub(crate)`, so the dead-code lint sees it.

pub mod annotation;
pub mod check;
pub mod cni;
pub mod config;
mod controller;
pub mod daemon;
pub mod error_chain;
pub mod kubeapi;
mod metrics;
mod names;
pub mod netns;
mod networks;
pub mod plan;
pub mod pod;
pub mod runtime;
pub mod status;
pub mod store;
pub mod systemd;
pub mod telemetry;

/// The parsers that take raw bytes from outside (an annotation any pod editor writes, a
/// plugin's stdout, a runtime's verbose sandbox info, a state file on disk), for the fuzz
/// targets and the corpus replay in `tests/hostile.rs`. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::cni::{CniResult, PluginError};
    pub use crate::runtime::verbose::{VerboseInfoError, sandbox_netns};
    pub use crate::store::FORMAT_VERSION;
    pub use crate::store::load::decode_record;
}
