//! systemd's side of a service, for tests: a real journald, and a stand-in for the notify socket.
//!
//! podagent logs natively to journald and talks to systemd through `sd_notify`; a test host has
//! neither a systemd nor a journald running. journald can run on its own, but only at the fixed
//! socket `/run/systemd/journal/socket`, so [`Journald`] is shared: the first user starts it if
//! nothing serves that socket, later users (in this process) share it, a journald that was
//! already there is reused and never stopped, and ours is stopped, by PID, when the last user
//! drops it. [`NotifySocket`] binds a datagram socket in a temp dir, to be passed as
//! `NOTIFY_SOCKET`, and records every notification with the time it arrived.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::prereq;

/// journald's native-protocol socket; fixed, whoever runs journald.
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";
const JOURNALD_BINARY: &str = "/lib/systemd/systemd-journald";
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether something answers on journald's socket (a datagram is accepted).
fn socket_served() -> bool {
    UnixDatagram::unbound().is_ok_and(|s| s.send_to(b"", JOURNALD_SOCKET).is_ok())
}

/// The journald a test writes to; see the module docs for who starts and stops it.
#[derive(Clone)]
pub struct Journald {
    _shared: Arc<Instance>,
}

struct Instance {
    /// The journald this process started, if it had to.
    started: Option<Child>,
    /// Socket files under /run/systemd/journal that our journald created, removed after it.
    created: Vec<PathBuf>,
}

/// The sockets journald creates in /run/systemd/journal when it runs without systemd.
const JOURNALD_SOCKETS: &[&str] = &["socket", "stdout", "dev-log", "io.systemd.journal"];

fn journald_socket_files() -> impl Iterator<Item = PathBuf> {
    JOURNALD_SOCKETS
        .iter()
        .map(|name| Path::new("/run/systemd/journal").join(name))
}

