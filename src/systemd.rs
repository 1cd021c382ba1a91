//! systemd's notify protocol: readiness, status lines, a watchdog fed by real liveness, stopping.
//!
//! `Type=notify` lets systemd (and `systemctl start`) know when podagent can actually do its
//! job, and `WatchdogSec=` lets systemd restart it when it silently stops doing it. A watchdog
//! that pings from a timer proves only that the timer runs; podagent pings only while its two
//! loops show progress:
//!
//! - **the pod watch** beats on every item the watch stream delivers, pod event or bookmark,
//!   and on every re-list. A quiet cluster sends no pod events, so watches ask for bookmarks:
//!   kube-apiserver sends one about 2 s before each watch's `timeoutSeconds` deadline (on a
//!   quiet cluster that is the only item a watch carries), and watches are renewed well within
//!   the staleness limit. An
//!   accepted or cleanly ended watch request is deliberately *not* a beat: a server whose watch
//!   cache is hung still accepts watches and still ends them on time, it just delivers nothing.
//!   A hung server, a dead connection, a hung watch cache or a stuck watch task all stop the
//!   beats.
//! - **the work loop** (the loop that applies watch events and starts reconciles) beats
//!   on every event and on a ticker; a deadlock or a blocked step stops it. A stuck work loop
//!   also stops the watch, whose sends into the bounded event channel then block.
//!
//! The watchdog task pings (`WATCHDOG=1`) at half of `WATCHDOG_USEC` only while both beats are
//! younger than the staleness limit, and says in `STATUS=` which loop stalled.
//!
//! Everything goes through the small [`Notifier`] trait: [`SdNotify`] is the real datagram
//! socket (a no-op without `NOTIFY_SOCKET`); the unit tests below use a recording double.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// One notify-protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ready,
    Status(String),
    Watchdog,
    Stopping,
}

/// Sends notify-protocol messages to the service manager.
pub trait Notifier: Send + Sync {
    fn notify(&self, message: Message);
}

/// The real notifier: datagrams to `$NOTIFY_SOCKET`; nothing when podagent is not run by
/// systemd.
#[derive(Debug, Default, Clone, Copy)]
pub struct SdNotify;

impl Notifier for SdNotify {
    fn notify(&self, message: Message) {
        let state = match &message {
            Message::Ready => NotifyState::Ready,
            Message::Status(text) => NotifyState::Status(text),
            Message::Watchdog => NotifyState::Watchdog,
            Message::Stopping => NotifyState::Stopping,
        };
        if let Err(e) = sd_notify::notify(&[state]) {
            // Losing a notification is not fatal; systemd will notice the consequences.
            tracing::warn!(error = %e, ?message, "cannot send sd_notify message");
        }
    }
}

/// How often to send `WATCHDOG=1`: half of systemd's watchdog timeout (`WATCHDOG_USEC`), so a
/// ping that comes a little late still beats the deadline. `None` when systemd expects no pings
/// (no `WATCHDOG_USEC`, or one meant for another process).
pub(crate) fn watchdog_ping_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// Which loop stopped making progress.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Stall {
    #[error("pod watch silent for {0:?}")]
    Watch(Duration),
    #[error("work loop silent for {0:?}")]
    Work(Duration),
}

/// Heartbeats of the pod watch and the work loop; see the module docs for what counts.
#[derive(Debug)]
pub(crate) struct Liveness {
    origin: Instant,
    /// Milliseconds since `origin` of each loop's last beat.
    watch: AtomicU64,
    work: AtomicU64,
    stale_after: Duration,
}

