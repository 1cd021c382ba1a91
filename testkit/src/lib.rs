//! Test-only support for podagent: never shipped (this crate is `publish = false` and the RPM
//! packages only the `podagent` binary).
//!
//! Real parts, one fake: the only simulated outside system is the Kubernetes API server
//! (`kube_sim`), because no kube-apiserver can be installed on a test host. Everything else a
//! test needs is the real thing, started privately so tests never touch the host's own daemons:
//! - `host`: private containerd (CRI) and dockerd instances and the local busybox/pause images;
//! - `journal`: a private journald and a stand-in for systemd's sd_notify socket;
//! - `netns`: network namespaces that are removed even when a test fails;
//! - `prereq`: failing loudly, naming what is missing, instead of skipping.

pub mod binaries;
pub mod control_plane;
pub mod fault_proxy;
pub mod host;
pub mod journal;
pub mod kube_sim;
pub mod netns;
pub mod node;
pub mod prereq;
