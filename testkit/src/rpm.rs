//! podagent's RPM as the tests build it: `scripts/build-rpm.sh` packaging the static dev build
//! of the shipped binary ([`crate::binaries::shipped_podagent`], `--profile dev --no-build`,
//! uncompressed), so a test installs what ships in seconds rather than after a release build.
//! Same files, modes, metadata and scriptlets as a release package.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The package of this version and of the next (an upgrade), built once per test process.
pub struct Packages {
    _dir: tempfile::TempDir,
    pub current: PathBuf,
    pub next: PathBuf,
}

/// [`Packages`] of the shipped podagent as `version` and [`next_version`]; built by the first
/// call of the process.
pub fn packages(version: &str) -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("podagent-rpm-")
            .tempdir()
            .expect("temp dir");
        let current = build(version, &dir.path().join("current"));
        let next = build(&next_version(version), &dir.path().join("next"));
        Packages {
            _dir: dir,
            current,
            next,
        }
    })
}

/// Packages the shipped podagent as version `version` into `out_dir`; the package's path.
/// Panics with the script's output when it fails.
pub fn build(version: &str, out_dir: &Path) -> PathBuf {
    crate::prereq::require_command("rpm", "rpm");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-rpm.sh");
    let out = crate::binaries::packaging_script(&script)
        .args(["--compress", "none"])
        .args(["--version", version])
        .arg("--output")
        .arg(out_dir)
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
