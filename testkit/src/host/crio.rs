//! A private CRI-O, for tests that need real pod sandboxes the way the seed's users ran them.
//!
//! CRI-O is built by `scripts/setup-test-host.sh` from the pinned module `testkit/crio/go.mod`
//! (Debian 12 packages none), with its `pinns` helper and the release's own `copyimg`; Debian's
//! `conmon` monitors its containers and Debian's `runc` runs them.
//!
//! What makes CRI-O matter to podagent is where a sandbox's netns lives: CRI-O has `pinns`
//! create the namespaces and bind-mount them under `<namespaces_dir>/netns/<uuid>`, and by
//! default (`drop_infra_ctr`) runs no infra process at all, so the pinned file is the only
//! handle on the netns; a `/proc/<pid>/ns/net` rewrite (the seed's bug) has no pid to use.
//!
//! Everything the daemon owns is under one temp dir — storage root and runroot, the socket, the
//! version, exits and attach dirs, runc's root, the CNI config and the host-local data, an
//! accept-anything signature policy, and an empty drop-in config dir, so neither `/etc/crio` nor
//! `/etc/containers` of the host is read — except the pinned namespaces, which stay in CRI-O's
//! default [`NAMESPACES_DIR`] and are swept by the id recorded for each sandbox.
//! The cgroup manager is cgroupfs (no systemd to ask in a test), NRI and metrics are off (their
//! sockets and port are host-global), and irqbalance restoring is disabled. No registry is
//! reachable, so the local image tars are imported with `copyimg` into the same storage before
//! the daemon starts; the storage driver is overlay where an overlay mount works in the temp
//! dir, else vfs, as for containerd's snapshotter.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cri::{self, CriDaemon, Flavor};
use super::images::{BUSYBOX_IMAGE, PAUSE_IMAGE, image_tar};
use crate::prereq;
use crate::tool_cache;

const GO_MOD: &str = include_str!("../../crio/go.mod");

/// CRI-O's default `namespaces_dir`, kept: the netns files are where a real CRI-O puts them
/// (`/var/run/netns/<id>`, the path the shipped CRI-O DaemonSet mounts), and their ids are
/// unique, so instances side by side (and a host CRI-O, if any) never meet.
pub const NAMESPACES_DIR: &str = "/var/run";

/// What pinns pins beside the netns, under the same id, for a sandbox without shared pid or
/// user namespaces.
const PINNED_SIBLINGS: [&str; 2] = ["ipcns", "utsns"];

/// A running private CRI-O; stopped, and everything it made removed, on drop. The CRI side
/// (sandboxes, restarts) is [`CriDaemon`]'s.
#[derive(Debug)]
pub struct Crio {
    cri: CriDaemon,
    storage_driver: &'static str,
}

impl Crio {
    /// Imports the pause and busybox images into a private storage, starts CRI-O on it and
    /// waits until CRI answers. Panics naming what is missing (root, the built CRI-O, conmon,
    /// runc, CNI plugins, images) or, with the daemon's log, when it does not come up.
    pub async fn start() -> Crio {
        Crio::start_in(None).await
    }

    /// [`Crio::start`] in the mount namespace `mount_ns` (a kubelet node's, whose mounts its
    /// containers must see), or in the test's own.
    pub(crate) async fn start_in(mount_ns: Option<PathBuf>) -> Crio {
        cri::require_common();
        prereq::require_command("conmon", "conmon");
        let [_, pinns, copyimg] = ["crio", "pinns", "copyimg"].map(binary);
        let images = [
            (PAUSE_IMAGE, image_tar(PAUSE_IMAGE)),
            (BUSYBOX_IMAGE, image_tar(BUSYBOX_IMAGE)),
        ];

        let dir = cri::instance_dir("pa-crio");
        let socket = dir.join("crio.sock");
        let storage_driver = if cri::overlay_works(&dir) {
            "overlay"
        } else {
            "vfs"
        };
        let network = cri::cni_network(&dir);
        write_config(&dir, &socket, storage_driver, &pinns);
        for (name, tar) in images {
            import(&copyimg, &dir, storage_driver, name, &tar);
        }
        let flavor = Flavor {
            name: "crio",
            command: daemon_command,
            socket,
            runc_root: dir.join("runc"),
            pinned_siblings: &PINNED_SIBLINGS,
            mount_ns,
        };
        Crio {
            cri: CriDaemon::start(flavor, dir, network).await,
            storage_driver,
        }
    }

