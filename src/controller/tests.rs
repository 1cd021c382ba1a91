//! The loop against the fakes: what is reconciled when, and that a failing pod costs the others
//! nothing.

use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::controller::fakes::{Fakes, context, view};

const GREEN: &str = r#"[{"name":"green"}]"#;

struct Harness {
    fakes: Fakes,
    events: mpsc::Sender<PodEvent>,
    done: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn start(
    fakes: &Fakes,
    records: Vec<PodRecord>,
    pods: Vec<PodView>,
    concurrency: usize,
) -> Harness {
    start_with(fakes, records, pods, |ctx| {
        ctx.settings.concurrency = concurrency;
    })
}

/// [`start`] with the context as `adjust` makes it.
fn start_with(
    fakes: &Fakes,
    records: Vec<PodRecord>,
    pods: Vec<PodView>,
    adjust: impl FnOnce(&mut Context),
) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ctx = context(fakes, dir.path());
    adjust(&mut ctx);
    for record in &records {
        ctx.store.put(record).expect("seed record");
    }
    let controller = Controller::new(ctx, records, pods);
    let (events, receiver) = mpsc::channel(16);
    let done = tokio::spawn(controller.run(
        receiver,
        mpsc::channel(1).1,
        Duration::from_millis(50),
        |_| {},
    ));
    Harness {
        fakes: fakes.clone(),
        events,
        done,
        _dir: dir,
    }
}

impl Harness {
    async fn until(&self, what: &str, check: impl Fn(&Fakes) -> bool) {
        for _ in 0..400 {
            if check(&self.fakes) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "timed out waiting for {what}: calls {:?}",
            self.fakes.cni_calls()
        );
    }

    async fn stop(self) {
        drop(self.events);
        self.done
            .await
            .expect("controller loop ends when events close");
    }
}

