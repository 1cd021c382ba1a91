//! Test-only support for podagent: never shipped (this crate is `publish = false` and the RPM
//! packages only the `podagent` binary).
//!
//! Real parts only: everything a test needs is the real thing, started privately so tests
//! never touch the host's own daemons:
//! - `control_plane`: etcd, kube-apiserver and kube-controller-manager built from pinned Go
//!   modules, one per test process, with admin access for the test's kubelet and operator part;
//! - `node`: the one fixture for "a node with podagent" (runtime, CNI config, config, spawn,
//!   logs, the kubelet's part); `kubelet`: a node run by a real kubelet with a containerd of
//!   its own, for the cluster tier; `fault_proxy`: API faults a real server does not make on demand;
//! - `host`: private containerd and CRI-O (CRI) and dockerd instances and the local
//!   busybox/pause images;
//! - `journal`: a private journald and a stand-in for systemd's sd_notify socket; `nspawn`: a
//!   node booted with a real systemd as PID 1, for the installed service;
//! - `netns`: network namespaces that are removed even when a test fails; `node_root`: a
//!   node's root file system for a podagent container's `cni.host_root`;
//! - `prereq`: failing loudly, naming what is missing, instead of skipping; `rpm`: podagent's
//!   package as the tests build it;
//! - `binaries`: the workspace's own test programs, for tests of any package; `tool_cache`:
//!   where the test tools built from pinned Go modules (control plane, CRI-O) are.

pub mod binaries;
pub mod control_plane;
pub mod fault_proxy;
pub mod host;
pub mod journal;
pub mod kubelet;
pub mod netns;
pub mod node;
pub mod node_root;
pub mod nspawn;
pub mod prereq;
pub mod rpm;
pub mod tool_cache;

/// A loopback port nothing listens on right now, for a daemon to bind a moment later.
///
/// Taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), where outgoing
/// connections and `bind(:0)` take theirs: a port from inside it can be handed to some test's
/// client connection between this check and the daemon's bind (seen once: kube-apiserver's
/// "bind: address already in use" in a full run). Falls back to the kernel's choice when the
/// range leaves no room below it.
pub fn free_port() -> anyhow::Result<u16> {
    use anyhow::Context;
    use std::hash::{BuildHasher, RandomState};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const FLOOR: u16 = 10_000;
    // Handed out by this process already: free until its daemon binds, so not free to give again.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    if low > FLOOR {
        let seed = RandomState::new();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for attempt in 0u32..256 {
            let port = FLOOR + (seed.hash_one(attempt) % u64::from(low - FLOOR)) as u16;
            if given.contains(&port) {
                continue;
            }
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return Ok(port);
            }
        }
    }
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