impl Drop for Instance {
    fn drop(&mut self) {
        let Some(child) = self.started.take() else {
            return;
        };
        stop(child);
        for path in &self.created {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// SIGTERM to the journald we started, SIGKILL if it lingers, and reap it.
fn stop(mut child: Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

static SHARED: Mutex<Weak<Instance>> = Mutex::new(Weak::new());

impl Journald {
    /// A journald serving [`JOURNALD_SOCKET`]: the running one, or one started now. Panics
    /// naming what is missing, or when journald does not come up.
    pub fn ensure() -> Journald {
        prereq::require_root();
        prereq::require_path(Path::new(JOURNALD_BINARY), "the Debian package systemd");
        prereq::require_command("journalctl", "systemd");
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(instance) = shared.upgrade() {
            return Journald { _shared: instance };
        }
        let instance = Arc::new(if socket_served() {
            Instance {
                started: None,
                created: Vec::new(),
            }
        } else {
            // A socket file nobody serves (a journald killed earlier) is replaced, not ours to
            // keep; the others are ours to remove if they appear only now.
            let before: Vec<PathBuf> = journald_socket_files()
                .filter(|p| p.exists() && p.as_path() != Path::new(JOURNALD_SOCKET))
                .collect();
            let child = start_journald();
            Instance {
                started: Some(child),
                created: journald_socket_files()
                    .filter(|p| !before.contains(p))
                    .collect(),
            }
        });
        *shared = Arc::downgrade(&instance);
        Journald { _shared: instance }
    }

    /// Journal entries matching every `FIELD=value` in `matches`, oldest first, as
    /// `journalctl -o json` prints them.
    pub fn entries(&self, matches: &[String]) -> Vec<Value> {
        let output = Command::new("journalctl")
            .args(["-o", "json", "--no-pager", "--quiet"])
            .args(matches)
            .output()
            .unwrap_or_else(|err| panic!("cannot run journalctl: {err}"));
        if !output.status.success() {
            panic!(
                "journalctl {matches:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits up to `timeout` for entries matching `matches` that satisfy `done`; returns the
    /// last read either way (journald writes asynchronously).
    pub fn wait_for(
        &self,
        matches: &[String],
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let entries = self.entries(matches);
            if done(&entries) || Instant::now() >= deadline {
                return entries;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn start_journald() -> Child {
    // A socket file nobody serves (journald killed earlier) would make the new one fail to bind.
    match std::fs::remove_file(JOURNALD_SOCKET) {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => panic!("cannot remove the stale {JOURNALD_SOCKET}: {err}"),
    }
    let mut child = Command::new(JOURNALD_BINARY)
        .env("SYSTEMD_LOG_TARGET", "console")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {JOURNALD_BINARY}: {err}"));
    let deadline = Instant::now() + START_TIMEOUT;
    while !socket_served() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{JOURNALD_BINARY} exited at start: {status}");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{JOURNALD_BINARY} did not serve {JOURNALD_SOCKET} within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// One datagram line received on the notify socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub at: Instant,
    /// One `KEY=value` line, e.g. `READY=1`.
    pub line: String,
}

/// A stand-in for systemd's notify socket: pass [`NotifySocket::path`] as `NOTIFY_SOCKET`.
pub struct NotifySocket {
    dir: tempfile::TempDir,
    received: Arc<Mutex<Vec<Notification>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl NotifySocket {
    /// Binds the socket and starts collecting datagrams.
    pub fn bind() -> NotifySocket {
        let dir = tempfile::Builder::new()
            .prefix("pa-notify")
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a temp dir for the notify socket: {err}"));
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path)
            .unwrap_or_else(|err| panic!("cannot bind {}: {err}", path.display()));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap_or_else(|err| panic!("cannot set a read timeout on the notify socket: {err}"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader =
            {
                let (received, stop) = (received.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let Ok(n) = socket.recv(&mut buf) else {
                            continue;
                        };
                        let at = Instant::now();
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let mut all = received.lock().unwrap_or_else(|p| p.into_inner());
                        all.extend(text.lines().filter(|l| !l.is_empty()).map(|line| {
                            Notification {
                                at,
                                line: line.to_string(),
                            }
                        }));
                    }
                })
            };
        NotifySocket {
            dir,
            received,
            stop,
            reader: Some(reader),
        }
    }

    /// The socket's path, for `NOTIFY_SOCKET`.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("notify.sock")
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Notification> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits up to `timeout` for a line that `matches`, returning the first such line.
    pub fn wait_for(
        &self,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Option<Notification> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.received().into_iter().find(|n| matches(&n.line)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines equal to `line` received at or after `since`.
    pub fn count_since(&self, line: &str, since: Instant) -> usize {
        self.received()
            .iter()
            .filter(|n| n.at >= since && n.line == line)
            .count()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_records_each_line_of_a_datagram() {
        let notify = NotifySocket::bind();
        let client = UnixDatagram::unbound().expect("socket");
        client
            .send_to(b"READY=1\nSTATUS=up\n", notify.path())
            .expect("send");
        let status = notify.wait_for(Duration::from_secs(5), |l| l.starts_with("STATUS="));
        assert_eq!(status.map(|n| n.line).as_deref(), Some("STATUS=up"));
        let lines: Vec<String> = notify.received().into_iter().map(|n| n.line).collect();
        assert_eq!(lines, ["READY=1", "STATUS=up"]);
    }

    #[test]
    fn journald_keeps_what_a_native_client_sends() {
        let journald = Journald::ensure();
        let marker = format!("testkit-{}-{:?}", std::process::id(), Instant::now());
        let client = UnixDatagram::unbound().expect("socket");
        let entry =
            format!("MESSAGE=hello\nSYSLOG_IDENTIFIER=testkit-journal\nTESTKIT_MARKER={marker}\n");
        client
            .send_to(entry.as_bytes(), JOURNALD_SOCKET)
            .expect("send to journald");
        let matches = [format!("TESTKIT_MARKER={marker}")];
        let entries = journald.wait_for(&matches, Duration::from_secs(10), |e| !e.is_empty());
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0]["MESSAGE"], "hello");
    }
}
