//! The hot-plug controller: turns pod changes into reconciles, one pod at a time, many pods at
//! once, with backoff that never lets one broken pod hold up the others.
//!
//! The loop owns a small entry per pod (the slim view, the durable record, feedback memory and
//! its schedule) and runs reconciles ([`reconcile`]) as tasks:
//! - a pod is reconciled when what matters about it changes (its [`PodView`]: annotation,
//!   phase, deletion flag, container ids), when its retry is due, or when its periodic resync
//!   is due; watch events that change nothing else (status churn) cost nothing (DESIGN §2a);
//! - at most one reconcile per pod runs at a time (a change during one re-runs it after), and
//!   at most `concurrency` across pods;
//! - a failure schedules that pod alone after an exponential, jittered backoff (CNI code 11:
//!   the base delay), so the other pods keep being served and nothing spins;
//! - at start every recorded pod and every listed pod is reconciled; records of pods that are
//!   not listed are forgotten. Attachments already in place are adopted, never re-added;
//! - when the event stream ends (shutdown), no new reconcile starts and the running ones,
//!   with their CNI calls, are awaited; the daemon bounds that wait with its grace period.

mod backoff;
pub(crate) mod reconcile;
pub(crate) mod report;

#[cfg(test)]
mod fakes;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub(crate) use backoff::{jittered, retry_delay};
pub(crate) use reconcile::{Job, Memo, Outcome, Verdict, reconcile};

use crate::cni::Cni;
use crate::config::ReconcileSettings;
use crate::kubeapi::events::Feedback;
use crate::kubeapi::{PodEvent, PodView};
use crate::metrics::{AttachmentCounts, Metrics, ReconcileOutcome};
use crate::netns::NetnsAccess;
use crate::networks::{Mode, Networks};
use crate::pod::PodRef;
use crate::runtime::Runtime;
use crate::store::{PodRecord, Store, StoreError};

/// Why the loop could not do its own part of the work (a reconcile's failures are
/// [`reconcile::ReconcileError`]s).
#[derive(Debug, thiserror::Error)]
enum ControllerError {
    #[error("reloading the record of pod uid {uid} after its reconcile ended abnormally: {source}")]
    Reload { uid: String, source: StoreError },
    #[error("the record reload of pod uid {uid} did not complete: {reason}")]
    ReloadTask { uid: String, reason: String },
}

/// Everything a reconcile talks to; each edge is a boxed `dyn` trait, enough at this call rate.
pub(crate) struct Context {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) cni: Arc<dyn Cni>,
    pub(crate) netns: Arc<dyn NetnsAccess>,
    pub(crate) store: Store,
    pub(crate) feedback: Arc<dyn Feedback>,
    /// The network mode and, in `direct` mode, the network objects.
    pub(crate) networks: Networks,
    pub(crate) settings: ReconcileSettings,
    pub(crate) metrics: Metrics,
}

/// What the controller tells the daemon after each turn of its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Summary {
    pub(crate) pods: usize,
    /// Attachments the pods' valid annotations ask podagent for.
    pub(crate) wanted: usize,
}

/// A reconcile task's result: the pod uid and its outcome.
type Finished = (String, Outcome);

/// One pod as the loop knows it.
#[derive(Debug)]
struct Entry {
    pod: PodRef,
    /// `None`: the pod is gone (deleted, or recorded but not listed).
    view: Option<PodView>,
    /// How many attachments the view's annotation asks for (0 when invalid or gone).
    wanted: usize,
    /// `None` while a reconcile holds it, or when nothing is recorded.
    record: Option<PodRecord>,
    memo: Memo,
    failures: u32,
    /// The retry delay in effect after a failure; `None` once a reconcile settles.
    backoff: Option<Duration>,
    /// When to reconcile next; `None` only while running.
    due: Option<Instant>,
    running: bool,
    /// Changed while a reconcile ran: reconcile again when it ends.
    dirty: bool,
    /// When the oldest change not yet handled was seen: the start of the attach and detach
    /// latencies, across retries.
    seen: Option<Instant>,
    /// When a change that came in while a reconcile ran was first seen.
    seen_while_running: Option<Instant>,
    /// The recorded attachments (network, phase), kept while a reconcile holds the record.
    counted: Vec<(String, &'static str)>,
}

impl Entry {
    fn new(mode: Mode, pod: PodRef, view: Option<PodView>, record: Option<PodRecord>) -> Entry {
        let mut entry = Entry {
            pod,
            wanted: wanted(mode, view.as_ref()),
            view,
            record: None,
            memo: Memo::default(),
            failures: 0,
            backoff: None,
            due: Some(Instant::now()),
            running: false,
            dirty: false,
            seen: Some(Instant::now()),
            seen_while_running: None,
            counted: Vec::new(),
        };
        entry.keep(record);
        entry
    }

