//! The object store: etcd's role on a real cluster.
//!
//! One global revision counter stamps every write, so `resourceVersion` is monotonic across all
//! kinds exactly as clients assume. Every write is also appended to a bounded history that feeds
//! watches; each entry keeps the object's previous state, which lets a watch with a field
//! selector turn a MODIFIED into ADDED/DELETED when an object moves in or out of the selection,
//! and lets a list be served "as of" an older revision (`resourceVersionMatch=Exact`, `continue`)
//! by rolling the history back. Revisions older than the history are answered with 410 Gone.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::broadcast;

/// (storage, namespace, name); the namespace is empty for cluster-scoped objects. Ordered the
/// way etcd orders keys, which is the order lists are returned in.
pub(crate) type Key = (String, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// A list result: the revision it is consistent with and the objects in key order.
pub(crate) type Snapshot = (u64, Vec<(Key, Arc<Value>)>);

/// One committed write.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub key: Key,
    pub kind: ChangeKind,
    /// The new state; for a deletion the last state, stamped with the deletion's revision.
    pub object: Arc<Value>,
    pub previous: Option<Arc<Value>>,
}

/// A revision that is no longer in the history.
#[derive(Debug)]
pub(crate) struct TooOld {
    pub oldest: u64,
}

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<Change>>,
    capacity: usize,
    /// Watches and snapshots are possible from any revision >= this one.
    compacted: u64,
}

pub(crate) struct Store {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Arc<Change>>,
}

/// What a watch needs to start without a gap: past changes to replay, then the live feed.
pub(crate) struct Subscription {
    pub replay: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
}

impl Store {
    pub fn new(capacity: usize) -> Self {
        let (changes, _) = broadcast::channel(capacity.clamp(1024, 65536));
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                capacity: capacity.max(1),
                compacted: 1,
            }),
            changes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written map (writes are single
        // inserts), so a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.lock().objects.get(key).cloned()
    }

    /// The keys that satisfy `filter` (for cascading deletes).
    pub fn keys(&self, filter: impl Fn(&Key) -> bool) -> Vec<Key> {
        self.lock()
            .objects
            .keys()
            .filter(|k| filter(k))
            .cloned()
            .collect()
    }

    /// Runs `write` against the current state of `key` under the store lock and commits what it
    /// returns: `Some(object)` stores it (stamping the new revision), `None` deletes. Returning
    /// the unchanged current object is a no-op write: no revision, no event, as on etcd when
    /// the apiserver sees nothing changed.
    pub fn write<E>(
        &self,
        key: &Key,
        write: impl FnOnce(Option<&Value>) -> Result<Option<Value>, E>,
    ) -> Result<Option<Arc<Value>>, E> {
        let mut inner = self.lock();
        let previous = inner.objects.get(key).cloned();
        let Some(mut next) = write(previous.as_deref())? else {
            let Some(previous) = previous else {
                return Ok(None);
            };
            inner.rv += 1;
            let rv = inner.rv;
            inner.objects.remove(key);
            let mut last = (*previous).clone();
            set_rv(&mut last, rv);
            let last = Arc::new(last);
            inner.commit(
                &self.changes,
                key,
                ChangeKind::Deleted,
                last.clone(),
                Some(previous),
            );
            return Ok(Some(last));
        };
        if let Some(previous) = &previous
            && same_content(previous, &next)
        {
            return Ok(Some(previous.clone()));
        }
        inner.rv += 1;
        let rv = inner.rv;
        set_rv(&mut next, rv);
        let next = Arc::new(next);
        inner.objects.insert(key.clone(), next.clone());
        let kind = if previous.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        inner.commit(&self.changes, key, kind, next.clone(), previous);
        Ok(Some(next))
    }

    /// The objects of `storage` (optionally one namespace) as of revision `at` (None: now),
    /// with the revision they are consistent with.
    pub fn list(
        &self,
        storage: &str,
        namespace: Option<&str>,
        at: Option<u64>,
    ) -> Result<Snapshot, TooOld> {
        let inner = self.lock();
        let in_scope = |key: &Key| key.0 == storage && namespace.is_none_or(|ns| key.1 == ns);
        let mut objects: BTreeMap<Key, Arc<Value>> = inner
            .objects
            .iter()
            .filter(|(key, _)| in_scope(key))
            .map(|(key, obj)| (key.clone(), obj.clone()))
            .collect();
        let at = at.unwrap_or(inner.rv).min(inner.rv);
        if at < inner.rv {
            if at < inner.compacted {
                return Err(TooOld {
                    oldest: inner.compacted,
                });
            }
            for change in inner.history.iter().rev().take_while(|c| c.rv > at) {
                if !in_scope(&change.key) {
                    continue;
                }
                match &change.previous {
                    Some(previous) if change.kind != ChangeKind::Added => {
                        objects.insert(change.key.clone(), previous.clone());
                    }
                    _ => {
                        objects.remove(&change.key);
                    }
                }
            }
        }
        Ok((at, objects.into_iter().collect()))
    }

    /// Changes after `since`, then every later change live. `since` older than the history is
    /// 410 Gone.
    pub fn subscribe(&self, since: u64) -> Result<Subscription, TooOld> {
        let inner = self.lock();
        if since < inner.compacted {
            return Err(TooOld {
                oldest: inner.compacted,
            });
        }
        let replay = inner
            .history
            .iter()
            .filter(|c| c.rv > since)
            .cloned()
            .collect();
        Ok(Subscription {
            replay,
            live: self.changes.subscribe(),
        })
    }

    /// Drops the whole history, as a restarted apiserver's empty watch cache does: every
    /// revision before now is too old to watch from.
    pub fn forget_history(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.compacted = inner.rv;
    }
}

