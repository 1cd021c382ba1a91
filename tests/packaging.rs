//! The RPM and the systemd unit, checked with the real tools: `rpm` (query, install, upgrade and
//! erase in a scratch root) and `systemd-analyze verify`.
//!
//! The packages are built from the debug binary, uncompressed (`scripts/build-rpm.sh --profile
//! dev --no-build --compress none`): the contents, modes, metadata and scriptlets do not depend
//! on optimisation or compression, while a packaging-profile build takes minutes and zstd on a
//! debug binary one more. Releases use the defaults.
//!
//! Scriptlets run for real inside the scratch root, whose /bin/sh is busybox: a host without a
//! running systemd must install, upgrade and erase cleanly. systemd cannot run as PID 1 on a
//! test host, so the branch taken when it does run is checked with a `systemctl` stand-in that
//! records its arguments.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use testkit::prereq;

const UNIT: &str = "/usr/lib/systemd/system/podagent.service";
const CONFIG: &str = "/opt/kaloom/etc/podagent.toml";

/// Every file the package installs, with its `rpm -qlv` mode string. (No directory entries:
/// cargo-generate-rpm 0.21 cannot package them; the scriptlets create /var/lib/podagent and
/// remove the package's directories, see Cargo.toml.)
const EXPECTED: &[(&str, &str)] = &[
    ("/opt/kaloom/bin/podagent", "-rwxr-xr-x"),
    (CONFIG, "-rw-r--r--"),
    (
        "/opt/kaloom/share/podagent/examples/data-nad.yaml",
        "-rw-r--r--",
    ),
    (
        "/opt/kaloom/share/podagent/examples/data-net.yaml",
        "-rw-r--r--",
    ),
    (
        "/opt/kaloom/share/podagent/manifests/network-attachment-definitions-crd.yaml",
        "-rw-r--r--",
    ),
    (
        "/opt/kaloom/share/podagent/manifests/networks-crd.yaml",
        "-rw-r--r--",
    ),
    (
        "/opt/kaloom/share/podagent/manifests/podagent-admission-policy.yaml",
        "-rw-r--r--",
    ),
    (
        "/opt/kaloom/share/podagent/manifests/podagent-containerd.yaml",
        "-rw-r--r--",
    ),
    (
        "/opt/kaloom/share/podagent/manifests/podagent-crio.yaml",
        "-rw-r--r--",
    ),
    (
        "/opt/kaloom/share/podagent/manifests/podagent-cs.yaml",
        "-rw-r--r--",
    ),
    (
        "/opt/kaloom/share/podagent/manifests/podagent-docker.yaml",
        "-rw-r--r--",
    ),
    (
        "/opt/kaloom/share/podagent/manifests/podagent-ds.yaml",
        "-rw-r--r--",
    ),
    (
        "/opt/kaloom/share/podagent/manifests/podagent-serviceaccount-and-rbac.yaml",
        "-rw-r--r--",
    ),
    (
        "/opt/kaloom/share/podagent/scripts/add-network-annotation.sh",
        "-rwxr-xr-x",
    ),
    (
        "/opt/kaloom/share/podagent/scripts/create-kubeconfig.sh",
        "-rwxr-xr-x",
    ),
    (
        "/opt/kaloom/share/podagent/scripts/del-network-annotation.sh",
        "-rwxr-xr-x",
    ),
    (
        "/opt/kaloom/share/podagent/scripts/network-annotation-lib.sh",
        "-rw-r--r--",
    ),
    (UNIT, "-rw-r--r--"),
];

/// Directories the package's files live in, removed on erase once empty.
const PACKAGE_DIRS: &[&str] = &[
    "/opt/kaloom/share/podagent/scripts",
    "/opt/kaloom/share/podagent/manifests",
    "/opt/kaloom/share/podagent/examples",
    "/opt/kaloom/share/podagent",
    "/opt/kaloom",
];

const STATE_DIR: &str = "/var/lib/podagent";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command and returns its output, failing the test (with stderr) when it fails.
fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    output
}