impl Liveness {
    /// Both loops count as fresh at creation: they get `stale_after` to show progress.
    pub(crate) fn new(stale_after: Duration) -> Arc<Liveness> {
        Arc::new(Liveness {
            origin: Instant::now(),
            watch: AtomicU64::new(0),
            work: AtomicU64::new(0),
            stale_after,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The pod watch delivered something (pod event, bookmark or re-list).
    pub(crate) fn watch_beat(&self) {
        self.watch.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The work loop went round once.
    pub(crate) fn work_beat(&self) {
        self.work.store(self.now_ms(), Ordering::Relaxed);
    }

    /// `Ok` while both loops beat within the staleness limit.
    pub(crate) fn check(&self) -> Result<(), Stall> {
        let now = self.now_ms();
        let silence = |beat: &AtomicU64| {
            Duration::from_millis(now.saturating_sub(beat.load(Ordering::Relaxed)))
        };
        let (watch, work) = (silence(&self.watch), silence(&self.work));
        if watch > self.stale_after {
            Err(Stall::Watch(watch))
        } else if work > self.stale_after {
            Err(Stall::Work(work))
        } else {
            Ok(())
        }
    }
}

/// Pings `WATCHDOG=1` every `interval` while `liveness` holds; runs until aborted.
pub(crate) async fn watchdog(
    notifier: Arc<dyn Notifier>,
    liveness: Arc<Liveness>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stalled = false;
    loop {
        ticker.tick().await;
        match liveness.check() {
            Ok(()) => {
                if stalled {
                    tracing::info!("progress resumed, watchdog pings resumed");
                    stalled = false;
                }
                notifier.notify(Message::Watchdog);
            }
            Err(stall) => {
                if !stalled {
                    tracing::error!(%stall, "no progress: withholding watchdog pings so systemd restarts podagent");
                    notifier.notify(Message::Status(format!("stalled: {stall}")));
                    stalled = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A notifier that records messages, for unit tests of code that notifies.
    #[derive(Debug, Default)]
    struct Recorder {
        messages: Mutex<Vec<Message>>,
    }

    impl Recorder {
        fn messages(&self) -> Vec<Message> {
            self.messages
                .lock()
                .map(|m| m.clone())
                .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
        }
    }

    impl Notifier for Recorder {
        fn notify(&self, message: Message) {
            match self.messages.lock() {
                Ok(mut m) => m.push(message),
                Err(poisoned) => poisoned.into_inner().push(message),
            }
        }
    }

    #[test]
    fn fresh_liveness_is_alive() {
        assert_eq!(Liveness::new(Duration::from_secs(60)).check(), Ok(()));
    }

    #[test]
    fn a_silent_watch_is_a_stall_even_when_work_beats() {
        let liveness = Liveness::new(Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(60));
        liveness.work_beat();
        assert!(matches!(liveness.check(), Err(Stall::Watch(_))));
        liveness.watch_beat();
        assert_eq!(liveness.check(), Ok(()));
    }

    #[test]
    fn a_silent_work_loop_is_a_stall() {
        let liveness = Liveness::new(Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(60));
        liveness.watch_beat();
        assert!(matches!(liveness.check(), Err(Stall::Work(_))));
    }

    #[tokio::test]
    async fn watchdog_pings_while_alive() {
        let recorder = Arc::new(Recorder::default());
        let liveness = Liveness::new(Duration::from_secs(3600));
        let task = tokio::spawn(watchdog(
            recorder.clone(),
            liveness.clone(),
            Duration::from_millis(20),
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        task.abort();
        let messages = recorder.messages();
        assert!(
            messages.iter().filter(|m| **m == Message::Watchdog).count() >= 2,
            "{messages:?}"
        );
        assert!(
            messages.iter().all(|m| *m == Message::Watchdog),
            "{messages:?}"
        );
    }

    #[tokio::test]
    async fn watchdog_withholds_pings_and_says_why_when_stalled() {
        let recorder = Arc::new(Recorder::default());
        // Beats ten seconds old against a one-second limit.
        let stale = Arc::new(Liveness {
            origin: Instant::now() - Duration::from_secs(10),
            watch: AtomicU64::new(0),
            work: AtomicU64::new(0),
            stale_after: Duration::from_secs(1),
        });
        let task = tokio::spawn(watchdog(recorder.clone(), stale, Duration::from_millis(20)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        task.abort();
        let messages = recorder.messages();
        assert_eq!(messages.len(), 1, "one status, no ping: {messages:?}");
        assert!(
            matches!(&messages[0], Message::Status(s) if s.starts_with("stalled: pod watch")),
            "{messages:?}"
        );
    }
}