#[tokio::test]
async fn status_churn_does_not_reconcile() {
    let fakes = Fakes::default();
    fakes.sandbox("u1", "s1");
    let h = start(&fakes, vec![], vec![view("u1", Some(GREEN))], 4);
    h.until("the ADD", |f| f.cni_calls().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let calls_before = h.fakes.node().runtime_calls;
    for _ in 0..20 {
        // Readiness, probes, conditions: nothing the view keeps.
        h.events
            .send(PodEvent::Applied(view("u1", Some(GREEN))))
            .await
            .expect("send");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.fakes.node().runtime_calls, calls_before);
    assert_eq!(h.fakes.cni_calls().len(), 1);

    let mut changed = view("u1", Some(GREEN));
    changed.container_ids = vec!["containerd://c2".into()];
    h.events
        .send(PodEvent::Applied(changed))
        .await
        .expect("send");
    h.until("a reconcile after a real change", |f| {
        f.node().runtime_calls > calls_before
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn failing_pod_does_not_delay_others() {
    let fakes = Fakes::default();
    fakes.sandbox("bad", "s-bad");
    fakes.sandbox("good", "s-good");
    fakes.node().failing.insert("pod-bad".into(), 7);
    // One reconcile at a time: the failing pod would starve the other if it were retried hot.
    let h = start(&fakes, vec![], vec![view("bad", Some(GREEN))], 1);
    let failed_adds = |f: &Fakes| {
        f.cni_calls()
            .iter()
            .filter(|c| c.starts_with("ADD pod-bad"))
            .count()
    };
    h.until("a few failed ADDs", |f| failed_adds(f) >= 3).await;
    h.events
        .send(PodEvent::Applied(view("good", Some(GREEN))))
        .await
        .expect("send");
    h.until("the good pod's ADD", |f| {
        f.cni_calls()
            .contains(&"ADD pod-good net9f27410725ab".to_owned())
    })
    .await;
    let warnings = h
        .fakes
        .reasons()
        .iter()
        .filter(|r| **r == "FailedAddingInterface")
        .count();
    assert!(warnings >= 3);
    h.stop().await;
}

#[tokio::test]
async fn retries_back_off_instead_of_spinning() {
    let fakes = Fakes::default();
    fakes.sandbox("bad", "s-bad");
    fakes.node().failing.insert("pod-bad".into(), 7);
    // Base 10 ms, cap 80 ms: in 400 ms a hot loop would make thousands of calls.
    let h = start(&fakes, vec![], vec![view("bad", Some(GREEN))], 4);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let adds = h
        .fakes
        .cni_calls()
        .iter()
        .filter(|c| c.starts_with("ADD"))
        .count();
    assert!((2..=20).contains(&adds), "{adds} ADDs in 400 ms");
    h.stop().await;
}

#[tokio::test]
async fn a_panicked_reconcile_is_retried_from_the_record_on_disk() {
    let fakes = Fakes::default();
    fakes.sandbox("u1", "s1");
    fakes.node().panicking_adds = 1;
    let h = start(&fakes, vec![], vec![view("u1", Some(GREEN))], 4);
    // The record written `Adding` before the lost ADD is read back from disk, so the retry
    // cleans up with a DEL before adding again.
    h.until("the retried ADD", |f| f.cni_calls().len() == 3)
        .await;
    assert_eq!(
        h.fakes.cni_calls(),
        [
            "ADD pod-u1 net9f27410725ab",
            "DEL pod-u1 net9f27410725ab",
            "ADD pod-u1 net9f27410725ab"
        ]
    );
    h.stop().await;
}

#[tokio::test]
async fn startup_forgets_records_of_pods_that_are_gone() {
    let fakes = Fakes::default();
    let record = PodRecord {
        status_interfaces: Default::default(),
        uid: "gone".into(),
        namespace: "ns".into(),
        name: "pod-gone".into(),
        sandbox_id: "s-old".into(),
        netns: "/var/run/netns/old".into(),
        attachments: Default::default(),
    };
    let dir_probe = start(&fakes, vec![record], vec![], 4);
    dir_probe
        .until("the cache of the gone sandbox forgotten", |f| {
            f.node().forgotten_sandboxes == ["s-old"]
        })
        .await;
    assert!(dir_probe.fakes.cni_calls().is_empty());
    let dir = dir_probe._dir.path().to_owned();
    dir_probe.stop().await;
    assert!(!dir.join("gone.json").exists());
}

#[tokio::test]
async fn deleted_pod_is_forgotten_and_shutdown_waits_for_work() {
    let fakes = Fakes::default();
    fakes.sandbox("u1", "s1");
    let h = start(&fakes, vec![], vec![view("u1", Some(GREEN))], 4);
    h.until("the ADD", |f| f.cni_calls().len() == 1).await;
    h.events
        .send(PodEvent::Deleted(view("u1", Some(GREEN))))
        .await
        .expect("send");
    h.until("the record forgotten", |f| {
        f.node().forgotten_sandboxes == ["s1"]
    })
    .await;
    assert_eq!(h.fakes.cni_calls().len(), 1, "no DEL for a gone pod");
    h.stop().await;
}

#[tokio::test]
async fn saturated_slots_do_not_spin_the_loop() {
    let fakes = Fakes::default();
    fakes.node().add_delay = Duration::from_millis(400);
    let pods: Vec<PodView> = ["u1", "u2", "u3"]
        .iter()
        .map(|uid| {
            fakes.sandbox(uid, &format!("s-{uid}"));
            view(uid, Some(GREEN))
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ctx = context(&fakes, dir.path());
    ctx.settings.concurrency = 1;
    let controller = Controller::new(ctx, vec![], pods);
    let (events, receiver) = mpsc::channel(16);
    let turns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&turns);
    let done = tokio::spawn(controller.run(
        receiver,
        mpsc::channel(1).1,
        Duration::from_secs(60),
        move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        },
    ));
    // Three pods due at once, one slot, each ADD 400 ms: the loop has a handful of reasons to
    // wake (three finished tasks), not thousands.
    for _ in 0..300 {
        if fakes.cni_calls().len() == 3 && fakes.node().links.values().all(|l| !l.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fakes.cni_calls().len(), 3, "{:?}", fakes.cni_calls());
    let turns = turns.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        turns < 50,
        "the loop turned {turns} times while waiting for a slot"
    );
    drop(events);
    done.await.expect("loop ends");
}

/// Direct mode: podagent owns teardown, so a pod that is deleted gets a DEL for each of its
/// attachments (from the record) before it is forgotten, also when the deletion is seen only
/// as the pod vanishing.
#[tokio::test]
async fn direct_mode_releases_a_deleted_pods_attachments() {
    use crate::networks::{Mode, NetworkObject, Networks, Settings};
    let fakes = Fakes::default();
    fakes.sandbox("u1", "s1");
    let h = start_with(&fakes, vec![], vec![view("u1", Some(GREEN))], |ctx| {
        let settings = Settings {
            mode: Mode::Direct,
            ..Settings::default()
        };
        ctx.networks = Networks::new(settings, "/nonexistent");
        let config = r#"{"cniVersion":"1.0.0","type":"bridge"}"#;
        ctx.networks.update(
            "ns",
            "green",
            Some(NetworkObject::new("green", None, Some(config))),
        );
    });
    h.until("the ADD", |f| f.cni_calls().len() == 1).await;
    let mut deleting = view("u1", Some(GREEN));
    deleting.deleting = true;
    h.events
        .send(PodEvent::Applied(deleting.clone()))
        .await
        .expect("send");
    // While its sandbox runs, a terminating pod keeps its interfaces (graceful shutdown).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        h.fakes.cni_calls().len(),
        1,
        "no DEL while the sandbox runs"
    );
    h.events
        .send(PodEvent::Deleted(deleting))
        .await
        .expect("send");
    h.until("the DEL", |f| f.cni_calls().len() == 2).await;
    assert_eq!(
        h.fakes.cni_calls(),
        ["ADD pod-u1 net9f27410725ab", "DEL pod-u1 net9f27410725ab"]
    );
    h.stop().await;
}
