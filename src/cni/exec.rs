//! Runs one plugin binary: stdin in, bounded stdout and stderr out, within a deadline.
//!
//! A plugin is third-party code that may hang, fork helpers, flood its output or die by a
//! signal, and none of that may block or bloat the agent. So the plugin starts in its own
//! process group (killing the group also kills the children it forked), stdout is capped (a
//! result is a few KiB; beyond the cap the rest is drained and dropped so the plugin is not
//! stuck on a full pipe), only the tail of stderr is kept (plugins log there, the end is what
//! explains a failure), and the whole run is bounded by the timeout, after which the group is
//! killed and the plugin reaped. No shell is involved: the binary is executed directly.

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use super::error::{CniError, PluginRun};
use super::result::PluginError;

/// More than any CNI result needs; a plugin printing more is broken.
pub(crate) const STDOUT_LIMIT: usize = 1 << 20;
/// How much of the end of stderr an error carries.
const STDERR_TAIL: usize = 2048;
/// How long a SIGKILLed plugin may take to be reaped before it is left to tokio's reaper.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// One plugin run to perform.
pub(crate) struct Invocation<'a> {
    pub(crate) run: &'a PluginRun,
    /// The plugin's path: on the node, inside `root` when there is one.
    pub(crate) binary: &'a Path,
    /// The node's root, to chroot into before the plugin starts (`cni.host_root`).
    pub(crate) root: Option<&'a Path>,
    pub(crate) env: &'a [(String, OsString)],
    pub(crate) stdin: Vec<u8>,
    pub(crate) timeout: Duration,
}

/// What a plugin that exited 0 printed.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) stdout: Vec<u8>,
    /// The end of its stderr, for errors about its stdout.
    pub(crate) stderr: String,
}

/// Runs the plugin and returns its output when it exited 0; every other outcome is an error
/// carrying the stderr tail (the plugin's error object is preferred from stdout, then stderr).
pub(crate) async fn run(inv: Invocation<'_>) -> Result<Output, CniError> {
    let run = || Box::new(inv.run.clone());
    let shown = || super::seen_in(inv.root, inv.binary);
    let mut command = tokio::process::Command::new(inv.binary);
    command
        .env_clear()
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(root) = inv.root {
        chroot_before_exec(&mut command, root).map_err(|source| CniError::Spawn {
            run: run(),
            path: shown(),
            source,
        })?;
    }
    let mut child = command.spawn().map_err(|source| {
        // The lookup just found the file: "not found" is about what it needs to start.
        if source.kind() == std::io::ErrorKind::NotFound {
            CniError::MissingInterpreter {
                run: run(),
                path: shown(),
            }
        } else {
            CniError::Spawn {
                run: run(),
                path: shown(),
                source,
            }
        }
    })?;
    // With process_group(0) the group id is the child's pid.
    let group = GroupKiller::new(child.id());
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let tail = Mutex::new(Tail::default());

    let work = async {
        let feed = async {
            let Some(mut pipe) = stdin else { return Ok(()) };
            match pipe.write_all(&inv.stdin).await {
                // A plugin may exit without reading its config (VERSION, a crash): not our error.
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => other,
            }
        };
        let (fed, out, err, status) = tokio::join!(
            feed,
            read_capped(stdout),
            read_tail(stderr, &tail),
            child.wait()
        );
        fed.and(err)
            .and(status)
            .and_then(|status| Ok((status, out?)))
    };
    let outcome = tokio::time::timeout(inv.timeout, work).await;
    let stderr_tail = tail
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .text();
    match outcome {
        Ok(Ok((status, (stdout, overflowed)))) => {
            group.disarm();
            interpret(inv.run, status, stdout, overflowed, stderr_tail)
        }
        Ok(Err(source)) => {
            // Joined: the plugin was reaped, its group id is no longer ours to signal.
            group.disarm();
            Err(CniError::PluginIo {
                run: run(),
                source,
                stderr: stderr_tail,
            })
        }
        Err(_elapsed) => {
            group.kill();
            match tokio::time::timeout(REAP_GRACE, child.wait()).await {
                Ok(Ok(status)) => {
                    debug!(plugin = %inv.run.plugin, %status, "reaped timed-out plugin")
                }
                _ => {
                    warn!(plugin = %inv.run.plugin, "timed-out plugin not reaped yet; left to the runtime's reaper")
                }
            }
            group.disarm();
            Err(CniError::Timeout {
                run: run(),
                after: inv.timeout,
                stderr: stderr_tail,
            })
        }
    }
}

