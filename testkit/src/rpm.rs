//! podagent's RPM as the tests build it: `scripts/build-rpm.sh` packaging the test build's
//! binary (`--profile dev --no-build`, uncompressed), so a test installs exactly what it tests
//! in seconds rather than after a release build. Same files, modes, metadata and scriptlets as
//! a release package.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The package of this version and of the next (an upgrade), built once per test process.
pub struct Packages {
    _dir: tempfile::TempDir,
    pub current: PathBuf,
    pub next: PathBuf,
}

/// [`Packages`] of `binary` (the test's `CARGO_BIN_EXE_podagent`) as `version` and
/// [`next_version`]; built by the first call of the process.
pub fn packages(binary: &Path, version: &str) -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("podagent-rpm-")
            .tempdir()
            .expect("temp dir");
        let current = build(binary, version, &dir.path().join("current"));
        let next = build(binary, &next_version(version), &dir.path().join("next"));
        Packages {
            _dir: dir,
            current,
            next,
        }
    })
}

/// Packages `binary` (`<target>/debug/podagent`) as version `version` into `out_dir`; the
/// package's path. Panics with the script's output when it fails.
pub fn build(binary: &Path, version: &str, out_dir: &Path) -> PathBuf {
    crate::prereq::require_command("rpm", "rpm");
    let target_dir = binary
        .parent()
        .and_then(Path::parent)
        .expect("podagent binary inside <target>/debug");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-rpm.sh");
    let out = Command::new(&script)
        .args(["--profile", "dev", "--no-build", "--compress", "none"])
        .args(["--version", version])
        .arg("--output")
        .arg(out_dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed ({}):\n{printed}\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let package = PathBuf::from(printed.lines().last().unwrap_or_default().trim());
    assert!(
        package.starts_with(out_dir) && package.is_file(),
        "build-rpm.sh printed {package:?}, not a package in {}",
        out_dir.display()
    );
    package
}

/// `version` with its last component bumped: an upgrade.
pub fn next_version(version: &str) -> String {
    let (head, last) = version.rsplit_once('.').expect("x.y.z version");
    let last: u64 = last.parse().expect("numeric patch version");
    format!("{head}.{}", last + 1)
}
