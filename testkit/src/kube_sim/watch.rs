//! WATCH: newline-delimited JSON events, as the real server streams them.
//!
//! - without a resourceVersion (or `0`, or `sendInitialEvents=true`) the stream starts with a
//!   synthetic ADDED per existing object; with `sendInitialEvents` it then sends the BOOKMARK
//!   annotated `k8s.io/initial-events-end` that streaming-list clients wait for;
//! - from resourceVersion N it replays every later change, or sends one ERROR event with a 410
//!   `Expired` Status when N is older than the history (HTTP status stays 200, as on a real server);
//! - a change that moves an object into or out of the selection becomes ADDED or DELETED, the way
//!   the real watch cache filters;
//! - `allowWatchBookmarks` adds a BOOKMARK every bookmark interval carrying the newest revision
//!   this stream has seen, so a client that resumes from it cannot skip an event;
//! - `timeoutSeconds`, a client disconnect, `close_all_watches` or a lagging consumer end it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::cluster::Cluster;
use super::list::parse_rv;
use super::objects::to_external;
use super::resources::ResourceType;
use super::select::Selector;
use super::status::ApiError;
use super::store::{Change, ChangeKind, Key, set_rv};
use super::table;

pub(crate) type EventStream = ReceiverStream<Result<Bytes, Infallible>>;

/// The query parameters of a watch request.
#[derive(Debug, Default)]
pub(crate) struct WatchQuery {
    pub selector: Selector,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub send_initial_events: bool,
    /// `Some(includeObject)` when the client asked for Tables (`kubectl get -w`).
    pub table: Option<Option<String>>,
}

fn line(kind: &str, object: Value) -> Result<Bytes, Infallible> {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Ok(Bytes::from(bytes))
}

fn gone(message: String) -> EventStream {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(line("ERROR", ApiError::expired(message).to_status()));
    ReceiverStream::new(rx)
}

struct Watcher {
    cluster: Arc<Cluster>,
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    selector: Selector,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    table: Option<Option<String>>,
    /// Newest revision this stream has passed (delivered or filtered out).
    seen: u64,
}

impl Watcher {
    fn in_scope(&self, key: &Key) -> bool {
        key.0 == self.rt.storage && self.namespace.as_ref().is_none_or(|ns| &key.1 == ns)
    }

    async fn send(&self, kind: &str, object: Value) -> bool {
        let object = match &self.table {
            Some(include) if kind != "BOOKMARK" => {
                table::render(&self.rt, &object, include.as_deref())
            }
            _ => object,
        };
        self.tx.send(line(kind, object)).await.is_ok()
    }

    /// Sends what `change` means to this watch; false once the client is gone.
    async fn deliver(&mut self, change: &Change) -> bool {
        if change.rv <= self.seen {
            return true;
        }
        self.seen = change.rv;
        if !self.in_scope(&change.key) {
            return true;
        }
        let now = to_external(&self.rt, &change.object);
        let before = change.previous.as_ref().map(|p| to_external(&self.rt, p));
        let now_matches = self.selector.matches(&now);
        let before_matches = before.as_ref().is_some_and(|b| self.selector.matches(b));
        match change.kind {
            ChangeKind::Added if now_matches => self.send("ADDED", now).await,
            ChangeKind::Modified if now_matches && before_matches => {
                self.send("MODIFIED", now).await
            }
            ChangeKind::Modified if now_matches => self.send("ADDED", now).await,
            ChangeKind::Modified if before_matches => {
                let mut last = before.unwrap_or_default();
                set_rv(&mut last, change.rv);
                self.send("DELETED", last).await
            }
            ChangeKind::Deleted if now_matches => self.send("DELETED", now).await,
            _ => true,
        }
    }

    async fn bookmark(&self, initial_end: bool) -> bool {
        let mut metadata = json!({"resourceVersion": self.seen.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": metadata});
        self.send("BOOKMARK", object).await
    }
}

/// Starts a watch; the stream ends when the watch does.
pub(crate) fn start(
    cluster: Arc<Cluster>,
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    query: WatchQuery,
) -> Result<EventStream, ApiError> {
    let store = cluster.store.clone();
    if cluster.faults.take_forced_gone() {
        let rv = store.current_rv();
        return Ok(gone(format!("too old resource version: {rv} ({})", rv + 1)));
    }
    let requested = query
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty() && *rv != "0");
    let snapshot = query.send_initial_events || requested.is_none();
    let since = match requested {
        Some(rv) if !query.send_initial_events => parse_rv(rv)?,
        _ => store.current_rv(),
    };
    let subscription = match store.subscribe(since) {
        Ok(s) => s,
        Err(old) => {
            return Ok(gone(format!(
                "too old resource version: {since} ({})",
                old.oldest
            )));
        }
    };
    let initial = if snapshot {
        match store.list(&rt.storage, namespace.as_deref(), Some(since)) {
            Ok((_, items)) => items,
            Err(old) => {
                return Ok(gone(format!(
                    "too old resource version: {since} ({})",
                    old.oldest
                )));
            }
        }
    } else {
        Vec::new()
    };
    let (tx, rx) = mpsc::channel(256);
    let mut watcher = Watcher {
        cluster,
        rt,
        namespace,
        selector: query.selector,
        tx,
        table: query.table,
        seen: since,
    };
    let mut live = subscription.live;
    let replay = subscription.replay;
    tokio::spawn(async move {
        for (_, obj) in &initial {
            let obj = to_external(&watcher.rt, obj);
            if watcher.selector.matches(&obj) && !watcher.send("ADDED", obj).await {
                return;
            }
        }
        if query.send_initial_events && !watcher.bookmark(true).await {
            return;
        }
        for change in &replay {
            if !watcher.deliver(change).await {
                return;
            }
        }
        watcher
            .follow(&mut live, query.bookmarks, query.timeout)
            .await;
    });
    Ok(ReceiverStream::new(rx))
}

impl Watcher {
    async fn follow(
        &mut self,
        live: &mut broadcast::Receiver<Arc<Change>>,
        bookmarks: bool,
        timeout: Option<Duration>,
    ) {
        let deadline =
            tokio::time::Instant::now() + timeout.unwrap_or(Duration::from_secs(365 * 24 * 3600));
        let interval = self
            .cluster
            .bookmark_interval
            .max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut closed = self.cluster.faults.closed();
        let mut stall = self.cluster.faults.stalled();
        let tx = self.tx.clone();
        loop {
            let stalled = *stall.borrow_and_update();
            // Biased: a fault set before a change was made must win over that change, or a
            // stall would let through whatever happened to be ready in the same poll.
            tokio::select! {
                biased;
                _ = tx.closed() => return,
                _ = closed.changed() => return,
                changed = stall.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
                change = live.recv(), if !stalled => match change {
                    Ok(change) => if !self.deliver(&change).await { return },
                    // Too slow to keep up, or the store is gone: end the stream, the client
                    // re-watches from its last revision as it would after a real disconnect.
                    Err(_) => return,
                },
                _ = ticker.tick(), if bookmarks && !stalled => if !self.bookmark(false).await { return },
            }
        }
    }
}
