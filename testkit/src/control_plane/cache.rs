//! Where the control plane's binaries are: built by `scripts/setup-test-host.sh` from the
//! pinned Go module `testkit/controlplane/go.mod` into a directory keyed by the versions that
//! go.mod pins, once per machine. go.mod is the one place the versions live: the setup script
//! and this module both read them from it.

use std::path::PathBuf;

use crate::tool_cache;

const GO_MOD: &str = include_str!("../../controlplane/go.mod");

/// The cache the setup script builds into.
pub const CACHE_ROOT: &str = "/var/lib/podagent-test/control-plane";

/// The pinned Kubernetes release (`k8s.io/kubernetes` in go.mod), e.g. `v1.37.2`.
pub fn kubernetes_version() -> &'static str {
    required_version("k8s.io/kubernetes")
}

/// The pinned etcd release (`go.etcd.io/etcd/server/v3` in go.mod).
pub fn etcd_version() -> &'static str {
    required_version("go.etcd.io/etcd/server/v3")
}

/// `<CACHE_ROOT>/kubernetes-<v>-etcd-<v>/bin`, the directory the setup script fills.
pub fn bin_dir() -> PathBuf {
    PathBuf::from(CACHE_ROOT)
        .join(format!(
            "kubernetes-{}-etcd-{}",
            kubernetes_version(),
            etcd_version()
        ))
        .join("bin")
}

/// The path of one of `etcd`, `kube-apiserver`, `kube-controller-manager`, `kubectl`; panics
/// naming the setup script when it has not been built on this machine.
pub fn binary(name: &str) -> PathBuf {
    tool_cache::binary(
        &bin_dir(),
        name,
        &format!(
            "the control plane ({name} of Kubernetes {} / etcd {})",
            kubernetes_version(),
            etcd_version()
        ),
    )
}

/// The version go.mod requires for `module`.
fn required_version(module: &str) -> &'static str {
    tool_cache::required_version(GO_MOD, "testkit/controlplane/go.mod", module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_go_mod() {
        assert!(kubernetes_version().starts_with("v1."));
        assert!(etcd_version().starts_with("v3."));
        let dir = bin_dir();
        assert!(dir.ends_with(format!(
            "kubernetes-{}-etcd-{}/bin",
            kubernetes_version(),
            etcd_version()
        )));
    }
}