impl Inner {
    fn commit(
        &mut self,
        changes: &broadcast::Sender<Arc<Change>>,
        key: &Key,
        kind: ChangeKind,
        object: Arc<Value>,
        previous: Option<Arc<Value>>,
    ) {
        let change = Arc::new(Change {
            rv: self.rv,
            key: key.clone(),
            kind,
            object,
            previous,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.capacity {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        // No receiver is fine: nobody watches.
        let _ = changes.send(change);
    }
}

pub(crate) fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

/// Equal apart from the resourceVersion the write carried.
fn same_content(previous: &Value, next: &Value) -> bool {
    let mut next = next.clone();
    if let Some(rv) = previous["metadata"]["resourceVersion"].as_str()
        && let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
    *previous == next
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> Key {
        ("pods".into(), "default".into(), name.into())
    }

    fn put(store: &Store, name: &str, value: i64) -> u64 {
        let obj = json!({"metadata": {"name": name}, "spec": {"v": value}});
        let stored = store
            .write::<()>(&key(name), |_| Ok(Some(obj)))
            .expect("write")
            .expect("stored");
        stored["metadata"]["resourceVersion"]
            .as_str()
            .expect("rv")
            .parse()
            .expect("number")
    }

    #[test]
    fn every_write_gets_a_higher_revision_and_noop_writes_none() {
        let store = Store::new(100);
        let a = put(&store, "a", 1);
        let b = put(&store, "b", 1);
        assert!(b > a);
        assert_eq!(put(&store, "b", 1), b, "identical write is a no-op");
        assert!(put(&store, "b", 2) > b);
    }

    #[test]
    fn list_at_an_old_revision_rolls_the_history_back() {
        let store = Store::new(100);
        let first = put(&store, "a", 1);
        put(&store, "a", 2);
        put(&store, "b", 1);
        store.write::<()>(&key("a"), |_| Ok(None)).expect("delete");
        let (_, now) = store.list("pods", None, None).expect("now");
        assert_eq!(now.len(), 1);
        let (rv, then) = store.list("pods", None, Some(first)).expect("then");
        assert_eq!(rv, first);
        assert_eq!(then.len(), 1);
        assert_eq!(then[0].1["spec"]["v"], 1);
        assert_eq!(then[0].0.2, "a");
    }

    #[test]
    fn revisions_older_than_the_history_are_gone() {
        let store = Store::new(2);
        let first = put(&store, "a", 1);
        put(&store, "a", 2);
        put(&store, "a", 3);
        put(&store, "a", 4);
        assert!(store.subscribe(first).is_err());
        let now = store.current_rv();
        assert_eq!(store.subscribe(now - 1).expect("recent").replay.len(), 1);
        store.forget_history();
        assert!(store.subscribe(now - 1).is_err());
        assert!(store.subscribe(now).is_ok());
    }
}
