//! One reconcile of one pod: look, plan, act, write down, report.
//!
//! The order of effects is what makes a crash at any point recoverable (DESIGN.md §2): an
//! attachment is recorded `Adding` before its CNI ADD and `Attached` with the result after it,
//! `Removing` before the DEL of an attached one, and forgotten after it. The next reconcile
//! compares those records with the links really in the netns: a call a crash may have cut short
//! is done again from a DEL, and a link made by an ADD whose record never reached the disk is
//! adopted without a second ADD.
//!
//! Which config an ADD runs is the network mode's answer (`networks`): the node's primary, or
//! the named network object's own, written into the record before the ADD so that every later
//! DEL runs what the ADD ran. An entry that cannot be resolved now (no such object, refused,
//! unusable) is reported once and waits, without a retry: the network watch wakes the pod when
//! the object changes. Where podagent owns teardown, the plan's releases DEL the attachments of
//! a gone pod or sandbox with their recorded configs before the record forgets them.
//!
//! The runtime and the netns are only asked when something could need doing: a pod without a
//! record and without a managed network costs nothing, and neither does one that is not
//! running. The runtime's answer is kept while the pod's containers and the namespace behind
//! the netns path stay the same. Steps run in the plan's order and stop at the first failure;
//! the caller retries with backoff and the plan is made again from whatever is then true.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tracing::{Instrument, debug, info, info_span, instrument, warn};

use super::Context;
use super::report::{
    NPWG_STATUS_ANNOTATION, Notice, STATUS_ANNOTATION, Severity, npwg_status_value, status_value,
};
use crate::annotation::{AnnotationError, NetworkSelection};
use crate::cni::{self, CniError, CniResult};
use crate::kubeapi::PodView;
use crate::kubeapi::events::{ReportError, StatusWrite};
use crate::netns::{Inspection, Link, NetnsError, NetnsId, ReplacedRoute};
use crate::networks::{Definition, Mode, Resolution};
use crate::plan::{self, Observed, PlanInput, PodFacts, SkipReason, Step};
use crate::pod::PodRef;
use crate::runtime::{RuntimeError, Sandbox};
use crate::store::{Attachment, Phase, PodRecord, Store, StoreError};

/// A failed reconcile; the pod is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    #[error("finding the sandbox of pod {pod}: {source}")]
    Runtime {
        pod: String,
        source: Box<RuntimeError>,
    },
    #[error("pod {pod} is running but its sandbox is not ready yet")]
    SandboxNotReady { pod: String },
    #[error("reading the links of pod {pod}: {source}")]
    Links {
        pod: String,
        source: Box<NetnsError>,
    },
    #[error("writing the record of pod {pod}: {source}")]
    Store { pod: String, source: StoreError },
    #[error("the record write of pod {pod} did not complete: {reason}")]
    StoreTask { pod: String, reason: String },
    #[error("adding network {network} ({ifname}) to pod {pod}: {source}")]
    Add {
        pod: String,
        network: String,
        ifname: String,
        source: Box<CniError>,
    },
    #[error("removing network {network} ({ifname}) from pod {pod}: {source}")]
    Del {
        pod: String,
        network: String,
        ifname: String,
        source: Box<CniError>,
    },
    /// npwg mode: the merged `network-status` could not be written (a 409 means someone
    /// wrote the pod meanwhile: merge again from the newer pod).
    #[error("{source}")]
    Status { source: Box<ReportError> },
}

impl ReconcileError {
    /// The plugin asked to be called again later (CNI code 11): retry at the base delay.
    pub(crate) fn is_retry_later(&self) -> bool {
        match self {
            ReconcileError::Status { source } => source.is_conflict(),
            ReconcileError::Add { source, .. } | ReconcileError::Del { source, .. } => {
                source.is_retry_later()
            }
            _ => false,
        }
    }
}

/// What the controller remembers about a pod's feedback between reconciles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Memo {
    /// The status annotation value last written: `None` until known, `Some(None)` when absent.
    pub(crate) status: Option<Option<String>>,
    /// The invalid annotation value already reported, so each distinct value is reported once.
    pub(crate) invalid: Option<String>,
    /// The HostNetworkPod warning was given.
    pub(crate) host_network_warned: bool,
    /// Per network: why it could not be resolved, as last reported (each reason once).
    pub(crate) unresolved: BTreeMap<String, String>,
    /// Per network: the edited config an attachment was last told it does not use.
    pub(crate) edited: BTreeMap<String, String>,
    /// The runtime's last answer for the pod's sandbox, while it can still be trusted.
    pub(crate) sandbox: Option<KnownSandbox>,
    /// npwg mode: the unusable `network-status` value already warned about.
    pub(crate) status_unusable: Option<String>,
    /// npwg mode, per interface: an ADD rolled back because the element was not honoured (its
    /// requested ips not assigned, its default route refused), with the config it ran; not
    /// tried again until either changes.
    pub(crate) unhonoured: BTreeMap<String, (NetworkSelection, String)>,
}

/// A sandbox the runtime named, with what it was named for: the pod's containers then and the
/// namespace its netns path led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnownSandbox {
    container_ids: Vec<String>,
    sandbox: Sandbox,
    netns: NetnsId,
}

