//! A node's root file system for a podagent container to mount at `cni.host_root`.
//!
//! A DaemonSet mounts the node's `/` into podagent's container and podagent runs plugins
//! chrooted into it. The test machine's own `/` would do, but its `/opt/cni/bin`,
//! `/var/lib/cni` and `/run/xtables.lock` are the machine's, not the test node's. So this root
//! is the machine's for everything a plugin runs with (`/usr` with the Debian plugins and their
//! libraries, `/etc`, `/dev`, `/proc`, `/sys`, network namespaces) and the test node's for the
//! paths a node's CNI keeps state in. Everything is bind-mounted; dropping it unmounts all.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The directory runtimes keep their network namespace mounts in.
const NETNS_DIR: &str = "/var/run/netns";

/// The root; unmounted (lazily, whole trees) on drop.
pub struct NodeRoot {
    dir: PathBuf,
    mounts: Vec<PathBuf>,
}

impl NodeRoot {
    /// Builds the root in `dir` (created): the machine's `/usr`, `/etc`, `/dev`, `/proc`,
    /// `/sys` and `/var/run/netns` (with later mounts showing), its top-level links into
    /// `/usr`, and each of `own` (a path in the root, the test node's file or directory there).
    /// Panics naming the mount that failed.
    pub fn build(dir: &Path, own: &[(&str, &Path)]) -> NodeRoot {
        let mut root = NodeRoot {
            dir: dir.to_owned(),
            mounts: Vec::new(),
        };
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        // A mount point of its own, shared as a systemd node's `/` is: Docker refuses a
        // `rslave` volume whose source is on a private mount.
        root.bind(dir, "");
        share(dir).unwrap_or_else(|e| panic!("make {} a shared mount: {e}", dir.display()));
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            match fs::read_link(&host) {
                Ok(target) => symlink(&target, dir.join(top))
                    .unwrap_or_else(|e| panic!("link {top} -> {}: {e}", target.display())),
                Err(_) if host.is_dir() => root.bind(&host, top),
                Err(_) => {}
            }
        }
        for shared in ["/usr", "/etc", "/dev", "/proc", "/sys"] {
            root.bind(Path::new(shared), &shared[1..]);
            root.read_only(&shared[1..]);
        }
        fs::create_dir_all(dir.join("tmp")).expect("mkdir tmp");
        shared_netns_dir();
        root.bind(Path::new(NETNS_DIR), &NETNS_DIR[1..]);
        for (at, source) in own {
            root.bind(source, at.trim_start_matches('/'));
        }
        root
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes the bind at `at` read-only (its submounts stay as they are): what the test node
    /// shares with the machine is not the test's to change.
    fn read_only(&self, at: &str) {
        let target = self.dir.join(at);
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("make {} read-only: {e}", target.display()));
    }

    /// Bind-mounts `source` (with its submounts) at `at` in the root.
    fn bind(&mut self, source: &Path, at: &str) {
        let target = self.dir.join(at);
        if source.is_dir() {
            fs::create_dir_all(&target)
        } else {
            fs::create_dir_all(target.parent().expect("a parent"))
                .and_then(|()| fs::write(&target, ""))
        }
        .unwrap_or_else(|e| panic!("create {}: {e}", target.display()));
        mount(
            Some(source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("bind {} at {}: {e}", source.display(), target.display()));
        self.mounts.push(target);
    }
}

impl Drop for NodeRoot {
    fn drop(&mut self) {
        for target in self.mounts.iter().rev() {
            if let Err(e) = umount2(target, MntFlags::MNT_DETACH) {
                // The root's directory is removed with the test node's: still mounted, that
                // would remove the machine's own files.
                eprintln!(
                    "cannot unmount {}: {e}; aborting before the test node's directory is removed",
                    target.display()
                );
                std::process::abort();
            }
        }
    }
}

/// Makes the netns dir a shared mount point, as containerd does before its first network
/// namespace, so a bind of it (and a container's slave of that) sees namespaces made later.
fn shared_netns_dir() {
    let dir = Path::new(NETNS_DIR);
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {NETNS_DIR}: {e}"));
    if share(dir).is_err() {
        // Not a mount point yet: bind it onto itself first.
        mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| share(dir))
        .unwrap_or_else(|e| panic!("make {NETNS_DIR} a shared mount: {e}"));
    }
}

/// Makes the mount point `dir` (and its submounts) shared.
fn share(dir: &Path) -> nix::Result<()> {
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
}