/// Makes the child enter `root` (and its `/`) between fork and exec, so the plugin and every
/// program it starts (iptables, a shell for a scripted plugin) are the node's.
fn chroot_before_exec(command: &mut tokio::process::Command, root: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let root = std::ffi::CString::new(root.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child, where only async-signal-safe calls are
    // allowed: it makes two system calls, chroot(2) and chdir(2), on C strings built before
    // the fork, and allocates nothing (an error is a bare errno).
    unsafe {
        command.pre_exec(move || {
            nix::unistd::chroot(root.as_c_str())?;
            nix::unistd::chdir(c"/")?;
            Ok(())
        });
    }
    Ok(())
}

fn interpret(
    run: &PluginRun,
    status: ExitStatus,
    stdout: Vec<u8>,
    overflowed: bool,
    stderr: String,
) -> Result<Output, CniError> {
    use std::os::unix::process::ExitStatusExt;
    let boxed = || Box::new(run.clone());
    if overflowed {
        return Err(CniError::OutputTooLarge {
            run: boxed(),
            limit: STDOUT_LIMIT,
            stderr,
        });
    }
    if let Some(signal) = status.signal() {
        return Err(CniError::Killed {
            run: boxed(),
            signal,
            stderr,
        });
    }
    let exit_code = status.code().unwrap_or(-1);
    if exit_code == 0 {
        return Ok(Output { stdout, stderr });
    }
    let parsed = PluginError::parse(&stdout).or_else(|| PluginError::parse(stderr.as_bytes()));
    let (code, msg, details) = match parsed {
        Some(e) => (e.code, e.msg, e.details),
        None if stderr.is_empty() => (
            None,
            "the plugin printed no error message".into(),
            String::new(),
        ),
        // The stderr tail is attached anyway; the message points at it.
        None => (
            None,
            "no CNI error object, see the plugin's stderr".into(),
            String::new(),
        ),
    };
    Err(CniError::Failed {
        run: boxed(),
        exit_code,
        code,
        msg,
        details,
        stderr,
    })
}

/// Reads all of `pipe`, keeping at most [`STDOUT_LIMIT`] bytes; the flag says more came.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut overflowed = false;
    let Some(mut pipe) = pipe else {
        return Ok((kept, overflowed));
    };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = pipe.read(&mut chunk).await?;
        if n == 0 {
            return Ok((kept, overflowed));
        }
        if kept.len() + n <= STDOUT_LIMIT {
            kept.extend_from_slice(&chunk[..n]);
        } else {
            overflowed = true;
        }
    }
}

/// Reads all of `pipe` into `tail`, which survives a timeout that drops this future.
async fn read_tail(
    pipe: Option<impl AsyncRead + Unpin>,
    tail: &Mutex<Tail>,
) -> std::io::Result<()> {
    let Some(mut pipe) = pipe else { return Ok(()) };
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = pipe.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        tail.lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(&chunk[..n]);
    }
}

/// The last [`STDERR_TAIL`] bytes written.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > 2 * STDERR_TAIL {
            let cut = self.0.len() - STDERR_TAIL;
            self.0.drain(..cut);
        }
    }

    fn text(&self) -> String {
        let start = self.0.len().saturating_sub(STDERR_TAIL);
        String::from_utf8_lossy(&self.0[start..]).trim().to_owned()
    }
}

/// Kills the plugin's process group unless disarmed: on timeout, and when the future running
/// the plugin is dropped (agent shutdown, a cancelled reconcile), so no plugin outlives it.
struct GroupKiller(Option<Pid>);

impl GroupKiller {
    fn new(pid: Option<u32>) -> GroupKiller {
        GroupKiller(pid.and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw))
    }

    fn disarm(mut self) {
        self.0 = None;
    }

    /// Called while the plugin is not yet reaped, so its pid (the group id) cannot have been
    /// reused by an unrelated process group.
    fn kill(&self) {
        if let Some(group) = self.0 {
            match killpg(group, Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(err) => warn!(pgid = group.as_raw(), %err, "cannot kill plugin process group"),
            }
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_only_the_end() {
        let mut tail = Tail::default();
        for _ in 0..10 {
            tail.push(&[b'a'; 1000]);
        }
        tail.push(b"the end");
        let text = tail.text();
        assert_eq!(text.len(), STDERR_TAIL);
        assert!(text.ends_with("the end"));
    }

    #[tokio::test]
    async fn capped_read_drains_past_the_limit() {
        let big = vec![b'x'; STDOUT_LIMIT + 10];
        let (kept, overflowed) = read_capped(Some(big.as_slice())).await.unwrap();
        assert!(overflowed);
        assert!(kept.len() <= STDOUT_LIMIT);
        let (kept, overflowed) = read_capped(Some(&b"{}"[..])).await.unwrap();
        assert_eq!((kept.as_slice(), overflowed), (&b"{}"[..], false));
    }
}