fn stdout(command: &mut Command) -> String {
    text(&run(command).stdout)
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The same version with its last component bumped: an upgrade.
fn next_version() -> String {
    let (head, last) = version().rsplit_once('.').expect("x.y.z version");
    let last: u64 = last.parse().expect("numeric patch version");
    format!("{head}.{}", last + 1)
}

struct Packages {
    _dir: tempfile::TempDir,
    current: PathBuf,
    next: PathBuf,
}

/// The packages of this version and of the next, built once per test binary.
fn packages() -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        prereq::require_command("rpm", "rpm");
        // The test binary's own podagent: <target>/debug/podagent.
        let binary = Path::new(env!("CARGO_BIN_EXE_podagent"));
        let target_dir = binary
            .parent()
            .and_then(Path::parent)
            .expect("podagent binary inside <target>/debug");
        let dir = tempfile::Builder::new()
            .prefix("podagent-rpm-")
            .tempdir()
            .expect("temp dir");
        let build = |version: &str, out: &str| -> PathBuf {
            let out_dir = dir.path().join(out);
            let printed = stdout(
                Command::new(repo().join("scripts/build-rpm.sh"))
                    .args(["--profile", "dev", "--no-build", "--compress", "none"])
                    .args(["--version", version])
                    .arg("--output")
                    .arg(&out_dir)
                    .env("CARGO_TARGET_DIR", target_dir),
            );
            let package = PathBuf::from(printed.lines().last().expect("package path").trim());
            assert!(
                package.starts_with(&out_dir) && package.is_file(),
                "build-rpm.sh printed {package:?}, not a package in {out_dir:?}"
            );
            package
        };
        let current = build(version(), "current");
        let next = build(&next_version(), "next");
        Packages {
            _dir: dir,
            current,
            next,
        }
    })
}

fn query(package: &Path, args: &[&str]) -> String {
    stdout(Command::new("rpm").arg("-qp").args(args).arg(package))
}

#[test]
fn package_lists_exactly_the_expected_files_with_their_modes() {
    let listing = stdout(Command::new("rpm").arg("-qlvp").arg(&packages().current));
    let found: BTreeMap<String, String> = listing
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields.last().expect("path column").to_string();
            let owner = (fields[2], fields[3]);
            assert_eq!(owner, ("root", "root"), "owner of {path}: {line}");
            (path, fields[0].to_string())
        })
        .collect();
    let expected: BTreeMap<String, String> = EXPECTED
        .iter()
        .map(|(path, mode)| (path.to_string(), mode.to_string()))
        .collect();
    assert_eq!(found, expected, "rpm -qlvp:\n{listing}");
}

#[test]
fn config_file_is_marked_config_noreplace_and_nothing_else_is() {
    let package = &packages().current;
    assert_eq!(query(package, &["--configfiles"]).trim(), CONFIG);
    let flags = query(package, &["--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]"]);
    let config_flags = flags
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{CONFIG} ")))
        .unwrap_or_else(|| panic!("{CONFIG} not in:\n{flags}"));
    assert!(
        config_flags.contains('c') && config_flags.contains('n'),
        "{CONFIG} flags {config_flags:?}: want c (config) and n (noreplace)"
    );
}

#[test]
fn metadata_comes_from_cargo_toml_and_requires_only_what_is_real() {
    let package = &packages().current;
    let info = query(
        package,
        &[
            "--qf",
            "%{NAME}|%{VERSION}|%{LICENSE}|%{URL}|%{SUMMARY}|%{DESCRIPTION}",
        ],
    );
    let fields: Vec<&str> = info.splitn(6, '|').collect();
    assert_eq!(fields[0], "podagent");
    assert_eq!(fields[1], version());
    assert_eq!(fields[2], "Apache-2.0");
    assert_eq!(fields[3], "https://github.com/kaloom/kubernetes-podagent");
    assert_eq!(fields[4], env!("CARGO_PKG_DESCRIPTION"));
    assert_eq!(fields[5], env!("CARGO_PKG_DESCRIPTION"));

    let requires = query(package, &["--requires"]);
    for line in requires.lines() {
        // The scriptlets' shell, the scripts' `#!/usr/bin/env bash`, the %config marker.
        let ok = line.starts_with("/bin/sh")
            || line == "/usr/bin/env"
            || line.starts_with("config(podagent)")
            || line.starts_with("rpmlib(")
            || line.starts_with("lib")
            || line.starts_with("ld-linux")
            || line.starts_with("rtld(");
        assert!(
            ok,
            "unexpected requirement {line:?} (only the shell and shared libraries are real):\n{requires}"
        );
    }
    assert!(
        requires.lines().any(|l| l.starts_with("libc.so.6")),
        "the binary's glibc requirement is missing:\n{requires}"
    );
}

#[test]
fn scriptlets_reload_systemd_and_stop_disable_or_restart_the_service() {
    let scripts = query(&packages().current, &["--scripts"]);
    for needle in [
        "postinstall scriptlet",
        "preuninstall scriptlet",
        "postuninstall scriptlet",
        "systemctl daemon-reload",
        "systemctl --no-reload disable podagent.service",
        "systemctl stop podagent.service",
        "systemctl try-restart --no-block podagent.service",
        "[ -d /run/systemd/system ]",
        "chmod 0700 /var/lib/podagent",
    ] {
        assert!(
            scripts.contains(needle),
            "{needle:?} missing from:\n{scripts}"
        );
    }
}

