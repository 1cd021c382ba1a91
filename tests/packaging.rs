//! The RPM, the systemd unit and the DaemonSet's container image, checked with the real tools:
//! `rpm` (query, install, upgrade and erase in a scratch root), `systemd-analyze verify`, and a
//! private containerd that imports and runs the image.
//!
//! The packages and the image hold the static dev build of the shipped binary, uncompressed
//! (`scripts/build-rpm.sh --profile dev --no-build --compress none`): the contents, modes,
//! metadata and scriptlets do not depend on optimisation or compression, while a
//! packaging-profile build takes minutes and zstd on a debug binary one more. Releases use the
//! defaults.
//!
//! Scriptlets run for real inside the scratch root, whose /bin/sh is busybox: a host without a
//! running systemd must install, upgrade and erase cleanly. The branch taken when systemd runs
//! is checked here with a `systemctl` stand-in that records its arguments, and for real under
//! systemd as PID 1 in tests/service.rs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Deserialize;
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
    testkit::rpm::next_version(version())
}

/// The packages of this version and of the next, built once per test binary.
fn packages() -> &'static testkit::rpm::Packages {
    testkit::rpm::packages(version())
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

    // The scriptlets' shell, the scripts' `#!/usr/bin/env bash`, the %config marker: no shared
    // library, no glibc symbol version (the binary is static).
    let requires = query(package, &["--requires"]);
    for line in requires.lines() {
        let ok = line.starts_with("/bin/sh")
            || line == "/usr/bin/env"
            || line.starts_with("config(podagent)")
            || line.starts_with("rpmlib(")
            // rpm's mark for an ELF file with a GNU hash table (a static-pie too): provided by
            // every glibc package since EL5, EL8's included.
            || line == "rtld(GNU_HASH)";
        assert!(
            ok,
            "unexpected requirement {line:?} (only the shell is real: the binary is static):\n{requires}"
        );
    }
}

/// The packaging scripts refuse, naming the path and what to do, a `--no-build` without a
/// binary (both) and a binary that links shared libraries (the image, which holds none); the
/// RPM's default destination is the documented one.
#[test]
fn packaging_scripts_refuse_a_missing_or_dynamic_binary() {
    let shipped = testkit::binaries::shipped_podagent();
    let triple = shipped
        .ancestors()
        .nth(2)
        .and_then(Path::file_name)
        .expect("<target>/<triple>/debug/podagent");
    let empty = tempfile::tempdir().expect("temp dir");
    let binary = empty.path().join(triple).join("debug/podagent");
    let refusal = |script: &str| {
        let out = Command::new(repo().join("scripts").join(script))
            .args(["--profile", "dev", "--no-build", "--output"])
            .arg(empty.path().join("out"))
            .env("CARGO_TARGET_DIR", empty.path())
            .output()
            .expect("run the script");
        (out.status.code(), text(&out.stderr))
    };
    for script in ["build-rpm.sh", "build-image.sh"] {
        let (code, said) = refusal(script);
        assert_eq!(code, Some(66), "{script}: {said}");
        assert!(
            said.contains(&format!("no podagent binary at {}", binary.display()))
                && said.contains("drop --no-build"),
            "{script}: {said}"
        );
    }
    // The test build's own binary is the dynamic one.
    fs::create_dir_all(binary.parent().expect("debug dir")).expect("mkdir");
    fs::copy(env!("CARGO_BIN_EXE_podagent"), &binary).expect("copy the dynamic podagent");
    let (code, said) = refusal("build-image.sh");
    assert_eq!(code, Some(65), "{said}");
    assert!(said.contains("links shared libraries"), "{said}");
    assert!(
        !empty.path().join("out").exists(),
        "nothing written: {said}"
    );

    // Without --output the package lands where the README says: <target dir>/generate-rpm/.
    let out = Command::new(repo().join("scripts/build-rpm.sh"))
        .args(["--profile", "dev", "--no-build", "--compress", "none"])
        .env("CARGO_TARGET_DIR", empty.path())
        .output()
        .expect("run build-rpm.sh");
    let printed = text(&out.stdout);
    let package = PathBuf::from(printed.lines().last().unwrap_or_default());
    assert!(
        out.status.success()
            && package.parent() == Some(empty.path().join("generate-rpm").as_path())
            && package.is_file(),
        "build-rpm.sh without --output ({}): {printed}{}",
        out.status,
        text(&out.stderr)
    );
}