    /// Imports the docker-save image `tar` as `name` into the running CRI-O's storage (which
    /// reads it anew on each image request).
    pub(crate) fn import_image(&self, name: &str, tar: &Path) {
        import(
            &binary("copyimg"),
            self.dir(),
            self.storage_driver,
            name,
            tar,
        );
    }

    /// The containers/storage driver in use: `overlay`, or `vfs` where an overlay mount fails.
    pub fn storage_driver(&self) -> &str {
        self.storage_driver
    }
}

impl Deref for Crio {
    type Target = CriDaemon;

    fn deref(&self) -> &CriDaemon {
        &self.cri
    }
}

impl DerefMut for Crio {
    fn deref_mut(&mut self) -> &mut CriDaemon {
        &mut self.cri
    }
}

/// The pinned CRI-O release (`github.com/cri-o/cri-o` in testkit/crio/go.mod), e.g. `v1.34.0`.
pub fn crio_version() -> &'static str {
    tool_cache::required_version(GO_MOD, "testkit/crio/go.mod", "github.com/cri-o/cri-o")
}

/// One of `crio`, `pinns`, `copyimg` as the setup script built them.
pub fn binary(name: &str) -> PathBuf {
    let bin = Path::new(tool_cache::ROOT)
        .join("crio")
        .join(format!("cri-o-{}", crio_version()))
        .join("bin");
    tool_cache::binary(&bin, name, &format!("CRI-O {} ({name})", crio_version()))
}

/// The daemon command line: the config, and an empty drop-in dir instead of /etc/crio's.
fn daemon_command(dir: &Path) -> Command {
    let mut command = Command::new(binary("crio"));
    command
        .arg("--config")
        .arg(dir.join("crio.conf"))
        .arg("--config-dir")
        .arg(dir.join("crio.conf.d"));
    command
}

/// `copyimg` of the docker-save `tar` into the instance's storage as `name`.
fn import(copyimg: &Path, dir: &Path, driver: &str, name: &str, tar: &Path) {
    let out = Command::new(copyimg)
        .arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("runroot"))
        .args(["--storage-driver", driver])
        .arg("--signature-policy")
        .arg(dir.join("policy.json"))
        .args(["--image-name", name])
        .arg("--import-from")
        .arg(format!("docker-archive:{}", tar.display()))
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", copyimg.display()));
    if !out.status.success() {
        panic!(
            "copyimg of {} into CRI-O's storage failed: {}",
            tar.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// Writes `crio.conf`, the signature policy and the empty drop-in dir for the instance in
/// `dir` (the CNI conflist is [`cri::cni_network`]'s).
fn write_config(dir: &Path, socket: &Path, driver: &str, pinns: &Path) {
    let d = dir.display();
    let config = format!(
        r#"[crio]
root = "{d}/storage"
runroot = "{d}/runroot"
storage_driver = "{driver}"
log_dir = "{d}/pods"
version_file = "{d}/run/version"
version_file_persist = "{d}/lib/version"
clean_shutdown_file = "{d}/lib/clean.shutdown"

[crio.api]
listen = "{socket}"
stream_address = "127.0.0.1"
stream_port = "0"

[crio.runtime]
default_runtime = "runc"
conmon = "/usr/bin/conmon"
conmon_cgroup = "pod"
cgroup_manager = "cgroupfs"
container_exits_dir = "{d}/run/exits"
container_attach_socket_dir = "{d}/run"
namespaces_dir = "{NAMESPACES_DIR}"
pinns_path = "{pinns}"
hooks_dir = []
cdi_spec_dirs = []
default_mounts_file = ""
decryption_keys_path = "{d}/keys"
irqbalance_config_file = "{d}/irqbalance"
irqbalance_config_restore_file = "disable"
enable_criu_support = false

[crio.runtime.runtimes.runc]
runtime_path = "/usr/sbin/runc"
runtime_root = "{d}/runc"
runtime_type = "oci"
monitor_path = "/usr/bin/conmon"

[crio.image]
pause_image = "{PAUSE_IMAGE}"
signature_policy = "{d}/policy.json"

[crio.network]
network_dir = "{d}/net.d"
plugin_dirs = ["/usr/lib/cni"]

[crio.metrics]
enable_metrics = false

[crio.nri]
enable_nri = false
"#,
        socket = socket.display(),
        pinns = pinns.display(),
    );
    cri::write_file(&dir.join("crio.conf"), &config);
    cri::write_file(
        &dir.join("policy.json"),
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    );
    std::fs::create_dir_all(dir.join("crio.conf.d"))
        .unwrap_or_else(|err| panic!("cannot create {d}/crio.conf.d: {err}"));
}