/// A scratch root for `rpm --root`: busybox as /bin/sh so the scriptlets really run.
struct ScratchRoot {
    dir: tempfile::TempDir,
}

impl ScratchRoot {
    fn new() -> Self {
        prereq::require_root();
        prereq::require_command("rpm", "rpm");
        let busybox = Path::new("/bin/busybox");
        prereq::require_path(busybox, "the Debian package busybox-static");
        let dir = tempfile::Builder::new()
            .prefix("podagent-root-")
            .tempdir()
            .expect("temp dir");
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin).expect("create bin");
        fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
        // What the scriptlets run besides shell builtins; a real host has coreutils.
        for applet in ["sh", "mkdir", "chmod", "rmdir"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
        }
        // Scriptlets redirect to /dev/null, as on any host.
        fs::create_dir_all(dir.path().join("dev")).expect("create dev");
        run(Command::new("mknod")
            .args(["-m", "666"])
            .arg(dir.path().join("dev/null"))
            .args(["c", "1", "3"]));
        ScratchRoot { dir }
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.dir.path().join(inside.trim_start_matches('/'))
    }

    fn rpm(&self, args: &[&str], package: Option<&Path>) -> Output {
        let mut command = Command::new("rpm");
        command
            .arg("--root")
            .arg(self.dir.path())
            .args(["--dbpath", "/var/lib/rpm", "--nodeps"])
            .args(args);
        if let Some(package) = package {
            command.arg(package);
        }
        run(&mut command)
    }

    fn installed_version(&self) -> String {
        let mut command = Command::new("rpm");
        command.arg("--root").arg(self.dir.path()).args([
            "--dbpath",
            "/var/lib/rpm",
            "-q",
            "--qf",
            "%{VERSION}",
            "podagent",
        ]);
        text(&run(&mut command).stdout)
    }

    fn mode(&self, inside: &str) -> u32 {
        fs::symlink_metadata(self.path(inside))
            .unwrap_or_else(|e| panic!("{inside} in the scratch root: {e}"))
            .permissions()
            .mode()
            & 0o7777
    }

    /// Pretends systemd runs: /run/systemd/system exists and `systemctl` logs its arguments.
    fn with_recording_systemctl(self) -> Self {
        fs::create_dir_all(self.path("/run/systemd/system")).expect("create /run/systemd/system");
        fs::create_dir_all(self.path("/usr/bin")).expect("create /usr/bin");
        let systemctl = self.path("/usr/bin/systemctl");
        fs::write(&systemctl, "#!/bin/sh\necho \"$*\" >>/systemctl.log\n")
            .expect("write systemctl");
        fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755)).expect("chmod");
        self
    }

    /// The systemctl calls recorded since the last call.
    fn take_systemctl_calls(&self) -> Vec<String> {
        let log = self.path("/systemctl.log");
        let calls = fs::read_to_string(&log).unwrap_or_default();
        let _ = fs::remove_file(&log);
        calls.lines().map(str::to_owned).collect()
    }
}

#[test]
fn install_upgrade_and_erase_without_systemd_keep_a_modified_config() {
    let packages = packages();
    let root = ScratchRoot::new();

    root.rpm(&["-ivh"], Some(&packages.current));
    assert_eq!(root.installed_version(), version());
    for (path, mode) in EXPECTED {
        let want = mode
            .chars()
            .skip(1)
            .fold(0u32, |bits, c| (bits << 1) | u32::from(c != '-'));
        assert_eq!(root.mode(path), want, "mode of {path}");
    }
    assert_eq!(
        root.mode(STATE_DIR),
        0o700,
        "the state directory is private"
    );
    assert_eq!(
        fs::read(root.path(CONFIG)).expect("installed config"),
        fs::read(repo().join("etc/podagent.toml")).expect("shipped config")
    );
    let binary = root.path("/opt/kaloom/bin/podagent");
    let version_output = stdout(Command::new(&binary).arg("version"));
    assert!(version_output.contains(version()), "{version_output}");

    // An operator's edit survives an upgrade: the packaged file did not change, so rpm keeps
    // the edited one in place and writes no .rpmnew.
    let edited = "# edited by the operator\nlog_level = \"debug\"\n";
    fs::write(root.path(CONFIG), edited).expect("edit config");
    root.rpm(&["-Uvh"], Some(&packages.next));
    assert_eq!(root.installed_version(), next_version());
    assert_eq!(
        fs::read_to_string(root.path(CONFIG)).expect("config"),
        edited
    );
    assert!(!root.path(&format!("{CONFIG}.rpmnew")).exists());

    // Erase removes every file; the edited config is kept as .rpmsave, as for any
    // %config file an operator changed.
    root.rpm(&["-evh", "podagent"], None);
    for (path, _) in EXPECTED {
        assert!(!root.path(path).exists(), "{path} left behind after erase");
    }
    for dir in PACKAGE_DIRS {
        let exists = root.path(dir).exists();
        // /opt/kaloom/etc still holds the .rpmsave, so /opt/kaloom stays.
        assert_eq!(exists, *dir == "/opt/kaloom", "{dir} after erase");
    }
    assert_eq!(
        fs::read_to_string(root.path(&format!("{CONFIG}.rpmsave"))).expect("rpmsave"),
        edited
    );
}