/// EL8's glibc is 2.28 and Debian 12 builds against 2.36: the packaged binary links glibc in
/// and needs nothing from the node. Installed into a root that holds only busybox and the
/// package, it runs, and resolves an API server name that only that root's /etc/hosts knows
/// (glibc's built-in `files` service), reaching the real API server with the shipped RBAC.
#[test]
fn the_packaged_binary_runs_in_a_root_without_libraries_and_resolves_the_api_server_there() {
    let root = ScratchRoot::new();
    root.rpm(&["-ivh"], Some(&packages().current));
    let libraries = stdout(Command::new("find").arg(root.path("/")).args([
        "-name",
        "*.so*",
        "-o",
        "-name",
        "ld-linux*",
    ]));
    assert!(
        libraries.trim().is_empty(),
        "the scratch root must hold no library:\n{libraries}"
    );
    let chroot = |args: &[&str]| {
        Command::new("chroot")
            .arg(root.path("/"))
            .arg("/opt/kaloom/bin/podagent")
            .args(args)
            .output()
            .expect("run chroot")
    };
    let out = chroot(&["version"]);
    assert!(
        out.status.success() && text(&out.stdout).starts_with(&format!("podagent {}\n", version())),
        "podagent version in a root without libraries ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );

    // The shipped identity's kubeconfig, naming the server by a name of the root's own.
    let cluster = testkit::control_plane::shared();
    let port = cluster
        .server()
        .rsplit_once(':')
        .map(|(_, port)| port.to_owned())
        .expect("server URL with a port");
    let mut kubeconfig: serde_yaml::Value = serde_yaml::from_str(
        &fs::read_to_string(cluster.podagent_kubeconfig()).expect("podagent's kubeconfig"),
    )
    .expect("kubeconfig YAML");
    let server = &mut kubeconfig["clusters"][0]["cluster"];
    server["server"] = format!("https://apiserver.podagent.test:{port}").into();
    // The serving certificate names localhost and 127.0.0.1, not the test's name.
    server["tls-server-name"] = "localhost".into();
    let etc = root.path("/opt/kaloom/etc");
    fs::write(
        etc.join("podagent-kubeconfig.yaml"),
        serde_yaml::to_string(&kubeconfig).expect("kubeconfig YAML"),
    )
    .expect("write kubeconfig");
    fs::set_permissions(
        etc.join("podagent-kubeconfig.yaml"),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod kubeconfig");
    for dir in ["/etc", "/tmp"] {
        fs::create_dir_all(root.path(dir)).expect("mkdir in the scratch root");
    }
    fs::write(
        root.path("/etc/hosts"),
        "127.0.0.1 apiserver.podagent.test\n",
    )
    .expect("hosts");
    fs::write(root.path("/etc/nsswitch.conf"), "hosts: files dns\n").expect("nsswitch");
    fs::write(
        root.path("/tmp/check.toml"),
        "node_name = \"static-node\"\n",
    )
    .expect("write config");

    // The runtime and plugin lines fail in this root; the API lines must not.
    let out = chroot(&["check", "--config", "/tmp/check.toml"]);
    let said = text(&out.stdout);
    for passed in ["✓ kubeconfig readable", "✓ pods on this node listable"] {
        assert!(
            said.lines().any(|line| line.starts_with(passed)),
            "no {passed:?} line from podagent check in the scratch root:\n{said}{}",
            text(&out.stderr)
        );
    }
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

// ---------------------------------------------------------------------------------------------
// The DaemonSet's image (scripts/build-image.sh), from the static dev build the RPM holds.

/// podagent's image, built once per test binary.
struct Image {
    _dir: tempfile::TempDir,
    /// `sha256:<digest of its config>`, as build-image.sh printed it.
    id: String,
    tar: PathBuf,
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        prereq::require_command("jq", "jq");
        let dir = tempfile::Builder::new()
            .prefix("podagent-image-")
            .tempdir()
            .expect("temp dir");
        let (id, tar) = testkit::binaries::podagent_image(&dir.path().join("podagent.tar"));
        Image { _dir: dir, id, tar }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_holds_the_packaged_binary_is_reproducible_and_runs_in_containerd() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let (id, tar) = (&image().id, &image().tar);
    let (again, tar_again) = testkit::binaries::podagent_image(&scratch.path().join("again.tar"));
    assert_eq!(*id, again, "the same binary gives the same image id");
    assert!(
        fs::read(tar).expect("read") == fs::read(&tar_again).expect("read"),
        "the same binary gives the same bytes"
    );

    // What it holds: the shipped binary, the CA bundle; no library, no shell.
    let unpacked = scratch.path().join("image");
    fs::create_dir(&unpacked).expect("mkdir");
    run(Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(&unpacked));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(unpacked.join("manifest.json")).expect("manifest"))
            .expect("manifest JSON");
    let tag = format!("kaloom/podagent:{}", version());
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!([tag]));
    let config_file = manifest[0]["Config"].as_str().expect("config file");
    assert_eq!(
        format!("sha256:{}", config_file.trim_end_matches(".json")),
        *id
    );
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(unpacked.join(config_file)).expect("config"))
            .expect("config JSON");
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], version());
    let head = stdout(
        Command::new("git")
            .current_dir(repo())
            .args(["rev-parse", "HEAD"]),
    );
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .expect("revision label");
    assert!(revision.starts_with(head.trim()), "{revision} vs {head}");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/opt/kaloom/bin/podagent"])
    );
    let rootfs = scratch.path().join("rootfs");
    fs::create_dir(&rootfs).expect("mkdir");
    let layer = unpacked.join(manifest[0]["Layers"][0].as_str().expect("layer"));
    run(Command::new("tar")
        .arg("-xf")
        .arg(&layer)
        .arg("-C")
        .arg(&rootfs));
    let packed = rootfs.join("opt/kaloom/bin/podagent");
    assert!(
        fs::read(&packed).expect("podagent in the image")
            == fs::read(testkit::binaries::shipped_podagent()).expect("the shipped podagent"),
        "the image holds the binary it was built from"
    );
    assert_eq!(
        fs::metadata(&packed).expect("stat").permissions().mode() & 0o7777,
        0o755
    );
    for needed in [
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "etc/nsswitch.conf",
    ] {
        assert!(
            rootfs.join(needed).is_file(),
            "{needed} missing from the image"
        );
    }
    for absent in [
        "bin/sh",
        "usr/bin/sh",
        "bin/busybox",
        "usr/bin/apt",
        "lib",
        "lib64",
        "usr/lib",
    ] {
        assert!(!rootfs.join(absent).exists(), "{absent} is in the image");
    }

    // Every DaemonSet manifest (the deprecated names too) runs this image, by the tag the
    // script printed.
    let mut daemonsets = 0;
    for entry in fs::read_dir(repo().join("manifests")).expect("manifests dir") {
        let path = entry.expect("manifests entry").path();
        let text = fs::read_to_string(&path).expect("manifest");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let manifest = serde_yaml::Value::deserialize(document).expect("YAML");
            if manifest["kind"] != "DaemonSet" {
                continue;
            }
            daemonsets += 1;
            let image = &manifest["spec"]["template"]["spec"]["containers"][0]["image"];
            assert_eq!(image.as_str(), Some(tag.as_str()), "{}", path.display());
        }
    }
    assert_eq!(
        daemonsets, 5,
        "containerd, crio, docker and the two deprecated names"
    );

    // The real containerd takes it and runs podagent from it, with nothing from the host.
    let containerd = testkit::host::Containerd::start().await;
    let engine = Engine::Containerd(&containerd);
    engine.load();
    let ctr = |args: &[&str]| {
        engine
            .cli()
            .args(["run", "--rm", "--runc-root"])
            .arg(containerd.dir().join("runc-ctr"))
            .args(args)
            .output()
            .expect("run ctr")
    };
    let docker_io = format!("docker.io/{tag}");
    let out = ctr(&[
        &docker_io,
        "podagent-version",
        "/opt/kaloom/bin/podagent",
        "version",
    ]);
    assert!(
        out.status.success(),
        "podagent version in the image: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).starts_with(&format!("podagent {}\n", version())),
        "{}",
        text(&out.stdout)
    );
    let out = ctr(&[&docker_io, "podagent-shell", "/bin/sh", "-c", "true"]);
    assert!(!out.status.success(), "the image has a shell");

    // `docker load` takes the same tar, and the Docker Engine runs it too.
    let dockerd = testkit::host::Dockerd::start().await;
    let engine = Engine::Docker(&dockerd);
    engine.load();
    let shown = stdout(
        engine
            .cli()
            .args(["run", "--rm", "--network", "none", &tag, "version"]),
    );
    assert!(
        shown.starts_with(&format!("podagent {}\n", version())),
        "{shown}"
    );
}

