//! The mount namespace a kubelet node's kubelet and runtime share.
//!
//! A kubelet mounts things (its root dir rshared, every pod's volumes), writes links into
//! `/var/log/containers` and sysctls into `/proc/sys`; its containerd bind-mounts the volumes
//! into containers, so the two must see one mount table. Giving them one of their own keeps all
//! of it off the host: the mounts die with the namespace, `/var/log` inside is a dir of the
//! node's, `/etc`, `/opt` and `/var/lib` are overlays whose writes land in the node's dir (the
//! kubelet puts its device-plugin socket in `/var/lib/kubelet` whatever its root dir, containerd
//! makes `/opt/containerd`, a DaemonSet's `DirectoryOrCreate` volumes are made there; the node
//! has `/opt/cni/bin` and `/etc/cni/net.d` as a node has), and the six sysctls the kubelet
//! insists on (`setupKernelTunables`) are files of the node's bind-mounted over their
//! `/proc/sys` entries, holding the values it wants, so it finds them set and writes nothing (it
//! would otherwise set `vm.overcommit_memory`, `kernel.panic` and `kernel.panic_on_oops` on the
//! host, seen on this kind of machine).
//!
//! One mount is shared with the host on purpose: `/run/netns`, where containerd pins each
//! sandbox's network namespace. podagent and the tests run on the host, as a node's own
//! processes do, and must open those files. The namespace is made with propagation unchanged
//! after `/run/netns` is a shared mount point (as iproute2 leaves it after its first `ip netns
//! add`), then every other mount point in it is made private (cut from the host's peer groups)
//! and, once the node's own mounts are made, shared again within the namespace, as a systemd
//! node's mounts are.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::{run_ip, unique_name};

/// The sysctls the kubelet checks at start, with the values it sets when they differ
/// (`pkg/kubelet/cm/container_manager_linux.go`).
const KUBELET_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// What the holder runs inside the new namespace: `$1` is the node's dir.
const SETUP: &str = r#"set -eu
# Every mount point private, but the dir of pinned network namespaces (see the module doc).
while read -r _ _ _ _ point _; do
    point=$(printf '%b' "$point")
    case "$point" in /run/netns | /run/netns/*) continue ;; esac
    mount --make-private "$point"
done </proc/self/mountinfo
mount --bind "$1/log" /var/log
for dir in /etc /opt /var/lib; do
    layer="$1/overlay$dir"
    mkdir -p "$layer/upper" "$layer/work"
    mount -t overlay overlay -o "lowerdir=$dir,upperdir=$layer/upper,workdir=$layer/work" "$dir"
done
# Where a node's runtime and podagent look for plugins and configs (Debian puts the plugins in
# /usr/lib/cni).
[ -e /opt/cni/bin ] || { mkdir -p /opt/cni && ln -s /usr/lib/cni /opt/cni/bin; }
mkdir -p /etc/cni/net.d
# Shared within the namespace, as a systemd node's mounts are: containerd and CRI-O refuse a
# HostToContainer volume (a DaemonSet's node root at /host) of a private mount.
mount --make-rshared /
# No huge page sizes: the kubelet would ask for a hugetlb limit per size, which runc cannot
# set under CRI-O on a cgroup v1 host without the v1 hugetlb controller (containerd drops them).
mount -t tmpfs -o ro,size=4k none /sys/kernel/mm/hugepages
for file in "$1"/sysctl/*; do
    mount --bind "$file" "/proc/sys/$(basename "$file" | tr . /)"
done
: >"$1/mount-ns.ready"
exec sleep infinity
"#;

/// How long setting the namespace up may take.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A mount namespace held open by a `sleep` of ours; it goes when the holder and everything
/// started in it have exited.
#[derive(Debug)]
pub(crate) struct MountNs {
    holder: Child,
}

impl MountNs {
    /// Sets up the namespace for the node whose dir is `dir` (its `log/` becomes `/var/log`
    /// inside, `overlay/<dir>/upper` takes what is written to `/etc`, `/opt`, `/var/lib`).
    /// Panics with the holder's output when a step fails.
    pub(crate) fn create(dir: &Path) -> MountNs {
        share_netns_dir();
        fs::create_dir_all(dir.join("log"))
            .unwrap_or_else(|err| panic!("cannot create {}/log: {err}", dir.display()));
        let sysctls = dir.join("sysctl");
        fs::create_dir_all(&sysctls)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", sysctls.display()));
        for (key, value) in KUBELET_SYSCTLS {
            let file = sysctls.join(key.replace('/', "."));
            fs::write(&file, format!("{value}\n"))
                .unwrap_or_else(|err| panic!("cannot write {}: {err}", file.display()));
        }
        let log = dir.join("mount-ns.log");
        let out = fs::File::create(&log)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", log.display()));
        let err_out = out.try_clone().expect("clone a log handle");
        let holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "unchanged",
                "--",
                "sh",
                "-c",
                SETUP,
            ])
            .arg("sh")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err_out)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start unshare: {err}"));
        let mut ns = MountNs { holder };
        let ready = dir.join("mount-ns.ready");
        let deadline = Instant::now() + READY_TIMEOUT;
        while !ready.exists() {
            let exited = ns.holder.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "setting up the kubelet node's mount namespace failed ({}): {}",
                    exited.map_or("timed out".into(), |status| status.to_string()),
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        ns
    }

    /// The namespace's file, for `nsenter --mount=`.
    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.holder.id()))
    }

    /// `path` as the namespace sees it (through the holder's `/proc/<pid>/root`).
    pub(crate) fn resolve(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder.id())).join(path.trim_start_matches('/'))
    }

    /// Bind-mounts `source` onto `target` inside the namespace: where a node's runtime keeps
    /// its socket and CNI config (`/run/containerd`, `/etc/cni/net.d`), for what mounts those
    /// paths (a DaemonSet). A target under `/run`, which is the host's, is made on the host if
    /// missing, as the runtime itself would make it on its first start.
    pub(crate) fn bind(&self, source: &Path, target: &str) {
        if target.starts_with("/run/") {
            fs::create_dir_all(target)
                .unwrap_or_else(|err| panic!("cannot create {target}: {err}"));
        }
        let out = Command::new("nsenter")
            .arg(format!("--mount={}", self.path().display()))
            .args(["--", "mount", "--bind"])
            .arg(source)
            .arg(target)
            .output()
            .unwrap_or_else(|err| panic!("cannot run nsenter mount: {err}"));
        assert!(
            out.status.success(),
            "binding {} onto {target} in the kubelet node's mount namespace failed: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.holder.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.holder.wait();
    }
}

/// Makes `/run/netns` a shared mount point unless it is one: by `ip netns add` and `del` of a
/// throwaway namespace, so iproute2 does what it does on every host where it is used (bind the
/// dir onto itself and share it), and leaves it the way it always leaves it.
pub(crate) fn share_netns_dir() {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let shared = mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        fields.get(4) == Some(&"/run/netns")
            && fields
                .iter()
                .skip(6)
                .take_while(|f| **f != "-")
                .any(|f| f.starts_with("shared:"))
    });
    if !shared {
        let name = unique_name("shr");
        run_ip(&["netns", "add", &name]);
        run_ip(&["netns", "del", &name]);
    }
}
