//! Test-only support for podagent: never shipped (this crate is `publish = false` and the RPM
//! packages only the `podagent` binary).
//!
//! Real parts only: everything a test needs is the real thing, started privately so tests
//! never touch the host's own daemons:
//! - `control_plane`: etcd, kube-apiserver and kube-controller-manager built from pinned Go
//!   modules, one per test process, with admin access for the test's kubelet and operator part;
//! - `node`: the one fixture for "a node with podagent" (runtime, CNI config, config, spawn,
//!   logs, the kubelet's part); `fault_proxy`: API faults a real server does not make on demand;
//! - `host`: private containerd and CRI-O (CRI) and dockerd instances and the local
//!   busybox/pause images;
//! - `journal`: a private journald and a stand-in for systemd's sd_notify socket; `nspawn`: a
//!   node booted with a real systemd as PID 1, for the installed service;
//! - `netns`: network namespaces that are removed even when a test fails;
//! - `prereq`: failing loudly, naming what is missing, instead of skipping; `rpm`: podagent's
//!   package as the tests build it;
//! - `binaries`: the workspace's own test programs, for tests of any package; `tool_cache`:
//!   where the test tools built from pinned Go modules (control plane, CRI-O) are.

pub mod binaries;
pub mod control_plane;
pub mod fault_proxy;
pub mod host;
pub mod journal;
pub mod netns;
pub mod node;
pub mod nspawn;
pub mod prereq;
pub mod rpm;
pub mod tool_cache;

/// A loopback port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    use anyhow::Context;
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