    /// Something that matters changed: reconcile as soon as possible, with a fresh backoff.
    fn touch(&mut self) {
        self.failures = 0;
        if self.running {
            self.dirty = true;
            self.seen_while_running.get_or_insert_with(Instant::now);
        } else {
            self.due = Some(Instant::now());
            self.seen.get_or_insert_with(Instant::now);
        }
    }

    /// Takes back the record (and memo) a reconcile ended with.
    fn keep(&mut self, record: Option<PodRecord>) {
        self.counted = record.as_ref().map_or_else(Vec::new, |r| {
            r.attachments
                .values()
                .map(|a| (a.selection.name.clone(), a.phase.as_str()))
                .collect()
        });
        self.record = record;
    }

    /// The reconcile handled every change seen before it started.
    fn handled(&mut self) {
        self.seen = self.seen_while_running.take();
        self.backoff = None;
    }
}

fn wanted(mode: Mode, view: Option<&PodView>) -> usize {
    view.and_then(|v| mode.desired(v.networks.as_deref()).ok())
        .map_or(0, |selections| {
            selections.iter().filter(|s| s.is_managed()).count()
        })
}

/// The work loop; see the module docs.
pub(crate) struct Controller {
    ctx: Arc<Context>,
    pods: HashMap<String, Entry>,
    running: HashMap<tokio::task::Id, String>,
}

impl Controller {
    /// A controller that starts from the stored `records` and the initial list of `pods`:
    /// every one of them is due at once, and records whose pod is not listed are forgotten.
    pub(crate) fn new(ctx: Context, records: Vec<PodRecord>, pods: Vec<PodView>) -> Self {
        let mut controller = Controller {
            ctx: Arc::new(ctx),
            pods: HashMap::new(),
            running: HashMap::new(),
        };
        let mode = controller.ctx.networks.mode();
        for record in records {
            let pod = PodRef {
                uid: record.uid.clone(),
                namespace: record.namespace.clone(),
                name: record.name.clone(),
            };
            controller.pods.insert(
                record.uid.clone(),
                Entry::new(mode, pod, None, Some(record)),
            );
        }
        controller.apply(PodEvent::Listed(pods));
        controller
    }

    /// Runs until `events` closes, then waits for the reconciles in flight. `beat` is called
    /// after every turn of the loop, and at least every `tick` when idle. `network_changes`
    /// names network objects that changed (direct mode): the pods that ask for them are
    /// reconciled at once; it may close at any time (kactus mode has none).
    pub(crate) async fn run(
        mut self,
        mut events: mpsc::Receiver<PodEvent>,
        mut network_changes: mpsc::Receiver<BTreeSet<String>>,
        tick: Duration,
        mut beat: impl FnMut(Summary) + Send,
    ) {
        let mut tasks = JoinSet::new();
        let mut networks_open = true;
        self.publish();
        loop {
            self.start_due(&mut tasks);
            beat(self.summary());
            // With every slot taken no due pod can start: arming the timer on a deadline already
            // past would spin the loop until a slot frees (a finished task wakes it anyway).
            let next = if tasks.len() < self.ctx.settings.concurrency {
                self.next_due()
            } else {
                None
            };
            tokio::select! {
                done = tasks.join_next_with_id(), if !tasks.is_empty() => self.finish(done).await,
                event = events.recv() => match event {
                    Some(event) => self.apply(event),
                    None => break,
                },
                names = network_changes.recv(), if networks_open => match names {
                    Some(names) => self.networks_changed(&names),
                    None => networks_open = false,
                },
                () = sleep_until(next), if next.is_some() => {}
                () = tokio::time::sleep(tick) => {}
            }
        }
        if !tasks.is_empty() {
            info!(
                in_flight = tasks.len(),
                "waiting for running reconciles to finish"
            );
        }
        while let Some(done) = tasks.join_next_with_id().await {
            self.finish(Some(done)).await;
        }
    }

    /// Counts for the daemon's status line.
    pub(crate) fn summary(&self) -> Summary {
        let present = self.pods.values().filter(|e| e.view.is_some());
        Summary {
            pods: present.count(),
            wanted: self.pods.values().map(|e| e.wanted).sum(),
        }
    }

