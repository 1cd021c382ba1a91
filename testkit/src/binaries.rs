//! The workspace's own programs for tests of any package: the test programs (`control-plane`,
//! `podagent-demo`), since cargo hands `CARGO_BIN_EXE_*` only to the tests of the package that
//! owns a binary; and the podagent that ships, the static build of `scripts/build-lib.sh`, which
//! is not the test build's `CARGO_BIN_EXE_podagent`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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
    let dir = dir.parent().expect("deps inside <target>/<profile>");
    let target = test_target_dir();
    let mut build = Command::new(env!("CARGO"));
    without_cargo_env(&mut build);
    build
        .args([
            "build", "--quiet", "-p", "podagent", "-p", "testkit", "--bin", name,
        ])
        .current_dir(workspace())
        .env("CARGO_TARGET_DIR", &target);
    if dir.file_name().is_some_and(|profile| profile == "release") {
        build.arg("--release");
    }
    let status = build
        .status()
        .unwrap_or_else(|err| panic!("cannot run cargo to build {name}: {err}"));
    assert!(status.success(), "cargo build --bin {name}: {status}");
    dir.join(name)
}

/// The static podagent that the RPM and the image ship, as `scripts/build-lib.sh` builds it with
/// the `dev` profile (the release's code and link, without the minutes of fat LTO), into the
/// running test's target directory, under the target's own subdirectory; built once per test
/// process. The packaging scripts take it with `--profile dev --no-build` and that directory as
/// `CARGO_TARGET_DIR`.
pub fn shipped_podagent() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = test_target_dir();
        let mut build = Command::new("bash");
        without_cargo_env(&mut build);
        let out = build
            .args([
                "-c",
                ". scripts/build-lib.sh && build_podagent dev >&2 && podagent_binary dev",
            ])
            .current_dir(workspace())
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap_or_else(|err| panic!("cannot run bash to build the shipped podagent: {err}"));
        assert!(
            out.status.success(),
            "building the shipped podagent (scripts/build-lib.sh build_podagent dev) failed \
             ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let binary = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(
            binary.is_file(),
            "scripts/build-lib.sh named {}, which is not there",
            binary.display()
        );
        binary
    })
}

/// `script` (build-rpm.sh, build-image.sh) set to package [`shipped_podagent`] as it is:
/// `--profile dev --no-build`, with the test build's target directory; built first if needed.
pub fn packaging_script(script: &Path) -> Command {
    shipped_podagent();
    let mut command = Command::new(script);
    without_cargo_env(&mut command);
    command
        .args(["--profile", "dev", "--no-build"])
        .env("CARGO_TARGET_DIR", test_target_dir());
    command
}

/// The DaemonSet's image of [`shipped_podagent`], written to `out` by `scripts/build-image.sh`:
/// (the image id it printed, the tar's path). Panics with the script's output when it fails.
pub fn podagent_image(out: &Path) -> (String, PathBuf) {
    let mut command = packaging_script(&workspace().join("scripts/build-image.sh"));
    command.arg("--output").arg(out);
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout: {printed}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = printed.lines().rev();
    let tar = PathBuf::from(lines.next().expect("tar path").trim());
    let id = lines
        .next()
        .and_then(|line| line.rsplit_once(", id "))
        .map(|(_, id)| id.to_owned())
        .unwrap_or_else(|| panic!("no image id in {printed:?}"));
    assert_eq!(tar, out, "{printed}");
    (id, tar)
}

/// The target directory the running test was built into: `<target>/<profile>/deps/<test>` →
/// `<target>`.
pub fn test_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running program's own path");
    exe.ancestors()
        .nth(3)
        .expect("a test inside <target>/<profile>/deps")
        .to_path_buf()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Not the OUT_DIR, CARGO_MANIFEST_DIR, CARGO_PKG_* … cargo gave this test: build scripts
/// (ring's) track some of them, and the outer and a nested cargo build would keep rebuilding
/// each other's dependencies.
fn without_cargo_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|key| {
            key == "OUT_DIR" || (key.starts_with("CARGO_") && key != "CARGO_HOME")
        }) {
            command.env_remove(key);
        }
    }
}