#[test]
fn scriptlets_drive_systemctl_only_when_systemd_runs() {
    let packages = packages();
    let root = ScratchRoot::new().with_recording_systemctl();

    root.rpm(&["-ivh"], Some(&packages.current));
    assert_eq!(root.take_systemctl_calls(), ["daemon-reload"]);

    root.rpm(&["-Uvh"], Some(&packages.next));
    assert_eq!(
        root.take_systemctl_calls(),
        [
            "daemon-reload",                           // new package's %post
            "daemon-reload",                           // old package's %postun
            "try-restart --no-block podagent.service", // restart if it was running
        ]
    );

    root.rpm(&["-evh", "podagent"], None);
    assert_eq!(
        root.take_systemctl_calls(),
        [
            "--no-reload disable podagent.service",
            "stop podagent.service",
            "daemon-reload",
        ]
    );
    for dir in PACKAGE_DIRS {
        assert!(!root.path(dir).exists(), "{dir} left behind after erase");
    }
    assert!(root.path(STATE_DIR).is_dir(), "podagent's records are kept");
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    prereq::require_command("systemd-analyze", "systemd");
    // verify checks that ExecStart's binary exists, and a test host has no
    // /opt/kaloom/bin/podagent: verify inside a scratch root holding the host's units, the
    // built podagent at its installed path and the unit at its installed path.
    let units = Path::new("/usr/lib/systemd/system");
    prereq::require_path(units, "the Debian package systemd");
    let root = tempfile::Builder::new()
        .prefix("podagent-verify-")
        .tempdir()
        .expect("temp dir");
    let unit_dir = root.path().join("usr/lib/systemd/system");
    fs::create_dir_all(root.path().join("usr/lib/systemd")).expect("create usr/lib/systemd");
    run(Command::new("cp").arg("-a").arg(units).arg(&unit_dir));
    fs::copy(
        repo().join("systemd/podagent.service"),
        unit_dir.join("podagent.service"),
    )
    .expect("copy unit");
    let bin = root.path().join("opt/kaloom/bin");
    fs::create_dir_all(&bin).expect("create bin");
    fs::copy(env!("CARGO_BIN_EXE_podagent"), bin.join("podagent")).expect("copy podagent");

    let output = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("podagent.service"));
    let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify complained:\n{said}"
    );
}

#[test]
fn unit_has_the_documented_service_settings() {
    let unit = fs::read_to_string(repo().join("systemd/podagent.service")).expect("unit");
    let settings: Vec<&str> = unit
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for want in [
        "Type=notify",
        "NotifyAccess=main",
        "Restart=on-failure",
        "ExecStart=/opt/kaloom/bin/podagent run --config /opt/kaloom/etc/podagent.toml",
        "StateDirectory=podagent",
        "Wants=network-online.target",
    ] {
        assert!(settings.contains(&want), "{want} missing");
    }
    assert!(settings.iter().any(|l| l.starts_with("WatchdogSec=")));
    assert!(settings.iter().any(|l| l.starts_with("RestartSec=")));
    assert!(
        !settings.iter().any(|l| l.starts_with("Requires=")),
        "no hard dependency"
    );
    let after = settings
        .iter()
        .find(|l| l.starts_with("After="))
        .expect("After=");
    for runtime in [
        "network-online.target",
        "containerd.service",
        "crio.service",
        "docker.service",
    ] {
        assert!(after.contains(runtime), "{after} lacks {runtime}");
    }
    // Plugins write sysctls under /proc/sys/net: a read-only /proc/sys would break them.
    assert!(
        !settings
            .iter()
            .any(|l| l.starts_with("ProtectKernelTunables=yes"))
    );
}
