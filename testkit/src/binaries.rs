//! The workspace's own test programs (`control-plane`, `podagent-demo`) for tests of any
//! package: cargo hands `CARGO_BIN_EXE_*` only to the tests of the package that owns a binary.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of testkit's binary `name`. For a test or bench (an executable in
/// `<target>/<profile>/deps`): built first into that profile (a no-op when it is up to date: a
/// narrower `cargo test` may not have built it); both packages are named so dependency
/// features unify as in the test build and nothing is rebuilt. For a program of the workspace
/// (the demo driver): the one next to it, as `cargo build --bins` or a script put it there.
pub fn testkit_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running program's own path");
    let dir = exe.parent().expect("a program inside a directory");
    if dir.file_name().is_none_or(|deps| deps != "deps") {
        let sibling = dir.join(name);
        assert!(
            sibling.is_file(),
            "{} is missing: build it next to {} (cargo build -p testkit --bins)",
            sibling.display(),
            exe.display()
        );
        return sibling;
    }
    // <target>/<profile>/deps/<test> → <target>/<profile>.
    let dir = dir.parent().expect("deps inside <target>/<profile>");
    let target = dir.parent().expect("<target>/<profile> inside <target>");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut build = Command::new(env!("CARGO"));
    // Not the OUT_DIR, CARGO_MANIFEST_DIR, CARGO_PKG_* … cargo gave this test: build scripts
    // (ring's) track some of them, and the outer and this build would keep rebuilding each
    // other's dependencies.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|key| {
            key == "OUT_DIR" || (key.starts_with("CARGO_") && key != "CARGO_HOME")
        }) {
            build.env_remove(key);
        }
    }
    build
        .args([
            "build", "--quiet", "-p", "podagent", "-p", "testkit", "--bin", name,
        ])
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", target);
    if dir.file_name().is_some_and(|profile| profile == "release") {
        build.arg("--release");
    }
    let status = build
        .status()
        .unwrap_or_else(|err| panic!("cannot run cargo to build {name}: {err}"));
    assert!(status.success(), "cargo build --bin {name}: {status}");
    dir.join(name)
}