/// The runtime the DaemonSet's container runs on: the node's containerd (driven with `ctr`,
/// with the options the kubelet would give it over CRI) or its Docker Engine (as cri-dockerd
/// runs pods).
#[derive(Clone, Copy)]
enum Engine<'a> {
    Containerd(&'a testkit::host::Containerd),
    Docker(&'a testkit::host::Dockerd),
}

/// The capability's number (linux/capability.h).
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether capability number `bit` is in this process's bounding set.
fn host_has_capability(bit: u32) -> bool {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapBnd:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << bit) != 0)
}

impl Engine<'_> {
    /// The engine's CLI, pointed at its daemon.
    fn cli(self) -> Command {
        match self {
            Engine::Containerd(containerd) => {
                let mut command = Command::new("ctr");
                command
                    .arg("--address")
                    .arg(containerd.socket())
                    .args(["-n", "k8s.io"]);
                command
            }
            Engine::Docker(dockerd) => {
                let mut command = Command::new("docker");
                command
                    .arg("-H")
                    .arg(format!("unix://{}", dockerd.socket().display()));
                command
            }
        }
    }

    /// Loads podagent's image tar, as an operator does on a node without a registry.
    fn load(self) {
        let mut load = self.cli();
        match self {
            Engine::Containerd(_) => load.args(["images", "import"]),
            Engine::Docker(_) => load.args(["load", "-i"]),
        };
        run(load.arg(&image().tar));
    }
}

