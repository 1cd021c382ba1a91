//! A private containerd with the CRI plugin, for tests that need real pod sandboxes.
//!
//! Everything the daemon owns is under one temp dir: root, state, the gRPC and ttrpc sockets,
//! runc's state (its `Root` option, so nothing lands in the host's `/run/containerd/runc`), the
//! CNI config and the host-local IPAM data. The CNI network is a bridge with a per-instance name
//! and a leased /24 from 198.19.0.0/16, without gateway or masquerade, so no address or rule
//! appears in the host's namespace. `restrict_oom_score_adj` is required on hosts without
//! CAP_SYS_RESOURCE, where runc cannot lower the sandbox's oom_score_adj.
//!
//! The snapshotter is overlayfs, like on real nodes. Where the temp dir cannot hold an overlay
//! upper dir (a test host whose `/tmp` is itself overlayfs, as inside a container, or a kernel
//! without overlay) a probe mount fails and the instance falls back to the `native` snapshotter,
//! which copies layers instead: slower to unpack, identical for sandboxes and their netns.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cri::{self, CriDaemon, Flavor};
use super::images::{BUSYBOX_IMAGE, PAUSE_IMAGE, image_tar};
use crate::prereq;

/// The namespace the CRI plugin keeps its images and sandboxes in.
const CRI_NAMESPACE: &str = "k8s.io";

/// A running private containerd; stopped, and everything it made removed, on drop. The CRI
/// side (sandboxes, restarts) is [`CriDaemon`]'s.
#[derive(Debug)]
pub struct Containerd {
    cri: CriDaemon,
    snapshotter: &'static str,
}

impl Containerd {
    /// Starts a private containerd, waits until CRI answers, and imports the pause and busybox
    /// images into `k8s.io`. Panics naming what is missing (root, containerd, runc, CNI plugins,
    /// images) or, with the daemon's log, when it does not come up.
    pub async fn start() -> Containerd {
        Containerd::start_in(None).await
    }

    /// [`Containerd::start`] in the mount namespace `mount_ns` (a kubelet node's, whose mounts
    /// its containers must see), or in the test's own.
    pub(crate) async fn start_in(mount_ns: Option<PathBuf>) -> Containerd {
        cri::require_common();
        prereq::require_command("containerd", "containerd");
        prereq::require_command("ctr", "containerd");
        let images = [image_tar(PAUSE_IMAGE), image_tar(BUSYBOX_IMAGE)];

        let dir = cri::instance_dir("pa-ctd");
        let socket = dir.join("containerd.sock");
        let snapshotter = if cri::overlay_works(&dir) {
            "overlayfs"
        } else {
            "native"
        };
        let network = cri::cni_network(&dir);
        write_config(&dir, &socket, snapshotter);
        let flavor = Flavor {
            name: "containerd",
            command: daemon_command,
            socket,
            runc_root: dir.join("runc").join(CRI_NAMESPACE),
            pinned_siblings: &[],
            mount_ns,
        };
        let containerd = Containerd {
            cri: CriDaemon::start(flavor, dir, network).await,
            snapshotter,
        };
        for tar in images {
            import_image(containerd.socket(), &tar);
        }
        containerd
    }

    /// The snapshotter in use: `overlayfs`, or `native` where an overlay mount fails.
    pub fn snapshotter(&self) -> &str {
        self.snapshotter
    }
}

impl Deref for Containerd {
    type Target = CriDaemon;

    fn deref(&self) -> &CriDaemon {
        &self.cri
    }
}

impl DerefMut for Containerd {
    fn deref_mut(&mut self) -> &mut CriDaemon {
        &mut self.cri
    }
}

/// `ctr images import` of the docker-save `tar` into the CRI namespace of the containerd at
/// `socket` (a private one, or one inside a booted machine); panics with ctr's error.
pub(crate) fn import_image(socket: &Path, tar: &Path) {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", CRI_NAMESPACE, "images", "import"])
        .arg(tar)
        .output()
        .unwrap_or_else(|err| panic!("cannot run ctr images import: {err}"));
    if !out.status.success() {
        panic!(
            "ctr images import {} into {} failed: {}",
            tar.display(),
            socket.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// The daemon command line: only the config, which names every path.
fn daemon_command(dir: &Path) -> Command {
    let mut command = Command::new("containerd");
    command.arg("--config").arg(dir.join("config.toml"));
    command
}

/// Writes `config.toml` for the instance in `dir` (the CNI conflist is [`cri::cni_network`]'s).
fn write_config(dir: &Path, socket: &Path, snapshotter: &str) {
    let d = dir.display();
    let config = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/net.d"
"#,
        socket = socket.display(),
    );
    cri::write_file(&dir.join("config.toml"), &config);
}
