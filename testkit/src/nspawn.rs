//! A node with a real systemd as PID 1: the Debian 12 root file system that
//! `scripts/setup-test-host.sh` builds (systemd, containerd, docker.io, the CNI plugins, rpm),
//! booted with `systemd-nspawn`, for tests of podagent installed and run as systemd runs it.
//!
//! The whole node lives inside: containerd and dockerd run as that systemd's own services, as
//! podagent's do, because nspawn's PID namespace hides host processes (a Docker sandbox's
//! `/proc/<pid>/ns/net` on the host would not exist inside). The container shares the host's
//! network namespace, so podagent inside reaches the control plane on loopback, and the links
//! the plugins make on the node side (bridges) are host links: the fixture deletes the ones it
//! is told of. The root file system is booted read-only under a throwaway overlay
//! (`--volatile=overlay`), so every machine starts from the same node and leaves the cache as
//! it was; the runtimes' state dirs are bound from a temp dir of the host (their overlay
//! snapshots cannot live on the overlay root), and so is `/opt/podagent-test`, where a test
//! puts what it hands in (packages, plugins, credentials) and finds what plugins log.
//!
//! nspawn cannot register with a host systemd (there is none), so `machinectl` and
//! `journalctl -M` do not work: everything inside runs through `nsenter -t <PID 1> -a`, which
//! enters all of the machine's namespaces, and the runtimes' sockets are reached from the host
//! through `/proc/<PID 1>/root`. Teardown, also when the test panics: sandboxes are removed
//! through the machine's containerd (so CNI DEL runs), Docker containers through its dockerd,
//! the nspawn process (its own process group) gets SIGTERM, which shuts the machine down, then
//! SIGKILL if it lingers; the links are deleted and the temp dir removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::host::process;
use crate::host::{CniNetwork, CriSocket, PAUSE_IMAGE, cni_network, image_tar, import_image};
use crate::prereq;

/// Where the setup script points at the current root file system (`<dir>/root`).
pub const ROOTFS: &str = "/var/lib/podagent-test/rootfs/bookworm";

/// Where a test's files are inside the machine (bound from the host's [`Machine::share`]).
pub const SHARE: &str = "/opt/podagent-test";

/// How long boot and shutdown may take.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(15);

/// A booted machine; shut down and removed on drop.
pub struct Machine {
    name: String,
    dir: tempfile::TempDir,
    nspawn: Child,
    pid1: u32,
    links: Mutex<Vec<String>>,
    /// containerd's own CNI network (sandboxes' eth0): its bridge and subnet, held while it runs.
    _network: CniNetwork,
}