/// A reconcile's input: the pod (`view` is `None` when it is gone) and what is recorded.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) pod: PodRef,
    pub(crate) view: Option<PodView>,
    pub(crate) record: Option<PodRecord>,
    pub(crate) memo: Memo,
    /// When the change this reconcile answers was seen (for the attach and detach latencies).
    pub(crate) seen: Instant,
}

/// How a reconcile ended.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Everything that can be done now is done; look again at the next change or resync.
    Settled,
    /// Try again after a backoff.
    Retry(ReconcileError),
    /// The pod is gone and forgotten.
    Gone,
}

/// A reconcile's output: the record and memo to keep, and the verdict.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) record: Option<PodRecord>,
    pub(crate) memo: Memo,
    pub(crate) verdict: Verdict,
}

/// Reconciles one pod. Never fails as a whole: errors become [`Verdict::Retry`].
#[instrument(skip_all, fields(
    pod = %job.pod,
    namespace = %job.pod.namespace,
    uid = %job.pod.uid,
))]
pub(crate) async fn reconcile(ctx: &Context, job: Job) -> Outcome {
    let Job {
        pod,
        view,
        record,
        memo,
        seen,
    } = job;
    let mut run = Run {
        ctx,
        pod: &pod,
        record,
        memo,
        sight: Sight::default(),
        seen,
    };
    let verdict = match &view {
        None => run.gone().await,
        Some(view) => run.present(view).await,
    };
    Outcome {
        record: run.record,
        memo: run.memo,
        verdict,
    }
}

/// The state of one reconcile in progress.
struct Run<'a> {
    ctx: &'a Context,
    pod: &'a PodRef,
    record: Option<PodRecord>,
    memo: Memo,
    sight: Sight,
    seen: Instant,
}

/// What a reconcile saw in the pod's netns before planning: the links (the plan's input, and
/// adopted attachments' status), or why there are none to show.
#[derive(Debug, Default)]
enum Sight {
    /// Nothing to look into: the pod is not running, is being deleted, uses hostNetwork or
    /// has no ready sandbox.
    #[default]
    NotLooked,
    Links(Vec<Link>),
    /// The netns could not be read: the reconcile fails with this if the plan needs the links.
    Unreadable(NetnsError),
}

impl Sight {
    /// What the plan knows of it.
    fn observed(&self) -> Observed {
        match self {
            Sight::Links(links) => Observed::Links(links.iter().map(|l| l.name.clone()).collect()),
            Sight::NotLooked | Sight::Unreadable(_) => Observed::Unknown,
        }
    }

    fn links(&self) -> &[Link] {
        match self {
            Sight::Links(links) => links,
            Sight::NotLooked | Sight::Unreadable(_) => &[],
        }
    }

    /// Why the netns could not be read, handed over once.
    fn take_error(&mut self) -> Option<NetnsError> {
        match std::mem::take(self) {
            Sight::Unreadable(error) => Some(error),
            other => {
                *self = other;
                None
            }
        }
    }
}