/// One bind mount of the container.
struct Bind {
    src: PathBuf,
    dst: String,
    read_only: bool,
    /// `HostToContainer` propagation: mounts made on the host later show inside.
    host_to_container: bool,
}

impl Bind {
    /// Its mode, and its propagation when it has one.
    fn options(&self) -> Vec<&'static str> {
        let mut options = vec![if self.read_only { "ro" } else { "rw" }];
        if self.host_to_container {
            options.push("rslave");
        }
        options
    }
}

/// The DaemonSet's container, started by the test; killed and removed on drop, so a failing
/// test leaves nothing running.
struct DaemonSetContainer<'a> {
    engine: Engine<'a>,
    id: String,
    /// Where `ctr` writes the container's output.
    log: PathBuf,
}

impl<'a> DaemonSetContainer<'a> {
    fn cli(&self) -> Command {
        self.engine.cli()
    }

    /// Loads the image and starts `command` from it as the manifest's pod spec says.
    fn start(
        engine: Engine<'a>,
        id: String,
        log: PathBuf,
        host_pid: bool,
        binds: &[Bind],
        env: &[String],
        command: &[String],
    ) -> DaemonSetContainer<'a> {
        let container = DaemonSetContainer { engine, id, log };
        let tag = format!("kaloom/podagent:{}", version());
        let mut start = container.cli();
        match engine {
            Engine::Containerd(containerd) => {
                start
                    .args(["run", "-d", "--privileged", "--net-host", "--runc-root"])
                    .arg(containerd.dir().join("runc-ctr"))
                    .arg("--log-uri")
                    .arg(format!("file://{}", container.log.display()));
                if host_pid {
                    // The node's PID namespace is the test's own: PID 1's may be out of
                    // reach (a test host that is a container itself cannot read
                    // /proc/1/ns/pid, and runc then fails without a reason).
                    start
                        .arg("--with-ns")
                        .arg(format!("pid:/proc/{}/ns/pid", std::process::id()));
                }
                for bind in binds {
                    start.arg("--mount").arg(format!(
                        "type=bind,src={},dst={},options=rbind:{}",
                        bind.src.display(),
                        bind.dst,
                        bind.options().join(":")
                    ));
                }
                for variable in env {
                    start.args(["--env", variable]);
                }
                start
                    .arg(format!("docker.io/{tag}"))
                    .arg(&container.id)
                    .args(command);
            }
            Engine::Docker(_) => {
                start.args(["run", "-d", "--name", &container.id]);
                if host_has_capability(CAP_SYS_RESOURCE) {
                    start.arg("--privileged");
                } else {
                    // A privileged Docker container asks for every capability Docker knows,
                    // and a test host without CAP_SYS_RESOURCE (a container itself, as the
                    // private containerd's restrict_oom_score_adj notes) cannot grant that
                    // one. What privileged means otherwise, spelled out without it:
                    start.args(["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE"]);
                    for option in [
                        "seccomp=unconfined",
                        "apparmor=unconfined",
                        "systempaths=unconfined",
                    ] {
                        start.args(["--security-opt", option]);
                    }
                }
                start.args(["--network", "host"]);
                if host_pid {
                    start.args(["--pid", "host"]);
                }
                for bind in binds {
                    start.arg("-v").arg(format!(
                        "{}:{}:{}",
                        bind.src.display(),
                        bind.dst,
                        bind.options().join(",")
                    ));
                }
                for variable in env {
                    start.args(["-e", variable]);
                }
                start
                    .args(["--entrypoint", &command[0]])
                    .arg(&tag)
                    .args(&command[1..]);
            }
        }
        engine.load();
        run(&mut start);
        container
    }

    fn running(&self) -> bool {
        match self.engine {
            Engine::Containerd(_) => {
                let listed = stdout(self.cli().args(["task", "ls"]));
                listed.lines().any(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.first() == Some(&self.id.as_str()) && fields.get(2) == Some(&"RUNNING")
                })
            }
            Engine::Docker(_) => {
                let state = self
                    .cli()
                    .args(["inspect", "-f", "{{.State.Running}}", &self.id])
                    .output()
                    .expect("run docker inspect");
                text(&state.stdout).trim() == "true"
            }
        }
    }

    /// What podagent in the container wrote on stdout and stderr.
    fn logs(&self) -> String {
        match self.engine {
            Engine::Containerd(_) => fs::read_to_string(&self.log).unwrap_or_default(),
            Engine::Docker(_) => {
                let out = self
                    .cli()
                    .args(["logs", &self.id])
                    .output()
                    .expect("run docker logs");
                text(&out.stdout) + &text(&out.stderr)
            }
        }
    }

    /// The runtime's SIGTERM, as at pod deletion.
    fn terminate(&self) {
        let mut kill = self.cli();
        match self.engine {
            Engine::Containerd(_) => kill.args(["task", "kill", "-s", "SIGTERM", &self.id]),
            Engine::Docker(_) => kill.args(["kill", "-s", "SIGTERM", &self.id]),
        };
        run(&mut kill);
    }
}

