//! Prerequisite checks for tests that use real components.
//!
//! A test whose prerequisites are missing must fail with a message naming them, never pass
//! silently or skip: a green run has to mean the real path was exercised.

use std::path::Path;

/// Panics unless the test runs as root (netns, CNI plugins and runtimes all need it).
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (network namespaces, CNI plugins, container runtimes); \
             run scripts/test.sh as root"
        );
    }
}

/// Panics unless `program` is found on `PATH`, naming the Debian package that provides it.
pub fn require_command(program: &str, debian_package: &str) {
    if which(program).is_none() {
        panic!(
            "this test needs `{program}` on PATH: install the Debian package `{debian_package}` \
             (scripts/setup-test-host.sh does)"
        );
    }
}

/// Panics unless `path` exists, naming what provides it.
pub fn require_path(path: &Path, provided_by: &str) {
    if !path.exists() {
        panic!(
            "this test needs {} ({provided_by}; scripts/setup-test-host.sh installs it)",
            path.display()
        );
    }
}

/// The full path of `program` on `PATH`, if any.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