impl Run<'_> {
    /// The pod no longer exists: release its attachments when podagent owns teardown (in
    /// kactus mode the runtime's own CNI DEL removes the netns and everything in it), then
    /// forget its record and cached CNI results.
    async fn gone(&mut self) -> Verdict {
        let steps = plan::plan(&PlanInput {
            pod: None,
            desired: &Ok(Vec::new()),
            observed: &Observed::Unknown,
            recorded: self.record.as_ref(),
            owns_teardown: self.ctx.networks.owns_teardown(),
        });
        for step in &steps {
            if let Step::Release { attachment } = step
                && let Err(error) = self.release(attachment.clone()).await
            {
                return Verdict::Retry(error);
            }
        }
        if steps.contains(&Step::ForgetPod)
            && let Some(record) = &self.record
        {
            let sandbox = record.sandbox_id.clone();
            if let Err(error) = self.remove_record().await {
                return Verdict::Retry(error);
            }
            self.forget_sandbox(&sandbox).await;
            info!(sandbox = %sandbox, "pod is gone, forgot its record");
        }
        Verdict::Gone
    }

    async fn present(&mut self, view: &PodView) -> Verdict {
        let desired = self.ctx.networks.mode().desired(view.networks.as_deref());
        if let Ok(selections) = &desired {
            self.memo.invalid = None;
            // An entry dropped and added again is reported afresh.
            self.memo
                .unresolved
                .retain(|name, _| selections.iter().any(|s| s.name == *name));
        }
        let wants_nothing = desired
            .as_ref()
            .is_ok_and(|d| !d.iter().any(NetworkSelection::is_managed));
        if self.record.is_none() && wants_nothing {
            return Verdict::Settled;
        }

        let mut facts = PodFacts {
            running: view.phase == "Running",
            deleting: view.deleting,
            host_network: view.host_network,
            sandbox: None,
        };
        // Owning teardown, a stopping pod's sandbox is looked at too: its attachments go once
        // the sandbox has.
        let releasing = self.ctx.networks.owns_teardown()
            && self
                .record
                .as_ref()
                .is_some_and(|r| !r.attachments.is_empty());
        if !facts.host_network && ((facts.running && !facts.deleting) || releasing) {
            match self.observe(view).await {
                Ok(Some((sandbox, inspection))) => {
                    self.sight = match inspection {
                        Ok(found) => Sight::Links(found.links),
                        Err(source) => Sight::Unreadable(source),
                    };
                    facts.sandbox = Some(sandbox);
                }
                Ok(None) => {}
                Err(source) => {
                    return Verdict::Retry(ReconcileError::Runtime {
                        pod: self.pod.to_string(),
                        source: Box::new(source),
                    });
                }
            }
        }

        let desired = match desired {
            Ok(selections) if self.ctx.networks.mode() == Mode::Npwg => {
                self.name_interfaces(view, selections, facts.sandbox.as_ref())
            }
            desired => desired,
        };
        let steps = plan::plan(&PlanInput {
            pod: Some(&facts),
            desired: &desired,
            observed: &self.sight.observed(),
            recorded: self.record.as_ref(),
            owns_teardown: self.ctx.networks.owns_teardown(),
        });
        let mut verdict = Verdict::Settled;
        for step in steps {
            let sandbox = facts.sandbox.as_ref();
            if let Err(error) = self.step(step, view, sandbox).await {
                verdict = Verdict::Retry(error);
                break;
            }
        }
        self.report_edited().await;
        if self.ctx.networks.mode() == Mode::Npwg {
            if let Err(error) = self.merge_npwg_status(view).await
                && matches!(verdict, Verdict::Settled)
            {
                verdict = Verdict::Retry(error);
            }
        } else {
            self.report_status().await;
        }
        if let Err(error) = self.drop_empty_record().await
            && matches!(verdict, Verdict::Settled)
        {
            verdict = Verdict::Retry(error);
        }
        verdict
    }

    /// NPWG mode: the interface of each element, against the record of the current sandbox
    /// and the links seen in it.
    fn name_interfaces(
        &self,
        view: &PodView,
        selections: Vec<NetworkSelection>,
        sandbox: Option<&Sandbox>,
    ) -> Result<Vec<NetworkSelection>, AnnotationError> {
        let none = BTreeMap::new();
        let recorded = match (&self.record, sandbox) {
            (Some(record), Some(sandbox))
                if record.sandbox_id == sandbox.id && record.netns == sandbox.netns =>
            {
                &record.attachments
            }
            _ => &none,
        };
        let links = match self.sight.observed() {
            Observed::Links(links) => Some(links),
            Observed::Unknown => None,
        };
        let claims = crate::networks::claims(view.network_status.as_deref());
        crate::networks::name_interfaces(
            selections,
            recorded,
            links.as_ref(),
            &claims,
            &self.pod.namespace,
        )
    }

    /// Tells the pod, once per edit, which of its attachments run a config their network
    /// object no longer has: an edit applies to new attachments only.
    async fn report_edited(&mut self) {
        let Some(record) = &self.record else {
            return;
        };
        let mut notices = Vec::new();
        for (ifname, attachment) in &record.attachments {
            let Some(made) = &attachment.definition else {
                continue;
            };
            let now = match self
                .ctx
                .networks
                .resolve(&attachment.selection, &self.pod.namespace)
            {
                Resolution::Network(now) if now.config != made.config => now,
                _ => {
                    self.memo.edited.remove(ifname);
                    continue;
                }
            };
            if self.memo.edited.get(ifname) == Some(&now.config) {
                continue;
            }
            notices.push(Notice {
                severity: Severity::Normal,
                reason: "NetworkChanged",
                action: "Plan",
                note: format!(
                    "network {}: {} {}/{} changed since interface {ifname} was added; it \
                     keeps the config it was added with, new attachments get the new one \
                     (remove the entry and add it again to apply it here)",
                    attachment.selection.name,
                    self.ctx.networks.mode().object_kind(),
                    now.namespace,
                    now.name
                ),
            });
            self.memo.edited.insert(ifname.clone(), now.config);
        }
        for notice in notices {
            info!(note = %notice.note, "network object edited");
            self.notify(notice).await;
        }
    }

    /// The pod's ready sandbox (`None` when it has none) and a look into its netns.
    ///
    /// The runtime is asked only when the pod's containers changed since its last answer
    /// (kubelet re-creates every container with a new sandbox, so new ids are the sign of a new
    /// sandbox) or when the netns path no longer leads to the namespace it led to then; otherwise
    /// that answer stands, which spares two runtime calls per reconcile, retries included.
    async fn observe(
        &mut self,
        view: &PodView,
    ) -> Result<Option<(Sandbox, Result<Inspection, NetnsError>)>, RuntimeError> {
        if let Some(known) = self.memo.sandbox.take()
            && !view.container_ids.is_empty()
            && known.container_ids == view.container_ids
            && let Ok(found) = self.ctx.netns.inspect(&known.sandbox.netns).await
            && found.id == known.netns
        {
            let sandbox = known.sandbox.clone();
            self.memo.sandbox = Some(known);
            return Ok(Some((sandbox, Ok(found))));
        }
        let sandbox = match self.ctx.runtime.sandbox(self.pod).await {
            Ok(sandbox) => sandbox,
            Err(RuntimeError::NoSandbox { .. } | RuntimeError::NotReady { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let inspection = self.ctx.netns.inspect(&sandbox.netns).await;
        if let Ok(found) = &inspection {
            self.memo.sandbox = Some(KnownSandbox {
                container_ids: view.container_ids.clone(),
                sandbox: sandbox.clone(),
                netns: found.id,
            });
        }
        Ok(Some((sandbox, inspection)))
    }

    async fn step(
        &mut self,
        step: Step,
        view: &PodView,
        sandbox: Option<&Sandbox>,
    ) -> Result<(), ReconcileError> {
        match step {
            Step::Skip(SkipReason::HostNetwork) => {
                if !self.memo.host_network_warned {
                    warn!("hostNetwork pod: its networks annotation is ignored");
                    // The dynamic-networks controller's reason, for the tools that watch it.
                    let reason = match self.ctx.networks.mode() {
                        Mode::Npwg => "InterfaceAddRejected",
                        Mode::Kactus | Mode::Direct => "HostNetworkPod",
                    };
                    self.notify(Notice {
                        severity: Severity::Warning,
                        reason,
                        action: "Plan",
                        note: "podagent cannot plug interfaces into a pod that uses the node's \
                               network namespace (hostNetwork: true); its networks annotation \
                               is ignored"
                            .to_owned(),
                    })
                    .await;
                    self.memo.host_network_warned = true;
                }
                Ok(())
            }
            Step::Skip(reason) => self.skip(reason),
            Step::ReportInvalid(error) => {
                if self.memo.invalid != view.networks {
                    warn!(error = %error, "networks annotation refused; nothing changed");
                    self.notify(Notice {
                        severity: Severity::Warning,
                        reason: "InvalidNetworksAnnotation",
                        action: "ReadAnnotation",
                        note: error.to_string(),
                    })
                    .await;
                    self.memo.invalid.clone_from(&view.networks);
                }
                Ok(())
            }
            Step::DropStaleSandbox { old_sandbox } => {
                let Some(sandbox) = sandbox else {
                    return Ok(());
                };
                if let Some(record) = &mut self.record {
                    info!(old_sandbox = %old_sandbox, sandbox = %sandbox.id, dropped = record.attachments.len(),
                        "sandbox was re-created: its attachments died with the old netns");
                    record.sandbox_id.clone_from(&sandbox.id);
                    record.netns.clone_from(&sandbox.netns);
                    record.attachments.clear();
                }
                self.persist().await?;
                self.forget_sandbox(&old_sandbox).await;
                Ok(())
            }
            Step::Del { attachment } => {
                let Some(sandbox) = sandbox else {
                    return Ok(());
                };
                self.del(attachment, sandbox, true).await
            }
            Step::Release { attachment } => self.release(attachment).await,
            Step::Forget { ifname } => {
                if let Some(record) = &mut self.record {
                    record.attachments.remove(&ifname);
                }
                info!(ifname = %ifname, "attachment forgotten");
                self.persist().await
            }
            Step::Adopt { selection } => {
                let Some(sandbox) = sandbox else {
                    return Ok(());
                };
                let mut attachment = Attachment::new(selection, Phase::Attached).starting_now();
                if self.ctx.networks.mode() == Mode::Npwg {
                    // Multus made it: the DEL that removes it must run the definition's config
                    // with a prevResult of what the netns shows, never what the status claims.
                    let selection = &attachment.selection;
                    match self.ctx.networks.resolve(selection, &self.pod.namespace) {
                        Resolution::Network(definition) => {
                            attachment.result = observed_result(
                                &definition.config,
                                self.sight.links(),
                                &attachment.ifname,
                                &sandbox.netns,
                            );
                            attachment.definition = Some(definition);
                        }
                        Resolution::Unresolved(why) => {
                            let name = selection.name.clone();
                            self.report_unresolved(&name, why).await;
                            return Ok(());
                        }
                        Resolution::Primary => {}
                    }
                }
                info!(network = %attachment.selection.name, ifname = %attachment.ifname, sandbox = %sandbox.id,
                    "interface already present: adopted without a CNI call");
                self.record_for(sandbox)
                    .attachments
                    .insert(attachment.ifname.clone(), attachment);
                self.persist().await
            }
            Step::Add { selection } => {
                let Some(sandbox) = sandbox else {
                    return Ok(());
                };
                self.add(selection, sandbox).await
            }
            Step::LeaveAlone { ifname } => {
                info!(ifname = %ifname, "interface neither wanted nor made by podagent: left alone");
                Ok(())
            }
            Step::ForgetPod => Ok(()),
        }
    }

    fn skip(&mut self, reason: SkipReason) -> Result<(), ReconcileError> {
        match reason {
            SkipReason::NotRunning | SkipReason::Deleting | SkipReason::HostNetwork => {
                debug!(?reason, "nothing to do for this pod now");
                Ok(())
            }
            SkipReason::SandboxNotReady => Err(ReconcileError::SandboxNotReady {
                pod: self.pod.to_string(),
            }),
            SkipReason::NetnsUnreadable => match self.sight.take_error() {
                Some(source) => Err(ReconcileError::Links {
                    pod: self.pod.to_string(),
                    source: Box::new(source),
                }),
                None => Ok(()),
            },
        }
    }

    async fn add(
        &mut self,
        selection: NetworkSelection,
        sandbox: &Sandbox,
    ) -> Result<(), ReconcileError> {
        let definition = match self.ctx.networks.resolve(&selection, &self.pod.namespace) {
            Resolution::Primary => None,
            Resolution::Network(definition) => Some(definition),
            Resolution::Unresolved(why) => {
                self.report_unresolved(&selection.name, why).await;
                return Ok(());
            }
        };
        self.memo.unresolved.remove(&selection.name);
        let target = self.target(sandbox, &selection, definition.as_ref());
        let attempt = (selection.clone(), target.config.clone().unwrap_or_default());
        if self.memo.unhonoured.get(&target.ifname) == Some(&attempt) {
            debug!(ifname = %target.ifname, "what it requested was not honoured with this config; not tried again");
            return Ok(());
        }
        self.memo.unhonoured.remove(&target.ifname);
        let span = info_span!("add", network = %selection.name, ifname = %target.ifname, sandbox = %sandbox.id);
        async {
            let name = selection.name.clone();
            let requested = selection.clone();
            let mut attachment = Attachment::new(selection, Phase::Adding).starting_now();
            attachment.definition = definition;
            self.record_for(sandbox)
                .attachments
                .insert(target.ifname.clone(), attachment);
            self.persist().await?;
            info!("CNI ADD");
            match self.ctx.cni.add(&target).await {
                Ok(result) => {
                    let replaced_routes = match self.honour(&requested, &target, &result).await {
                        Ok(replaced) => replaced,
                        Err((note, replaced)) => {
                            self.memo.unhonoured.insert(target.ifname.clone(), attempt);
                            return self
                                .roll_back_unhonoured(&target, &name, &note, &replaced)
                                .await;
                        }
                    };
                    if let Some(a) = self.attachment_mut(&target.ifname) {
                        a.enter(Phase::Attached);
                        a.result = Some(result.raw.clone());
                        a.replaced_routes = replaced_routes;
                    }
                    let summary = summary(&result, &target.ifname);
                    info!(addresses = %summary, "interface added");
                    self.ctx.metrics.attached(self.seen);
                    self.persist().await?;
                    self.notify(Notice {
                        severity: Severity::Normal,
                        reason: "AddedInterface",
                        action: "AddInterface",
                        note: format!(
                            "network {name}: added interface {} ({summary})",
                            target.ifname
                        ),
                    })
                    .await;
                    Ok(())
                }
                Err(source) => {
                    warn!(error = %source, code = ?source.code(), "CNI ADD failed");
                    self.notify(Notice {
                        severity: Severity::Warning,
                        reason: "FailedAddingInterface",
                        action: "AddInterface",
                        note: format!(
                            "network {name}: adding interface {} failed: {source}",
                            target.ifname
                        ),
                    })
                    .await;
                    Err(ReconcileError::Add {
                        pod: self.pod.to_string(),
                        network: name,
                        ifname: target.ifname,
                        source: Box::new(source),
                    })
                }
            }
        }
        .instrument(span)
        .await
    }

    /// npwg mode: what the element asks for beyond the ADD itself. The result must hold every
    /// requested address (NPWG §4); then each `default-route` gateway becomes the pod's
    /// default route of its family, on the new interface. Returns the routes that replaced;
    /// `Err`: what was not honoured, as the Event says it, and the routes replaced before that.
    async fn honour(
        &self,
        selection: &NetworkSelection,
        target: &cni::Target,
        result: &CniResult,
    ) -> Result<Vec<ReplacedRoute>, (String, Vec<ReplacedRoute>)> {
        let missing = missing_ips(selection, result, &target.ifname);
        if !missing.is_empty() {
            let got = summary(result, &target.ifname);
            warn!(missing = ?missing, got = %got, "the plugin did not assign the requested ips");
            let note = format!(
                "interface {} did not get the requested ips {} ({got}); use an IPAM that \
                 honours requested addresses (static, or host-local/whereabouts with the ips \
                 capability)",
                target.ifname,
                missing.join(", ")
            );
            return Err((note, Vec::new()));
        }
        let gateways = selection
            .requests
            .as_ref()
            .map_or(&[][..], |r| r.default_route.as_slice());
        let mut replaced = Vec::new();
        for gateway in gateways {
            let moved = self
                .ctx
                .netns
                .move_default_route(&target.netns, &target.ifname, *gateway)
                .await;
            match moved {
                Ok(routes) => {
                    info!(gateway = %gateway, replaced = ?routes, "default route moved onto the interface");
                    replaced.extend(routes);
                }
                Err(error) => {
                    let error = crate::error_chain::render(&error);
                    warn!(gateway = %gateway, error = %error, "cannot move the default route");
                    let note = format!(
                        "interface {} cannot carry the requested default route via {gateway}: \
                         {error}; ask for a gateway in the interface's subnet",
                        target.ifname
                    );
                    return Err((note, replaced));
                }
            }
        }
        Ok(replaced)
    }

    /// An ADD whose element was not honoured (`honour`): DEL it again, put back the default
    /// routes it replaced, forget it, and tell the user; tried again only once the element or
    /// the config it runs changes (`Memo::unhonoured`), since the same plugin would answer the
    /// same.
    async fn roll_back_unhonoured(
        &mut self,
        target: &cni::Target,
        name: &str,
        note: &str,
        replaced: &[ReplacedRoute],
    ) -> Result<(), ReconcileError> {
        warn!("not what the element asked for; rolling the ADD back");
        self.ctx
            .cni
            .del(target)
            .await
            .map_err(|source| ReconcileError::Del {
                pod: self.pod.to_string(),
                network: name.to_owned(),
                ifname: target.ifname.clone(),
                source: Box::new(source),
            })?;
        self.restore_routes(&target.netns, replaced).await;
        if let Some(record) = &mut self.record {
            record.attachments.remove(&target.ifname);
        }
        self.persist().await?;
        self.notify(Notice {
            severity: Severity::Warning,
            reason: "FailedAddingInterface",
            action: "AddInterface",
            note: format!("network {name}: {note}; it was removed again"),
        })
        .await;
        Ok(())
    }

    /// Puts back default routes an attachment replaced, once its interface is gone. A failure
    /// is logged, not retried: the interface is gone either way, and what the pod routes
    /// through now is its owner's to see.
    async fn restore_routes(&self, netns: &std::path::Path, replaced: &[ReplacedRoute]) {
        if replaced.is_empty() {
            return;
        }
        match self.ctx.netns.restore_default_routes(netns, replaced).await {
            Ok(restored) => info!(restored = ?restored, "default routes put back"),
            Err(error) => {
                warn!(error = %crate::error_chain::render(&error), "cannot put the pod's default routes back");
            }
        }
    }

    /// An entry with nothing to run: a Warning Event per distinct reason, then a wait for the
    /// network watch (no retry: nothing here would change before the object does).
    async fn report_unresolved(&mut self, network: &str, why: crate::networks::Unresolved) {
        let note = format!("network {network}: {why}");
        if self.memo.unresolved.get(network) == Some(&note) {
            return;
        }
        warn!(network = %network, reason = why.reason(), problem = %why, "network not resolved; waiting for it");
        self.notify(Notice {
            severity: Severity::Warning,
            reason: why.reason(),
            action: "ResolveNetwork",
            note: note.clone(),
        })
        .await;
        self.memo.unresolved.insert(network.to_owned(), note);
    }

    /// DEL of an attachment in the recorded sandbox (gone or going), then its record entry
    /// goes. A crash in between leaves it recorded `Removing`: the DEL is repeated, never
    /// skipped.
    async fn release(&mut self, attachment: Attachment) -> Result<(), ReconcileError> {
        let Some(record) = &self.record else {
            return Ok(());
        };
        let recorded = Sandbox {
            id: record.sandbox_id.clone(),
            netns: record.netns.clone(),
        };
        let name = attachment.selection.name.clone();
        let ifname = attachment.ifname.clone();
        self.del(attachment, &recorded, false).await?;
        if let Some(record) = &mut self.record {
            record.attachments.remove(&ifname);
        }
        info!(network = %name, ifname = %ifname, sandbox = %recorded.id, "attachment released with its sandbox");
        self.persist().await
    }

    /// `announce`: a removal the user asked for gets its `RemovedInterface` Event; a release
    /// with the pod or sandbox does not (failures are reported either way).
    async fn del(
        &mut self,
        attachment: Attachment,
        sandbox: &Sandbox,
        announce: bool,
    ) -> Result<(), ReconcileError> {
        let target = self.target(
            sandbox,
            &attachment.selection,
            attachment.definition.as_ref(),
        );
        let name = attachment.selection.name.clone();
        let span =
            info_span!("del", network = %name, ifname = %target.ifname, sandbox = %sandbox.id);
        async {
            // An `Adding` or `Removing` record already sends a reconcile after a crash to DEL
            // first, so only an `Attached` one needs its new phase written down before the DEL.
            if attachment.phase == Phase::Attached {
                if let Some(a) = self.attachment_mut(&target.ifname) {
                    a.enter(Phase::Removing);
                }
                self.persist().await?;
            }
            info!(was = ?attachment.phase, "CNI DEL");
            match self.ctx.cni.del(&target).await {
                Ok(()) => {
                    info!("interface removed");
                    if announce {
                        self.restore_routes(&target.netns, &attachment.replaced_routes)
                            .await;
                    }
                    // A DEL that cleans up an ADD which never completed removed nothing the
                    // user saw; only count and report the removal of what was there.
                    let was_there = attachment.phase != Phase::Adding;
                    if was_there {
                        self.ctx.metrics.detached(self.seen);
                    }
                    if announce && was_there {
                        self.notify(Notice {
                            severity: Severity::Normal,
                            reason: "RemovedInterface",
                            action: "RemoveInterface",
                            note: format!(
                                "network {name}: removed interface {}{}",
                                target.ifname,
                                removed_summary(&attachment)
                            ),
                        })
                        .await;
                    }
                    Ok(())
                }
                Err(source) => {
                    warn!(error = %source, code = ?source.code(), "CNI DEL failed");
                    self.notify(Notice {
                        severity: Severity::Warning,
                        reason: "FailedRemovingInterface",
                        action: "RemoveInterface",
                        note: format!(
                            "network {name}: removing interface {} failed: {source}",
                            target.ifname
                        ),
                    })
                    .await;
                    Err(ReconcileError::Del {
                        pod: self.pod.to_string(),
                        network: name.clone(),
                        ifname: target.ifname,
                        source: Box::new(source),
                    })
                }
            }
        }
        .instrument(span)
        .await
    }

    fn target(
        &self,
        sandbox: &Sandbox,
        selection: &NetworkSelection,
        definition: Option<&Definition>,
    ) -> cni::Target {
        cni::Target {
            sandbox_id: sandbox.id.clone(),
            netns: sandbox.netns.clone(),
            ifname: selection.ifname(),
            pod_namespace: self.pod.namespace.clone(),
            pod_name: self.pod.name.clone(),
            pod_uid: self.pod.uid.clone(),
            network: selection.name.clone(),
            if_mac: selection.if_mac.map(|mac| mac.to_string()),
            config: definition.map(|d| match &selection.requests {
                Some(requests) => with_cni_args(&d.config, &requests.cni_args),
                None => d.config.clone(),
            }),
            requested: (self.ctx.networks.mode() == Mode::Npwg).then(|| {
                let requests = selection.requests.as_deref();
                cni::Requested {
                    ips: requests.map_or_else(Vec::new, |r| {
                        r.ips.iter().map(ToString::to_string).collect()
                    }),
                    port_mappings: requests.map_or_else(Vec::new, |r| r.port_mappings.clone()),
                    bandwidth: requests.and_then(|r| r.bandwidth.clone()),
                }
            }),
        }
    }

    /// The record for the current sandbox, created when the pod had none.
    fn record_for(&mut self, sandbox: &Sandbox) -> &mut PodRecord {
        self.record.get_or_insert_with(|| PodRecord {
            status_interfaces: Default::default(),
            uid: self.pod.uid.clone(),
            namespace: self.pod.namespace.clone(),
            name: self.pod.name.clone(),
            sandbox_id: sandbox.id.clone(),
            netns: sandbox.netns.clone(),
            attachments: Default::default(),
        })
    }

    fn attachment_mut(&mut self, ifname: &str) -> Option<&mut Attachment> {
        self.record.as_mut()?.attachments.get_mut(ifname)
    }

    /// Writes the record (durably, off the async workers).
    async fn persist(&self) -> Result<(), ReconcileError> {
        let Some(record) = self.record.clone() else {
            return Ok(());
        };
        self.blocking(move |store| store.put(&record)).await
    }

    async fn remove_record(&mut self) -> Result<(), ReconcileError> {
        let uid = self.pod.uid.clone();
        self.blocking(move |store| store.remove(&uid)).await?;
        self.record = None;
        Ok(())
    }

    /// A record that holds nothing says nothing worth keeping.
    async fn drop_empty_record(&mut self) -> Result<(), ReconcileError> {
        match &self.record {
            Some(record) if record.holds_nothing() => self.remove_record().await,
            _ => Ok(()),
        }
    }

    async fn blocking(
        &self,
        work: impl FnOnce(&Store) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), ReconcileError> {
        let store = self.ctx.store.clone();
        let pod = self.pod.to_string();
        match tokio::task::spawn_blocking(move || work(&store)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ReconcileError::Store { pod, source }),
            Err(e) => Err(ReconcileError::StoreTask {
                pod,
                reason: e.to_string(),
            }),
        }
    }

    async fn forget_sandbox(&self, sandbox_id: &str) {
        if let Err(error) = self.ctx.cni.forget_sandbox(sandbox_id).await {
            warn!(sandbox = %sandbox_id, error = %error, "cannot remove the cached CNI results of a gone sandbox");
        }
    }

    async fn notify(&self, notice: Notice) {
        if let Err(error) = self.ctx.feedback.event(self.pod, notice).await {
            self.ctx.metrics.event_dropped();
            warn!(error = %error, "cannot record an Event");
        }
    }

    /// npwg mode: merges podagent's entries into the pod's `k8s.v1.cni.cncf.io/network-status`
    /// as the watch last showed it, and writes it conditioned on that pod version, so another
    /// writer's concurrent change is never overwritten: a 409 retries the reconcile, which
    /// merges again into the newer value. Nothing is written when nothing changes.
    async fn merge_npwg_status(&mut self, view: &PodView) -> Result<(), ReconcileError> {
        let Some(record) = &self.record else {
            return Ok(());
        };
        let merged = match npwg_status_value(
            view.network_status.as_deref(),
            record,
            self.sight.links(),
            &self.pod.namespace,
        ) {
            Ok(merged) => merged,
            Err(problem) => {
                if self.memo.status_unusable != view.network_status {
                    warn!(problem = %problem, "network-status not merged");
                    self.memo.status_unusable.clone_from(&view.network_status);
                }
                return Ok(());
            }
        };
        let written: BTreeSet<String> = record
            .attachments
            .iter()
            .filter(|(_, a)| a.phase == Phase::Attached)
            .map(|(ifname, _)| ifname.clone())
            .collect();
        if merged != view.network_status {
            let write = StatusWrite {
                key: NPWG_STATUS_ANNOTATION,
                value: merged.as_deref(),
                precondition: Some(&view.resource_version),
            };
            if let Err(error) = self.ctx.feedback.status(self.pod, write).await {
                warn!(error = %error, conflict = error.is_conflict(), "cannot write network-status");
                return Err(ReconcileError::Status {
                    source: Box::new(error),
                });
            }
            debug!(status = ?merged, "network-status merged");
        }
        // Only now may the entries of attachments that are gone stop counting as podagent's.
        // A record left with nothing is not written: `drop_empty_record` removes it next.
        match &mut self.record {
            Some(record) if record.status_interfaces != written => {
                record.status_interfaces = written;
                if record.holds_nothing() {
                    Ok(())
                } else {
                    self.persist().await
                }
            }
            _ => Ok(()),
        }
    }

    /// Writes the status annotation when it changed; a pod podagent never managed anything in
    /// is left untouched.
    async fn report_status(&mut self) {
        let value = status_value(self.record.as_ref(), self.sight.links());
        match &self.memo.status {
            Some(written) if *written == value => return,
            None if value.is_none() => {
                self.memo.status = Some(None);
                return;
            }
            _ => {}
        }
        let write = StatusWrite {
            key: STATUS_ANNOTATION,
            value: value.as_deref(),
            precondition: None,
        };
        match self.ctx.feedback.status(self.pod, write).await {
            Ok(()) => {
                debug!(status = ?value, "status annotation written");
                self.memo.status = Some(value);
            }
            Err(error) => warn!(error = %error, "cannot write the status annotation"),
        }
    }
}

/// `config` (a config list) with `args` merged into every plugin's `args.cni`, as Multus
/// passes an element's `cni-args`; unchanged when there are none (or it is not a list, which
/// the CNI engine then refuses with its own reason).
fn with_cni_args(config: &str, args: &serde_json::Map<String, serde_json::Value>) -> String {
    if args.is_empty() {
        return config.to_owned();
    }
    let Ok(mut list) = serde_json::from_str::<serde_json::Value>(config) else {
        return config.to_owned();
    };
    let Some(plugins) = list.get_mut("plugins").and_then(|p| p.as_array_mut()) else {
        return config.to_owned();
    };
    for plugin in plugins.iter_mut().filter_map(|p| p.as_object_mut()) {
        let cni = plugin
            .entry("args")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .map(|a| a.entry("cni").or_insert_with(|| serde_json::json!({})));
        if let Some(cni) = cni.and_then(|c| c.as_object_mut()) {
            cni.extend(args.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    list.to_string()
}

/// A CNI result describing link `ifname` as the netns shows it (its MAC and addresses), in
/// the `cniVersion` of `config`: the prevResult of the DEL of an attachment podagent adopted.
fn observed_result(
    config: &str,
    links: &[Link],
    ifname: &str,
    netns: &std::path::Path,
) -> Option<serde_json::Value> {
    let link = links.iter().find(|l| l.name == ifname)?;
    let version = serde_json::from_str::<serde_json::Value>(config)
        .ok()?
        .get("cniVersion")?
        .as_str()?
        .to_owned();
    let mut interface = serde_json::json!({"name": ifname, "sandbox": netns});
    if let Some(mac) = &link.mac {
        interface["mac"] = serde_json::json!(mac);
    }
    let ips: Vec<serde_json::Value> = link
        .addresses
        .iter()
        .filter(
            |a| !matches!(a.ip, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80),
        )
        .map(|a| serde_json::json!({"address": a.to_string(), "interface": 0}))
        .collect();
    Some(serde_json::json!({"cniVersion": version, "interfaces": [interface], "ips": ips}))
}

/// The requested addresses (NPWG `ips`) the ADD result does not give `ifname`.
fn missing_ips(selection: &NetworkSelection, result: &CniResult, ifname: &str) -> Vec<String> {
    let got = result.ips_of(ifname);
    selection
        .requests
        .iter()
        .flat_map(|r| r.ips.iter())
        .filter(|wanted| !got.iter().any(|c| c.addr == wanted.addr))
        .map(ToString::to_string)
        .collect()
}

/// Addresses and MAC of `ifname` from an ADD result, for logs and Events.
fn summary(result: &CniResult, ifname: &str) -> String {
    let ips: Vec<String> = result
        .ips_of(ifname)
        .iter()
        .map(|c| c.to_string())
        .collect();
    let ips = if ips.is_empty() {
        "no IPs".to_owned()
    } else {
        format!("IPs {}", ips.join(", "))
    };
    match result.mac_of(ifname) {
        Some(mac) => format!("{ips}, MAC {mac}"),
        None => ips,
    }
}

fn removed_summary(attachment: &Attachment) -> String {
    attachment
        .result
        .clone()
        .and_then(|raw| CniResult::parse(raw).ok())
        .map(|result| format!(" ({})", summary(&result, &attachment.ifname)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
