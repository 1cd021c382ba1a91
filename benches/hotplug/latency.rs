//! Scenario 1: attach/detach latency of one network on one running pod, and its floor.
//!
//! Latency runs from the moment the API server's answer to the annotation patch is back to the
//! kernel's `RTM_NEWLINK`/`RTM_DELLINK` for the interface inside the pod's netns. The floor,
//! measured in the same run on the same pod: (a) the same CNI engine and plugin run directly
//! with the same config, timed from the call to the same netlink notification, and (b) the
//! delivery delay of the watch alone: a plain kube-rs watch on the real kube-apiserver, with
//! podagent's own request (all namespaces, `spec.nodeName=<node>`), from the patch's answer to
//! the event of that patch. podagent's own overhead is latency − (a) − (b), percentile by
//! percentile.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use podagent::cni::Cni;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::linkwatch::{Change, LinkEvent, drain, wait_for};
use crate::measure::Summary;
use crate::world::{NAMESPACE, Pod, World};

pub const NETWORK: &str = "green";
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CniFloor {
    /// Call to the link's `RTM_NEWLINK` / `RTM_DELLINK`.
    pub attach: Summary,
    pub detach: Summary,
    /// Whole plugin chain runs, call to return.
    pub add_call: Summary,
    pub del_call: Summary,
}

/// The watch delivery delay on the real API server.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WatchFloor {
    /// Patch answered → the patch's `MODIFIED` event read by the watch client (0 when the
    /// event was read before the answer).
    pub delivery: Summary,
    /// How many of the events were read before the patch's answer was back.
    pub before_answer: usize,
    /// The patch call alone: request sent → answer back.
    pub patch_call: Summary,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub attach: Summary,
    pub detach: Summary,
    pub floor_cni: CniFloor,
    pub floor_watch: WatchFloor,
    pub overhead_attach_p50_ms: f64,
    pub overhead_attach_p99_ms: f64,
    pub overhead_detach_p50_ms: f64,
    pub overhead_detach_p99_ms: f64,
}

impl Latency {
    pub fn new(attach: Summary, detach: Summary, cni: CniFloor, watch: WatchFloor) -> Latency {
        let w = watch.delivery;
        Latency {
            attach,
            detach,
            floor_cni: cni,
            floor_watch: watch,
            overhead_attach_p50_ms: attach.p50_ms - cni.attach.p50_ms - w.p50_ms,
            overhead_attach_p99_ms: attach.p99_ms - cni.attach.p99_ms - w.p99_ms,
            overhead_detach_p50_ms: detach.p50_ms - cni.detach.p50_ms - w.p50_ms,
            overhead_detach_p99_ms: detach.p99_ms - cni.detach.p99_ms - w.p99_ms,
        }
    }
}

/// One `MODIFIED` event as the watch client read it.
struct Seen {
    at: Instant,
    name: String,
    version: String,
}