impl Machine {
    /// Boots the node, waits until its systemd reports the system running (containerd and
    /// dockerd started), and imports the pause image into its containerd, whose CNI network (a
    /// bridge of its own on a leased subnet, as for the private containerd) gives sandboxes
    /// their eth0. Panics naming what is missing, or with the console log.
    pub fn boot() -> Machine {
        prereq::require_root();
        prereq::require_command("systemd-nspawn", "systemd-container");
        prereq::require_command("nsenter", "util-linux");
        prereq::require_command("ctr", "containerd");
        let root = Path::new(ROOTFS).join("root");
        prereq::require_path(
            &root.join("usr/lib/systemd/systemd"),
            "the node root file system scripts/setup-test-host.sh builds with debootstrap",
        );
        let name = crate::netns::unique_name("node");
        let dir = tempfile::Builder::new()
            .prefix("pa-nspawn")
            .tempdir()
            .expect("a temp dir for the machine");
        let mut binds = Vec::new();
        for (host, inside) in [
            ("containerd", "/var/lib/containerd"),
            ("docker", "/var/lib/docker"),
            ("net.d", "/etc/cni/net.d"),
            ("share", SHARE),
        ] {
            let host = dir.path().join(host);
            fs::create_dir_all(&host).expect("a bind dir");
            binds.push(format!("--bind={}:{inside}", host.display()));
        }
        // Into the dir bound at /etc/cni/net.d (its IPAM data stays inside the machine).
        let network = cni_network(dir.path());
        let console = fs::File::create(dir.path().join("console.log")).expect("console log");
        let mut command = Command::new("systemd-nspawn");
        command
            .args(["--boot", "--directory"])
            .arg(&root)
            .args(["--machine", &name, "--register=no", "--keep-unit"])
            .args(["--console=pipe", "--capability=all", "--volatile=overlay"])
            // runc gives every container a session keyring, which nspawn's filter refuses
            // (keyrings are not namespaced); a real node allows it.
            .arg("--system-call-filter=@keyring")
            .args(&binds)
            // Sysctls under /proc/sys (the bridge plugin writes some) and one ROOTFS shared by
            // machines (each has its own overlay).
            .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "1")
            .env("SYSTEMD_NSPAWN_LOCK", "0")
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("console log"))
            .stderr(console);
        use std::os::unix::process::CommandExt;
        let nspawn = command
            .process_group(0)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start systemd-nspawn: {err}"));
        let mut machine = Machine {
            name,
            dir,
            pid1: 0,
            nspawn,
            links: Mutex::new(Vec::new()),
            _network: network,
        };
        machine.pid1 = machine.wait_for_pid1();
        let state = machine.wait_for_boot();
        if state != "running" {
            // Not `run`: with systemd not answering, that would panic in place of this.
            let failed = machine.exec(&["systemctl", "--failed", "--no-pager"]);
            panic!(
                "machine {} booted {state:?}, not running; failed units:\n{}{}\nconsole:\n{}",
                machine.name,
                String::from_utf8_lossy(&failed.stdout),
                String::from_utf8_lossy(&failed.stderr),
                machine.console()
            );
        }
        machine.make_cgroups_writable();
        import_image(machine.containerd().socket(), &image_tar(PAUSE_IMAGE));
        machine
    }

    /// The machine's name (also its hostname).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host dir bound at [`SHARE`] inside.
    pub fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    /// The host's path to `inside`, a path in the machine's file system without symlinks on
    /// the way (an absolute link, such as `/var/run` → `/run`, would resolve on the host).
    pub fn host_path(&self, inside: impl AsRef<Path>) -> PathBuf {
        let inside = inside.as_ref();
        Path::new(&format!("/proc/{}/root", self.pid1))
            .join(inside.strip_prefix("/").unwrap_or(inside))
    }

    /// CRI of the machine's containerd (`/run/containerd/containerd.sock` inside).
    pub fn containerd(&self) -> CriSocket {
        CriSocket::new(
            "the machine's containerd",
            self.host_path("/run/containerd/containerd.sock"),
        )
    }

    /// Creates a pod sandbox in the machine's containerd the way the kubelet does; its id.
    pub async fn run_pod_sandbox(&self, uid: &str, name: &str, namespace: &str) -> String {
        let log_dir = Path::new("/var/log/pods").join(uid);
        fs::create_dir_all(self.host_path(&log_dir)).expect("the sandbox's log dir");
        self.containerd()
            .try_run_pod_sandbox(uid, name, namespace, &log_dir)
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "RunPodSandbox for pod {namespace}/{name} in machine {} failed: {status}; \
                     containerd's journal:\n{}",
                    self.name,
                    self.run(&["journalctl", "-u", "containerd", "-n", "30", "--no-pager"])
                )
            })
    }

    /// The host's path to sandbox `id`'s netns file (which the machine's containerd names by
    /// its own path).
    pub async fn sandbox_netns(&self, id: &str) -> PathBuf {
        let inside = self.containerd().sandbox_netns(id).await;
        let real = self.run(&["realpath", "-e", &inside.to_string_lossy()]);
        self.host_path(real.trim())
    }

    /// Deletes host link `name` on drop (a bridge a plugin inside made on the node side).
    pub fn own_link(&self, name: &str) {
        self.links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(name.to_owned());
    }

    /// Runs `args` inside the machine (all its namespaces); its output, whatever its status.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a", "--"])
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("cannot run nsenter for {args:?}: {err}"))
    }

    /// Runs `args` inside the machine and returns its stdout; panics with its output when it
    /// fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "`{}` in machine {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl show -p PROPERTY --value UNIT` inside.
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        self.run(&["systemctl", "show", "-p", property, "--value", unit])
            .trim()
            .to_owned()
    }

    /// The machine's journal for `unit`, one JSON object per entry.
    pub fn journal(&self, unit: &str) -> Vec<serde_json::Value> {
        self.run(&["journalctl", "-u", unit, "-o", "json", "--no-pager"])
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// What nspawn and the machine's console printed.
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// nspawn mounts the cgroup v1 controllers read-only inside, where runc (as on a node)
    /// makes each sandbox's cgroup: remounted writable in the machine's mount namespace. They
    /// show the machine's own part of each hierarchy (nspawn gives it a cgroup namespace).
    fn make_cgroups_writable(&self) {
        let mounts = fs::read_to_string(format!("/proc/{}/mounts", self.pid1)).expect("mounts");
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [_, target, "cgroup", options, ..] = fields.as_slice()
                && options.split(',').any(|o| o == "ro")
                && !options.split(',').any(|o| o == "name=systemd")
            {
                self.run(&["mount", "-o", "remount,bind,rw", target]);
            }
        }
    }

    /// `systemctl is-system-running --wait` once systemd answers on its bus at all (right after
    /// it starts, the socket is not there yet, and systemctl then says `offline`).
    fn wait_for_boot(&self) -> String {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let out = self.exec(&["systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let answered = !state.is_empty() && state != "offline";
            if answered || Instant::now() > deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The machine's PID 1 (nspawn's child), once it runs systemd.
    fn wait_for_pid1(&mut self) -> u32 {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let nspawn = self.nspawn.id();
        loop {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                panic!(
                    "systemd-nspawn exited ({status}) before the machine booted:\n{}",
                    self.console()
                );
            }
            let children = fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
                .unwrap_or_default();
            if let Some(pid) = children
                .split_whitespace()
                .filter_map(|pid| pid.parse::<u32>().ok())
                .find(|pid| {
                    fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "systemd")
                })
            {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "machine {} did not start systemd within {BOOT_TIMEOUT:?}:\n{}",
                self.name,
                self.console()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if matches!(self.nspawn.try_wait(), Ok(None)) {
            // The runtimes take their sandboxes' netns and CNI allocations down themselves.
            let _ = self.containerd().remove_all_sandboxes();
            let listed = self.exec(&["docker", "ps", "-aq"]);
            for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
                let _ = self.exec(&["docker", "rm", "-f", id]);
            }
            let group = Pid::from_raw(self.nspawn.id() as i32);
            let _ = killpg(group, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while matches!(self.nspawn.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = killpg(group, Signal::SIGKILL);
            let _ = self.nspawn.wait();
        }
        for link in self
            .links
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            process::delete_link(link);
        }
        process::unmount_under(self.dir.path());
    }
}