impl Drop for DaemonSetContainer<'_> {
    fn drop(&mut self) {
        match self.engine {
            Engine::Containerd(_) => {
                let _ = self
                    .cli()
                    .args(["task", "kill", "-s", "SIGKILL", &self.id])
                    .output();
                for _ in 0..50 {
                    if !self.running() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = self.cli().args(["task", "delete", &self.id]).output();
                let _ = self.cli().args(["container", "delete", &self.id]).output();
            }
            Engine::Docker(_) => {
                let _ = self.cli().args(["rm", "-f", &self.id]).output();
            }
        }
    }
}

/// The DaemonSet, for real: `manifests/podagent-<variant>.yaml`'s container, run from the
/// image on the node's own runtime with the manifest's privileges, host network (and host
/// PID namespace where it asks for one), command, arguments and hostPath mounts (each host
/// path mapped to the test node's own), and the in-cluster credentials of podagent's service
/// account (a token bound to a podagent pod on the node, where the kubelet mounts it). The one
/// setting added is `networks.mode = direct` (by environment): the test node's primary CNI is
/// not kactus. From inside the container podagent hot-plugs into a sandbox of the same
/// runtime, answers the manifest's probes, and stops on the runtime's SIGTERM within the grace
/// period with nothing half-made.
async fn daemonset_hot_plugs_from_inside_the_image(
    node: &testkit::node::Node,
    engine: Engine<'_>,
    variant: &str,
) {
    use testkit::node::{has_link, http_get, ipv4};
    let cluster = node.cluster();
    cluster.install_network_crd();
    let bridge = testkit::netns::unique_name("dsb");
    let _links = testkit::netns::HostLinks(vec![bridge.clone()]);
    // The Debian bridge plugin, straight: dynamically linked as distributions build their
    // plugins, it runs only in the node's root (the image holds no library); host-local keeps
    // its leases in the node's /var/lib/cni, as by default.
    let config = serde_json::json!({"cniVersion": "1.0.0", "name": "green", "type": "bridge",
        "bridge": bridge, "isGateway": false, "ipMasq": false,
        "ipam": {"type": "host-local", "subnet": node.quarter(1)}});
    node.put_network(
        "default",
        "green",
        serde_json::json!({"plugin": "bridge", "config": config.to_string()}),
    );

    // The manifest's pod spec and container.
    let path = repo().join(format!("manifests/podagent-{variant}.yaml"));
    let yaml = fs::read_to_string(&path).expect("the DaemonSet manifest");
    let manifest: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("YAML");
    let pod = &manifest["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let host_pid = pod["hostPID"] == true;
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["privileged"], true);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");

    // The node's root, where podagent runs the plugins: this machine's, with the test node's
    // plugin dirs and CNI state.
    let (vendor_bin, cni_state, xtables_lock) = (
        node.path("vendor-bin"),
        node.path("cni-state"),
        node.path("xtables.lock"),
    );
    fs::create_dir_all(&vendor_bin).expect("mkdir vendor-bin");
    fs::create_dir_all(&cni_state).expect("mkdir cni-state");
    fs::write(&xtables_lock, "").expect("xtables.lock");
    let root = testkit::node_root::NodeRoot::build(
        &node.path("root"),
        &[
            ("/opt/cni/bin", Path::new("/usr/lib/cni")),
            ("/opt/kaloom/cni/bin", &vendor_bin),
            ("/var/lib/cni", &cni_state),
            ("/run/xtables.lock", &xtables_lock),
        ],
    );
    // Each host path the manifest mounts, on this test node: the CRI runtime's socket dir is
    // its instance dir, the netns dir the real one.
    let local = |host: &str| -> PathBuf {
        match host {
            "/" => root.path().to_owned(),
            "/etc/cni/net.d" => node.path("conf"),
            "/var/lib/podagent" => node.path("state"),
            "/run/containerd" | "/var/run/crio" => node.cri().dir().to_owned(),
            "/var/run/docker.sock" => node.dockerd().socket().to_owned(),
            "/var/run/netns" => PathBuf::from("/var/run/netns"),
            other => panic!(
                "{} mounts {other}: teach this test where it is",
                path.display()
            ),
        }
    };
    let mut binds = Vec::new();
    for mount in container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
    {
        let name = mount["name"].as_str().expect("mount name");
        let volume = pod["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        let src = local(volume["hostPath"]["path"].as_str().expect("hostPath"));
        match volume["hostPath"]["type"].as_str() {
            Some("FileOrCreate") => {
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&src)
                    .expect("create the file");
            }
            Some("Socket") => {}
            _ => fs::create_dir_all(&src).expect("create the dir"),
        }
        binds.push(Bind {
            src,
            dst: mount["mountPath"].as_str().expect("mountPath").to_owned(),
            read_only: mount["readOnly"] == true,
            host_to_container: mount["mountPropagation"] == "HostToContainer",
        });
    }

    // The in-cluster credentials: a token of kube-system/podagent bound to a podagent pod on
    // this node, with the CA and namespace, where the kubelet puts them. (The fixture of the
    // shared identity applies the RBAC manifest, as an operator does first.)
    cluster.podagent_kubeconfig();
    let admin = cluster.admin();
    let _ = admin.create(serde_json::json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name()}}));
    let agent_pod = cluster.unique_name("podagent");
    admin
        .create(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": agent_pod, "namespace": "kube-system"},
            "spec": {"nodeName": node.name(), "serviceAccountName": "podagent",
                     "containers": [{"name": "podagent", "image": "kaloom/podagent"}]}
        }))
        .expect("create podagent's pod");
    let token = Command::new(testkit::control_plane::binary("kubectl"))
        .args(["create", "token", "podagent", "-n", "kube-system"])
        .args([
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            &agent_pod,
        ])
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("KUBECACHEDIR", cluster.kubectl_cache())
        .output()
        .expect("run kubectl create token");
    assert!(token.status.success(), "{}", text(&token.stderr));
    let secrets = node.path("serviceaccount");
    fs::create_dir_all(&secrets).expect("mkdir");
    fs::write(secrets.join("token"), text(&token.stdout).trim()).expect("token");
    fs::write(secrets.join("ca.crt"), cluster.ca_pem()).expect("ca.crt");
    fs::write(secrets.join("namespace"), "kube-system").expect("namespace");
    binds.push(Bind {
        src: secrets,
        dst: "/var/run/secrets/kubernetes.io/serviceaccount".to_owned(),
        read_only: true,
        host_to_container: false,
    });
    let server = cluster.server().trim_end_matches('/');
    let (host, port) = server
        .trim_start_matches("https://")
        .rsplit_once(':')
        .expect("host:port");

    // The container, as the kubelet would start it.
    let command: Vec<String> = container["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .chain(container["args"].as_sequence().expect("args"))
        .map(|a| {
            a.as_str()
                .expect("a string")
                .replace("$(NODE_NAME)", node.name())
        })
        .collect();
    let env = [
        format!("NODE_NAME={}", node.name()),
        format!("KUBERNETES_SERVICE_HOST={host}"),
        format!("KUBERNETES_SERVICE_PORT={port}"),
        "PODAGENT_NETWORKS__MODE=direct".to_owned(),
    ];
    let probe_port = container["readinessProbe"]["httpGet"]["port"]
        .as_u64()
        .expect("probe port");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", probe_port as u16)).is_ok(),
        "something else listens on the probes' port {probe_port}"
    );
    let running = DaemonSetContainer::start(
        engine,
        cluster.unique_name("podagent-ds"),
        node.path("podagent.log"),
        host_pid,
        &binds,
        &env,
        &command,
    );

    // The probes the manifest declares answer, on the host network.
    let probe = |which: &str| {
        let probe = &container[which]["httpGet"];
        let address = format!(
            "{}:{}",
            probe["host"].as_str().expect("probe host"),
            probe["port"].as_u64().expect("probe port")
        );
        let path = probe["path"].as_str().expect("probe path").to_owned();
        move || http_get(&address, &path).filter(|a| a.status == 200)
    };
    node.eventually("the readiness probe answers 200", probe("readinessProbe"))
        .await;
    node.eventually("the liveness probe answers 200", probe("livenessProbe"))
        .await;
    let logs = running.logs();
    assert!(
        logs.contains("credentials=in-cluster service account"),
        "podagent in the container did not use the in-cluster credentials:\n{logs}"
    );

    // Hot-plug from inside the container into a sandbox of the same runtime.
    let (uid, sandbox) = node
        .pod("default", "web", Some(r#"[{"name":"green"}]"#))
        .await;
    let netns = node.netns(&sandbox).await;
    let green = podagent::annotation::ifname("green");
    let address = node
        .eventually("green added from the container", || ipv4(&netns, &green))
        .await;
    assert!(node.in_quarter(&address, 1), "{address}");
    let lease = cni_state.join("networks/green").join(&address);
    assert!(
        lease.is_file(),
        "host-local's lease of {address} is not {}: the plugins did not run in the node's root",
        lease.display()
    );
    node.eventually("the record written to the host's state dir", || {
        let record = node.record(&uid)?;
        (record["record"]["attachments"][&green]["phase"] == "Attached").then_some(())
    })
    .await;

    // The runtime's SIGTERM: podagent stops well within the grace period, and what it made is
    // whole and recorded.
    let sigterm = Instant::now();
    running.terminate();
    while running.running() {
        assert!(
            sigterm.elapsed() < Duration::from_secs(grace),
            "podagent still runs {grace} s after SIGTERM:\n{}",
            running.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(has_link(&netns, &green));
    let record = node.record(&uid).expect("the record");
    assert_eq!(record["record"]["attachments"][&green]["phase"], "Attached");
}

/// One variant after the other: every manifest puts podagent's listener on the host network's
/// port 9754, where each variant's probes must reach its own podagent. The containerd manifest
/// is run by the cluster itself, on a real kubelet (tests/daemonset.rs); these two cannot be:
/// no kubelet drives Docker here (cri-dockerd is not packaged), and CRI-O cannot run a
/// privileged container on this machine (see tests/daemonset.rs). The CRI-O variant's container
/// runs on a containerd beside the node's CRI-O, after the manifest's socket and netns paths are
/// held to the defaults of the real CRI-O.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crio_and_docker_daemonsets_hot_plug_from_inside_the_image() {
    use testkit::node::Node;
    let podagent = env!("CARGO_BIN_EXE_podagent");
    let node = Node::with_crio(podagent).await;
    crio_manifest_names_the_paths_crio_uses();
    let engine = testkit::host::Containerd::start().await;
    daemonset_hot_plugs_from_inside_the_image(&node, Engine::Containerd(&engine), "crio").await;
    drop((engine, node));

    let node = Node::with_docker(podagent).await;
    daemonset_hot_plugs_from_inside_the_image(&node, Engine::Docker(node.dockerd()), "docker")
        .await;
}

/// manifests/podagent-crio.yaml's endpoint is CRI-O's default `listen`, its socket volume that
/// socket's dir, and its netns volume `<namespaces_dir>/netns`, as `crio config --default` of
/// the real CRI-O prints them.
fn crio_manifest_names_the_paths_crio_uses() {
    let defaults =
        stdout(Command::new(testkit::host::crio_binary("crio")).args(["config", "--default"]));
    // Each key is set once in the printed config (`listen` in [crio.api], `namespaces_dir` in
    // [crio.runtime]).
    let default = |key: &str| {
        defaults
            .lines()
            .find_map(|line| line.trim().strip_prefix(&format!("{key} = ")))
            .map(|value| value.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("crio config --default sets no {key}:\n{defaults}"))
    };
    let (listen, namespaces_dir) = (default("listen"), default("namespaces_dir"));

    let path = repo().join("manifests/podagent-crio.yaml");
    let manifest: serde_yaml::Value =
        serde_yaml::from_str(&fs::read_to_string(&path).expect("the manifest")).expect("YAML");
    let pod = &manifest["spec"]["template"]["spec"];
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(serde_yaml::Value::as_str)
        .collect();
    assert!(
        args.contains(&format!("--runtime-endpoint=unix://{listen}").as_str()),
        "{}: {args:?} does not name CRI-O's socket {listen}",
        path.display()
    );
    let host_path = |volume: &str| {
        pod["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == volume)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_else(|| panic!("{}: no hostPath volume {volume}", path.display()))
            .to_owned()
    };
    assert_eq!(
        Path::new(&host_path("runtime-sockets")),
        Path::new(&listen).parent().expect("the socket's dir"),
        "{}",
        path.display()
    );
    assert_eq!(
        Path::new(&host_path("netns")),
        Path::new(&namespaces_dir).join("netns"),
        "{}",
        path.display()
    );
}