    fn apply(&mut self, event: PodEvent) {
        match event {
            PodEvent::Listed(views) => {
                let listed: BTreeSet<&str> = views.iter().map(|v| v.uid.as_str()).collect();
                let vanished: Vec<String> = self
                    .pods
                    .keys()
                    .filter(|uid| !listed.contains(uid.as_str()))
                    .cloned()
                    .collect();
                for uid in vanished {
                    self.vanish(&uid);
                }
                for view in views {
                    self.applied(view);
                }
            }
            PodEvent::Applied(view) => self.applied(view),
            PodEvent::Deleted(view) => self.vanish(&view.uid),
        }
    }

    fn applied(&mut self, view: PodView) {
        // The view holds exactly what a plan depends on, and the resourceVersion a status
        // write is conditioned on: alike means status churn, which only brings the version.
        if let Some(entry) = self.pods.get_mut(&view.uid)
            && let Some(known) = &mut entry.view
            && known.plans_alike(&view)
        {
            known.resource_version = view.resource_version;
            return;
        }
        let pod = view.pod();
        debug!(pod = %pod, namespace = %pod.namespace, uid = %pod.uid, phase = %view.phase, "pod changed");
        match self.pods.get_mut(&view.uid) {
            Some(entry) => {
                entry.pod = pod;
                entry.wanted = wanted(self.ctx.networks.mode(), Some(&view));
                entry.view = Some(view);
                entry.touch();
            }
            None => {
                let entry = Entry::new(self.ctx.networks.mode(), pod, Some(view), None);
                self.pods.insert(entry.pod.uid.clone(), entry);
            }
        }
    }

    /// Wakes every pod whose annotation names one of `names`: a missing network may have
    /// appeared, an attached one may have been edited.
    fn networks_changed(&mut self, names: &BTreeSet<String>) {
        let mode = self.ctx.networks.mode();
        for entry in self.pods.values_mut() {
            let asks = entry
                .view
                .as_ref()
                .and_then(|v| mode.desired(v.networks.as_deref()).ok())
                .is_some_and(|selections| selections.iter().any(|s| names.contains(&s.name)));
            if asks {
                debug!(pod = %entry.pod, uid = %entry.pod.uid, ?names, "a network it asks for changed");
                entry.touch();
            }
        }
    }

    fn vanish(&mut self, uid: &str) {
        if let Some(entry) = self.pods.get_mut(uid)
            && entry.view.is_some()
        {
            debug!(pod = %entry.pod, namespace = %entry.pod.namespace, uid = %entry.pod.uid, "pod gone");
            entry.view = None;
            entry.wanted = 0;
            entry.touch();
        }
    }

    /// The `pod` log field of a known pod.
    fn pod(&self, uid: &str) -> Option<tracing::field::DisplayValue<&PodRef>> {
        self.pods
            .get(uid)
            .map(|entry| tracing::field::display(&entry.pod))
    }

    fn next_due(&self) -> Option<Instant> {
        self.pods
            .values()
            .filter(|e| !e.running)
            .filter_map(|e| e.due)
            .min()
    }

    /// Starts the due reconciles, earliest first, as long as there is room.
    fn start_due(&mut self, tasks: &mut JoinSet<Finished>) {
        let room = self.ctx.settings.concurrency.saturating_sub(tasks.len());
        if room == 0 {
            return;
        }
        let now = Instant::now();
        let mut due: Vec<(Instant, String)> = self
            .pods
            .iter()
            .filter(|(_, e)| !e.running)
            .filter_map(|(uid, e)| e.due.filter(|d| *d <= now).map(|d| (d, uid.clone())))
            .collect();
        due.sort();
        for (_, uid) in due.into_iter().take(room) {
            let Some(entry) = self.pods.get_mut(&uid) else {
                continue;
            };
            entry.running = true;
            entry.due = None;
            let seen = *entry.seen.get_or_insert(now);
            let job = Job {
                pod: entry.pod.clone(),
                view: entry.view.clone(),
                record: entry.record.take(),
                memo: entry.memo.clone(),
                seen: seen.into_std(),
            };
            let ctx = self.ctx.clone();
            let handle = tasks.spawn(async move {
                let uid = job.pod.uid.clone();
                (uid, reconcile(&ctx, job).await)
            });
            self.running.insert(handle.id(), uid);
        }
    }

