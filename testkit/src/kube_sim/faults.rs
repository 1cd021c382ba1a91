//! Fault injection: the failures a node agent meets in production, on demand.
//!
//! Each fault mirrors a real event: watches dropped by a load balancer or an apiserver restart
//! (`close_all_watches`), a compacted etcd (`force_gone_on_next_watch`), an overloaded or
//! failing apiserver (`fail_next`), a slow network (`set_latency`), a hung connection that
//! stays open but delivers nothing (`stall_watches`), and an apiserver restart whose watch
//! cache starts empty (`restart_empty_watch_cache`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::store::Store;

/// Handle to the faults of one running kube-sim; see [`KubeSim::faults`](super::KubeSim::faults).
pub struct Faults {
    store: Arc<Store>,
    /// Bumped to end every open watch.
    close: watch::Sender<u64>,
    stall: watch::Sender<bool>,
    force_gone: AtomicBool,
    /// (requests left to fail, status code)
    fail: Mutex<(u32, u16)>,
    latency_ms: AtomicU64,
}

impl Faults {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Faults {
            store,
            close: watch::Sender::new(0),
            stall: watch::Sender::new(false),
            force_gone: AtomicBool::new(false),
            fail: Mutex::new((0, 0)),
            latency_ms: AtomicU64::new(0),
        }
    }

    /// Ends every open watch stream; clients must re-watch (from their last resourceVersion).
    pub fn close_all_watches(&self) {
        self.close.send_modify(|generation| *generation += 1);
    }

    /// The next watch request gets a 410 Gone ERROR event instead of events, forcing a relist.
    pub fn force_gone_on_next_watch(&self) {
        self.force_gone.store(true, Ordering::SeqCst);
    }

    /// The next `n` requests (any path) fail with `status` and a matching Status body.
    pub fn fail_next(&self, n: u32, status: u16) {
        *self.fail.lock().unwrap_or_else(|p| p.into_inner()) = (n, status);
    }

    /// Every request waits `latency` before it is handled (a watch: before its response head,
    /// so a large value also simulates a server that accepts but never answers).
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// While set, open and new watches deliver nothing (no events, no bookmarks) but stay
    /// connected: a hung watch. Clearing it lets them resume.
    pub fn stall_watches(&self, stalled: bool) {
        self.stall.send_replace(stalled);
    }

    /// Drops the watch history and closes every watch, like an apiserver restart: watches and
    /// exact lists from any earlier resourceVersion get 410 Gone.
    pub fn restart_empty_watch_cache(&self) {
        self.store.forget_history();
        self.close_all_watches();
    }

    /// Removes every pending fault (latency, failures, forced 410, stall).
    pub fn clear(&self) {
        self.fail_next(0, 0);
        self.force_gone.store(false, Ordering::SeqCst);
        self.set_latency(Duration::ZERO);
        self.stall_watches(false);
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::SeqCst))
    }

    /// Consumes one injected failure, if any is pending.
    pub(crate) fn take_failure(&self) -> Option<u16> {
        let mut fail = self.fail.lock().unwrap_or_else(|p| p.into_inner());
        if fail.0 == 0 {
            return None;
        }
        fail.0 -= 1;
        Some(fail.1)
    }

    pub(crate) fn take_forced_gone(&self) -> bool {
        self.force_gone.swap(false, Ordering::SeqCst)
    }

    pub(crate) fn closed(&self) -> watch::Receiver<u64> {
        self.close.subscribe()
    }

    pub(crate) fn stalled(&self) -> watch::Receiver<bool> {
        self.stall.subscribe()
    }
}
