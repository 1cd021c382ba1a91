//! The pieces both daemon fixtures share: the daemon process, the sweep of what a daemon may
//! leave behind (shims, mounts, netns files, links), and unique IPAM subnets.
//!
//! Cleanup is by identity, never by name pattern over the whole host: the daemon is the process
//! group we spawned, leftovers are processes whose command line names our private instance dir,
//! mounts are those under that dir, and netns files and links are the ones we recorded.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long a daemon gets to exit on SIGTERM before its group is killed. containerd's SIGTERM
/// handling waits for connected gRPC clients to hang up, which a client on a runtime blocked by
/// a synchronous `Drop` cannot do; a node's service manager would SIGKILL it too, only later.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A daemon we spawned as the leader of its own process group, with its output in a log file.
#[derive(Debug)]
pub(crate) struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
    stopped: bool,
}

impl Daemon {
    /// Spawns `command` in a new process group, stdout and stderr appended to `log`.
    pub(crate) fn spawn(name: &'static str, mut command: Command, log: &Path) -> Daemon {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|err| panic!("cannot open {name} log {}: {err}", log.display()));
        let err_out = out
            .try_clone()
            .unwrap_or_else(|err| panic!("cannot clone {name} log handle: {err}"));
        // Its own group, so stopping it signals exactly what we started (and not the test).
        use std::os::unix::process::CommandExt;
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err_out)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name} ({command:?}): {err}"));
        Daemon {
            name,
            child,
            log: log.to_path_buf(),
            stopped: false,
        }
    }

    /// The daemon's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the end of the daemon's log when it has exited.
    pub(crate) fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.stopped = true;
            panic!(
                "{} exited during the test ({status}); last log lines:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// The last lines of the daemon's log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Sends SIGTERM to the daemon's group, waits for the leader, kills the group if it lingers,
    /// and reaps the leader. Safe to call twice. Blocks the thread: for `Drop`.
    pub(crate) fn stop(&mut self) {
        if self.begin_stop() {
            let deadline = Instant::now() + STOP_GRACE;
            while !self.exited_or_past(deadline) {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.finish_stop();
        }
    }

    /// [`Daemon::stop`] for async callers: while it waits, the caller's runtime keeps serving
    /// its connections to the daemon, whose graceful shutdown waits for clients to hang up.
    pub(crate) async fn stop_async(&mut self) {
        if self.begin_stop() {
            let deadline = Instant::now() + STOP_GRACE;
            while !self.exited_or_past(deadline) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.finish_stop();
        }
    }

    /// Sends SIGTERM to the group unless already stopped; whether there is something to wait for.
    fn begin_stop(&mut self) -> bool {
        if self.stopped {
            return false;
        }
        self.stopped = true;
        let _ = killpg(self.group(), Signal::SIGTERM);
        true
    }

    fn exited_or_past(&mut self, deadline: Instant) -> bool {
        !matches!(self.child.try_wait(), Ok(None)) || Instant::now() >= deadline
    }

    fn finish_stop(&mut self) {
        // The leader is a zombie or still running until reaped, so its pid (the group id) cannot
        // have been reused: killing the group here reaches only what we started.
        let _ = killpg(self.group(), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    fn group(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every process on the host but this one: its pid and command line (arguments joined by
/// spaces). For finding what a fixture started by identity: its dir in the command line, its
/// network namespace.
pub fn processes() -> Vec<(i32, String)> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (pid != me).then(|| (i32::try_from(pid).ok(), cmdline.trim_end().to_owned()))
        })
        .filter_map(|(pid, cmdline)| Some((pid?, cmdline)))
        .collect()
}

/// The processes whose network namespace is the one pinned at `netns` (a pod's sandbox and
/// containers).
pub fn processes_in_netns(netns: &Path) -> Vec<(i32, String)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(pinned) = fs::metadata(netns) else {
        return Vec::new();
    };
    processes()
        .into_iter()
        .filter(|(pid, _)| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|ns| ns.ino() == pinned.ino() && ns.dev() == pinned.dev())
        })
        .collect()
}

/// The processes whose command line mentions `dir` (with a trailing slash, so a sibling dir
/// sharing its name as a prefix never matches, or as the whole last argument).
pub fn processes_naming(dir: &Path) -> Vec<(i32, String)> {
    let dir = dir.display().to_string();
    let inside = format!("{dir}/");
    processes()
        .into_iter()
        .filter(|(_, cmdline)| {
            cmdline.contains(&inside) || cmdline.split(' ').any(|arg| arg == dir)
        })
        .collect()
}

/// Kills every process whose command line mentions `dir` (containerd shims name their daemon's
/// socket, docker's managed containerd its config) and waits until they are gone. They were
/// started by our daemon but left its process group, so the group kill does not reach them.
pub(crate) fn kill_processes_naming(dir: &Path) {
    let mut victims = Vec::new();
    for (pid, _) in processes_naming(dir) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        victims.push(pid.unsigned_abs());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while victims.iter().any(|pid| is_alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process with this pid exists and is not a zombie.
pub(crate) fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; it follows the parenthesised command, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The mount points at or under `dir`, deepest first, from `/proc/self/mountinfo`.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .filter(|mount| mount.starts_with(dir))
        .collect();
    mounts.sort_by_key(|mount| std::cmp::Reverse(mount.as_os_str().len()));
    mounts.dedup();
    mounts
}

/// Detaches every mount at or under `dir` (overlay rootfs, shm, netns bind mounts).
pub(crate) fn unmount_under(dir: &Path) {
    for mount in mounts_under(dir) {
        let _ = umount2(&mount, MntFlags::MNT_DETACH);
    }
}

/// `command`, run by `nsenter` in the mount namespace `ns` (a `/proc/<pid>/ns/mnt` file): the
/// same program, arguments, environment and working dir. The process keeps the pid nsenter had,
/// as nsenter execs it.
pub(crate) fn in_mount_ns(ns: &Path, command: &Command) -> Command {
    let mut entered = Command::new("nsenter");
    entered
        .arg(format!("--mount={}", ns.display()))
        .arg("--")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => entered.env(key, value),
            None => entered.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        entered.current_dir(dir);
    }
    entered
}