    async fn finish(
        &mut self,
        done: Option<Result<(tokio::task::Id, Finished), tokio::task::JoinError>>,
    ) {
        let (uid, outcome) = match done {
            Some(Ok((id, (uid, outcome)))) => {
                self.running.remove(&id);
                (uid, outcome)
            }
            Some(Err(error)) => {
                // A panicked reconcile: its record is lost from memory, so take it from disk
                // again on the retry; the pod is retried like any failure.
                let Some(uid) = self.running.remove(&error.id()) else {
                    return;
                };
                warn!(pod = self.pod(&uid), uid = %uid, error = %error, "reconcile task ended abnormally");
                let record = match self.reload(&uid).await {
                    Ok(record) => record,
                    Err(error) => {
                        warn!(pod = self.pod(&uid), uid = %uid, error = %error, "retrying without a record");
                        None
                    }
                };
                let outcome = Outcome {
                    record,
                    memo: Memo::default(),
                    verdict: Verdict::Settled,
                };
                self.ctx.metrics.reconciled(ReconcileOutcome::Aborted);
                self.schedule_failure(&uid, outcome, false);
                self.publish();
                return;
            }
            None => return,
        };
        self.ctx.metrics.reconciled(match outcome.verdict {
            Verdict::Settled => ReconcileOutcome::Settled,
            Verdict::Retry(_) => ReconcileOutcome::Retry,
            Verdict::Gone => ReconcileOutcome::Gone,
        });
        self.settle(uid, outcome);
        self.publish();
    }

    fn settle(&mut self, uid: String, outcome: Outcome) {
        match outcome.verdict {
            Verdict::Retry(ref error) => {
                let soon = error.is_retry_later();
                warn!(pod = self.pod(&uid), uid = %uid, error = %crate::error_chain::render(error), "reconcile failed");
                self.schedule_failure(&uid, outcome, soon);
            }
            Verdict::Gone => {
                let Some(entry) = self.pods.get_mut(&uid) else {
                    return;
                };
                entry.running = false;
                entry.keep(outcome.record);
                entry.memo = outcome.memo;
                entry.handled();
                if entry.view.is_none() && entry.record.is_none() {
                    self.pods.remove(&uid);
                    self.ctx.feedback.forget(&uid);
                } else {
                    entry.due = Some(Instant::now());
                }
            }
            Verdict::Settled => {
                let resync = jittered(self.ctx.settings.resync_period, unit_random());
                let Some(entry) = self.pods.get_mut(&uid) else {
                    return;
                };
                entry.running = false;
                entry.keep(outcome.record);
                entry.memo = outcome.memo;
                entry.handled();
                entry.failures = 0;
                entry.due = Some(if std::mem::take(&mut entry.dirty) {
                    Instant::now()
                } else {
                    Instant::now() + resync
                });
            }
        }
    }

    fn schedule_failure(&mut self, uid: &str, outcome: Outcome, retry_later: bool) {
        let settings = &self.ctx.settings;
        let Some(entry) = self.pods.get_mut(uid) else {
            return;
        };
        entry.running = false;
        entry.keep(outcome.record);
        entry.memo = outcome.memo;
        entry.failures = entry.failures.saturating_add(1);
        let delay = retry_delay(
            entry.failures,
            retry_later,
            settings.retry_base,
            settings.retry_cap,
            unit_random(),
        );
        // A change that came in meanwhile may have fixed the cause, but it must not turn a
        // failing pod into a hot loop: it waits for the retry like everything else.
        entry.dirty = false;
        if let Some(during) = entry.seen_while_running.take() {
            entry.seen.get_or_insert(during);
        }
        entry.backoff = Some(delay);
        debug!(pod = %entry.pod, uid = %entry.pod.uid, failures = entry.failures, retry_in = ?delay, "retry scheduled");
        entry.due = Some(Instant::now() + delay);
    }

    /// The node's pods, backoffs and attachments, for the metrics.
    fn publish(&self) {
        let mut attachments = AttachmentCounts::new();
        for (network, phase) in self.pods.values().flat_map(|e| &e.counted) {
            *attachments.entry((network.as_str(), *phase)).or_insert(0) += 1;
        }
        let backoffs = self.pods.values().filter_map(|e| e.backoff);
        let in_backoff = backoffs.clone().count();
        let longest = backoffs.max().unwrap_or_default();
        self.ctx
            .metrics
            .node(self.summary().pods, in_backoff, longest, &attachments);
    }

    /// The pod's record as the disk has it. The state dir is read off the loop task, which
    /// must keep serving the other pods meanwhile.
    async fn reload(&self, uid: &str) -> Result<Option<PodRecord>, ControllerError> {
        let store = self.ctx.store.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load_all())
            .await
            .map_err(|e| ControllerError::ReloadTask {
                uid: uid.to_owned(),
                reason: e.to_string(),
            })?
            .map_err(|source| ControllerError::Reload {
                uid: uid.to_owned(),
                source,
            })?;
        Ok(loaded.records.into_iter().find(|r| r.uid == uid))
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A number in [0, 1) that differs between calls, for jitter (no cryptographic quality
/// needed, so no extra dependency).
fn unit_random() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let bits = RandomState::new().hash_one(std::time::SystemTime::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests;