/// The watch delivery delay alone, on the real API server and without podagent: a kube-rs
/// watch making podagent's request (all namespaces, this node's pods) while the pod's
/// annotation `bench.podagent/probe` (which podagent does not read) is patched through the
/// same admin client the podagent trials patch with. The stream is read by a task of its own
/// that stamps each event when it is read, so the blocking patch call cannot delay the stamp;
/// each patch is matched to its own event by resourceVersion.
pub async fn watch_floor(world: &World, pod: &Pod, trials: usize) -> Result<WatchFloor> {
    let cluster = world.node.cluster();
    let client = testkit::control_plane::admin_client(cluster.kubeconfig())
        .await
        .context("a kube client for the API server")?;
    let api: Api<KubePod> = Api::all(client);
    let selector = format!("spec.nodeName={}", world.node.name());
    let list = api
        .list(&ListParams::default().fields(&selector))
        .await
        .context("list the node's pods")?;
    let version = list.metadata.resource_version.unwrap_or_default();
    let stream = api
        .watch(&WatchParams::default().fields(&selector), &version)
        .await
        .context("watch the node's pods")?;
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Result<Seen>>();
    let reader = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let item = stream.try_next().await;
            let at = Instant::now();
            let sent = match item {
                Ok(Some(WatchEvent::Modified(pod))) => tx.send(Ok(Seen {
                    at,
                    name: pod.metadata.name.unwrap_or_default(),
                    version: pod.metadata.resource_version.unwrap_or_default(),
                })),
                Ok(Some(WatchEvent::Error(status))) => {
                    tx.send(Err(anyhow!("watch error: {status:?}")))
                }
                Ok(Some(_)) => Ok(()),
                Ok(None) => tx.send(Err(anyhow!("the API server ended the watch"))),
                Err(err) => tx.send(Err(anyhow!(err).context("watch stream failed"))),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    let admin = cluster.admin();
    let (mut delivery, mut patch_call, mut before_answer) = (Vec::new(), Vec::new(), 0);
    let result: Result<()> = async {
        for trial in 0..trials {
            let sent = Instant::now();
            let patched = admin
                .patch_merge(
                    "v1",
                    "Pod",
                    Some(&world.namespace),
                    &pod.name,
                    json!({"metadata": {"annotations": {"bench.podagent/probe": trial.to_string()}}}),
                )
                .context("patch the probe annotation")?;
            let accepted = Instant::now();
            patch_call.push(accepted - sent);
            let version = patched["metadata"]["resourceVersion"]
                .as_str()
                .ok_or_else(|| anyhow!("the patched pod has no resourceVersion"))?
                .to_owned();
            loop {
                let event = tokio::time::timeout(WAIT, seen.recv())
                    .await
                    .map_err(|_| anyhow!("no watch event for the patch within {WAIT:?}"))?
                    .ok_or_else(|| anyhow!("the watch reader ended"))??;
                if event.name == pod.name && event.version == version {
                    if event.at < accepted {
                        before_answer += 1;
                    }
                    delivery.push(event.at.saturating_duration_since(accepted));
                    break;
                }
            }
        }
        Ok(())
    }
    .await;
    reader.abort();
    result?;
    Ok(WatchFloor {
        delivery: Summary::of(&delivery),
        before_answer,
        patch_call: Summary::of(&patch_call),
    })
}

/// The same plugin chain run directly by podagent's CNI engine on the pod's netns.
pub async fn cni_floor(
    world: &World,
    pod: &Pod,
    tag: usize,
    events: &mut UnboundedReceiver<LinkEvent>,
    trials: usize,
) -> Result<CniFloor> {
    let invoker = world.invoker();
    let attachment = world.attachment(pod, NETWORK)?;
    let (mut attach, mut detach, mut add_call, mut del_call) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..trials {
        drain(events);
        let start = Instant::now();
        invoker
            .add(&attachment)
            .await
            .context("floor: CNI ADD failed")?;
        add_call.push(start.elapsed());
        let seen = wait_for(events, tag, &attachment.ifname, Change::Added, WAIT).await?;
        attach.push(seen - start);

        drain(events);
        let start = Instant::now();
        invoker
            .del(&attachment)
            .await
            .context("floor: CNI DEL failed")?;
        del_call.push(start.elapsed());
        let seen = wait_for(events, tag, &attachment.ifname, Change::Removed, WAIT).await?;
        detach.push(seen - start);
    }
    Ok(CniFloor {
        attach: Summary::of(&attach),
        detach: Summary::of(&detach),
        add_call: Summary::of(&add_call),
        del_call: Summary::of(&del_call),
    })
}

/// podagent end to end: patch answered → link present, patch answered → link gone. Each step
/// waits for podagent to report the change in the status annotation before the next patch, so
/// no trial queues behind the tail of the previous one.
pub async fn agent_trials(
    world: &World,
    pod: &Pod,
    tag: usize,
    events: &mut UnboundedReceiver<LinkEvent>,
    trials: usize,
) -> Result<(Summary, Summary)> {
    let ifname = podagent::annotation::ifname(NETWORK);
    let (mut attach, mut detach) = (Vec::new(), Vec::new());
    let annotation = format!(r#"[{{"name":"{NETWORK}"}}]"#);
    for _ in 0..trials {
        drain(events);
        let accepted = world.set_networks(&pod.name, Some(&annotation));
        let seen = wait_for(events, tag, &ifname, Change::Added, WAIT)
            .await
            .with_context(|| format!("podagent log:\n{}", world.log_tail()))?;
        attach.push(seen - accepted);
        reported(world, &pod.name, true).await?;

        drain(events);
        let accepted = world.set_networks(&pod.name, None);
        let seen = wait_for(events, tag, &ifname, Change::Removed, WAIT)
            .await
            .with_context(|| format!("podagent log:\n{}", world.log_tail()))?;
        detach.push(seen - accepted);
        reported(world, &pod.name, false).await?;
    }
    Ok((Summary::of(&attach), Summary::of(&detach)))
}

/// Waits until podagent's status annotation on `pod` does (or does not) list the network.
async fn reported(world: &World, pod: &str, attached: bool) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = world
            .node
            .status(NAMESPACE, pod)
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|entries| entries.iter().any(|e| e["name"] == NETWORK));
        if listed == attached {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "podagent did not report {NETWORK} {} on {pod} within {WAIT:?}; log:\n{}",
                if attached { "attached" } else { "detached" },
                world.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// podagent's own steps on the attach path before the plugin runs, each timed alone on the
/// same pod: where the overhead over the floor goes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Steps {
    /// The CRI lookup: `ListPodSandbox` by pod UID, then verbose `PodSandboxStatus`.
    pub sandbox_lookup: Summary,
    /// Entering the netns from a fresh thread and dumping its links and addresses.
    pub link_dump: Summary,
    /// One durable record write (temp file, fsync, rename, fsync of the directory) in a
    /// directory on the same filesystem as podagent's state dir.
    pub record_write: Summary,
}

/// Times each of podagent's own pre-plugin steps `trials` times through its library.
pub async fn steps(world: &World, pod: &Pod, trials: usize) -> Result<Steps> {
    use podagent::pod::PodRef;
    use podagent::runtime::{CriRuntime, Runtime, RuntimeKind};
    use podagent::store::{Attachment, Phase, PodRecord, Store};

    let runtime = CriRuntime::new(
        RuntimeKind::Containerd,
        world.node.containerd().socket().to_owned(),
        WAIT,
    );
    let pod_ref = PodRef {
        uid: pod.uid.clone(),
        namespace: world.namespace.clone(),
        name: pod.name.clone(),
    };
    let netns = pod.netns()?;
    let store = Store::open(world.path("steps-state")).context("open the steps state dir")?;
    let selection = podagent::annotation::parse(Some(&format!(r#"[{{"name":"{NETWORK}"}}]"#)))
        .context("parse the probe annotation")?
        .remove(0);
    let record = PodRecord {
        status_interfaces: Default::default(),
        uid: pod.uid.clone(),
        namespace: world.namespace.clone(),
        name: pod.name.clone(),
        sandbox_id: world.attachment(pod, NETWORK)?.sandbox_id,
        netns: netns.to_owned(),
        attachments: [(
            selection.ifname(),
            Attachment::new(selection, Phase::Adding),
        )]
        .into(),
    };
    let (mut lookup, mut dump, mut write) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..trials {
        let start = Instant::now();
        runtime
            .sandbox(&pod_ref)
            .await
            .context("steps: CRI sandbox lookup")?;
        lookup.push(start.elapsed());

        let start = Instant::now();
        podagent::netns::inspect(netns)
            .await
            .context("steps: link dump")?;
        dump.push(start.elapsed());

        let start = Instant::now();
        store.put(&record).context("steps: record write")?;
        write.push(start.elapsed());
    }
    Ok(Steps {
        sandbox_lookup: Summary::of(&lookup),
        link_dump: Summary::of(&dump),
        record_write: Summary::of(&write),
    })
}