/// Removes a netns bind-mount file (`/var/run/netns/cni-…`) the runtime failed to remove.
pub(crate) fn remove_netns_file(path: &Path) {
    if path.exists() {
        let _ = umount2(path, MntFlags::MNT_DETACH);
        let _ = fs::remove_file(path);
    }
}

/// Deletes a host link by name; absence is fine (the runtime may have removed it already).
pub(crate) fn delete_link(name: &str) {
    let _ = Command::new("ip")
        .args(["link", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Runs `future` to completion on a fresh runtime in a scoped thread. `Drop` cannot await, and
/// may run inside a test's current-thread runtime where blocking on that runtime would deadlock.
pub(crate) fn block_on_aside<F>(future: F) -> Option<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()
                    .map(|runtime| runtime.block_on(future))
            })
            .join()
            .ok()
            .flatten()
    })
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes
                .get(i + 1..i + 4)
                .and_then(|digits| std::str::from_utf8(digits).ok())
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Leaves at `path` a unix socket file nobody accepts on, as a daemon that died leaves it, and
/// returns once connecting there is refused. A child that another test thread forks while the
/// listener is open holds a copy of it until it execs, and a connect in that window is accepted
/// and then reset; a test that expected "nothing listening" then saw "connection reset".
pub fn stale_socket(path: &Path) {
    drop(
        std::os::unix::net::UnixListener::bind(path)
            .unwrap_or_else(|err| panic!("cannot bind {}: {err}", path.display())),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(
        std::os::unix::net::UnixStream::connect(path),
        Err(err) if err.kind() == ErrorKind::ConnectionRefused
    ) {
        assert!(
            Instant::now() < deadline,
            "{} still accepts connections 10 s after its listener was closed",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where leases are recorded: one file per taken /24, holding the owner's pid.
const LEASE_DIR: &str = "/run/podagent-test/subnets";

static LEASE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A /24 inside 198.19.0.0/16 that no other live test process holds, released on drop.
///
/// Two instances with the same subnet would hand out the same addresses; parallel test binaries
/// share the host, so the lease is a file created exclusively under `/run`, reclaimed when the
/// pid written in it is dead.
#[derive(Debug)]
pub struct SubnetLease {
    octet: u8,
    file: PathBuf,
}

impl SubnetLease {
    /// Takes a free /24; panics when all 256 are held by live processes.
    pub fn acquire() -> SubnetLease {
        fs::create_dir_all(LEASE_DIR)
            .unwrap_or_else(|err| panic!("cannot create {LEASE_DIR}: {err}"));
        let start = std::process::id()
            .wrapping_mul(7)
            .wrapping_add(LEASE_COUNTER.fetch_add(1, Ordering::Relaxed));
        for step in 0..256u32 {
            let octet = ((start + step) % 256) as u8;
            let file = Path::new(LEASE_DIR).join(octet.to_string());
            if try_take(&file) {
                return SubnetLease { octet, file };
            }
            let owner = fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            if owner.is_some_and(|pid| !is_alive(pid)) {
                let _ = fs::remove_file(&file);
                if try_take(&file) {
                    return SubnetLease { octet, file };
                }
            }
        }
        panic!("no free /24 left in 198.19.0.0/16 (leases in {LEASE_DIR})");
    }

    /// The leased subnet, `198.19.<n>.0/24`.
    pub fn subnet(&self) -> String {
        format!("198.19.{}.0/24", self.octet)
    }

    /// The prefix every address in the subnet starts with, `198.19.<n>.`.
    pub fn address_prefix(&self) -> String {
        format!("198.19.{}.", self.octet)
    }

    /// A locally administered MAC of the lease's own, `02:70:61:13:00:<n>`: unique among live
    /// leases, as the subnet is.
    pub fn mac(&self) -> String {
        format!("02:70:61:13:00:{:02x}", self.octet)
    }
}

impl Drop for SubnetLease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
    }
}

/// Creates the lease file exclusively and writes our pid into it.
fn try_take(file: &Path) -> bool {
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
    {
        Ok(mut handle) => {
            use std::io::Write;
            let _ = write!(handle, "{}", std::process::id());
            true
        }
        Err(err) if err.kind() == ErrorKind::AlreadyExists => false,
        Err(err) => panic!("cannot create lease {}: {err}", file.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn leases_are_distinct_and_released() {
        crate::prereq::require_root();
        let a = SubnetLease::acquire();
        let b = SubnetLease::acquire();
        assert_ne!(a.subnet(), b.subnet());
        let file = a.file.clone();
        assert!(file.exists());
        drop(a);
        assert!(!file.exists());
    }
}
