//! Test doubles of the outside systems a reconcile touches, sharing one picture of the node:
//! sandboxes by pod uid and the links in each netns. The fake CNI adds and removes links in
//! that picture, so the fake observer sees what a real netns would. Every call is counted.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use serde_json::json;

use super::Context;
use super::report::Notice;
use crate::cni::{Cni, CniError, CniResult, Op, PluginRun, Target};
use crate::config::ReconcileSettings;
use crate::kubeapi::PodView;
use crate::kubeapi::events::{Feedback, ReportError, StatusWrite};
use crate::netns::{
    Inspection, Link, NetnsAccess, NetnsError, NetnsFuture, NetnsId, OperState, ReplacedRoute,
};
use crate::networks::Networks;
use crate::pod::PodRef;
use crate::runtime::{Runtime, RuntimeError, RuntimeKind, RuntimeVersion, Sandbox};
use crate::store::Store;
use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct Node {
    /// Pod uid → (sandbox id, netns).
    pub(crate) sandboxes: HashMap<String, (String, PathBuf)>,
    /// Netns → link names.
    pub(crate) links: HashMap<PathBuf, BTreeSet<String>>,
    /// Netns → the namespace behind the path (a new one each time a sandbox is made).
    pub(crate) namespaces: HashMap<PathBuf, u64>,
    /// `ADD <pod name> <ifname>` / `DEL …`, in order.
    pub(crate) cni_calls: Vec<String>,
    pub(crate) forgotten_sandboxes: Vec<String>,
    pub(crate) runtime_calls: usize,
    /// Pod names whose ADDs fail, with the CNI error code.
    pub(crate) failing: HashMap<String, u64>,
    /// Pod names whose DELs fail, with the CNI error code.
    pub(crate) failing_del: HashMap<String, u64>,
    pub(crate) events: Vec<(String, Notice)>,
    pub(crate) statuses: Vec<(String, Option<String>)>,
    /// How many ADDs panic (a bug in a reconcile) before the next ones work.
    pub(crate) panicking_adds: usize,
    /// How long each ADD takes, to keep reconcile slots busy.
    pub(crate) add_delay: Duration,
}

#[derive(Clone, Default)]
pub(crate) struct Fakes(pub(crate) Arc<Mutex<Node>>);

impl Fakes {
    pub(crate) fn node(&self) -> std::sync::MutexGuard<'_, Node> {
        self.0.lock().expect("fake node lock")
    }

    /// Gives `uid` a ready sandbox `id` whose netns holds `lo` and `eth0`.
    pub(crate) fn sandbox(&self, uid: &str, id: &str) -> PathBuf {
        let netns = PathBuf::from(format!("/var/run/netns/fake-{id}"));
        let mut node = self.node();
        node.sandboxes
            .insert(uid.to_owned(), (id.to_owned(), netns.clone()));
        node.links.insert(
            netns.clone(),
            ["lo", "eth0"].into_iter().map(String::from).collect(),
        );
        let next = node.namespaces.len() as u64 + 1;
        node.namespaces.insert(netns.clone(), next);
        netns
    }

    pub(crate) fn cni_calls(&self) -> Vec<String> {
        self.node().cni_calls.clone()
    }

    pub(crate) fn reasons(&self) -> Vec<&'static str> {
        self.node().events.iter().map(|(_, n)| n.reason).collect()
    }
}

impl Runtime for Fakes {
    fn sandbox<'a>(&'a self, pod: &'a PodRef) -> BoxFuture<'a, Result<Sandbox, RuntimeError>> {
        let mut node = self.node();
        node.runtime_calls += 1;
        let answer = match node.sandboxes.get(&pod.uid) {
            Some((id, netns)) => Ok(Sandbox {
                id: id.clone(),
                netns: netns.clone(),
            }),
            None => Err(RuntimeError::NoSandbox {
                pod: pod.to_string(),
            }),
        };
        Box::pin(async { answer })
    }

    fn version(&self) -> BoxFuture<'_, Result<RuntimeVersion, RuntimeError>> {
        Box::pin(async {
            Ok(RuntimeVersion {
                kind: RuntimeKind::Containerd,
                name: "fake".into(),
                version: "0".into(),
                api_version: "v1".into(),
            })
        })
    }
}

impl Cni for Fakes {
    fn add<'a>(&'a self, a: &'a Target) -> BoxFuture<'a, Result<CniResult, CniError>> {
        Box::pin(self.add_now(a))
    }

    fn del<'a>(&'a self, a: &'a Target) -> BoxFuture<'a, Result<(), CniError>> {
        let mut node = self.node();
        node.cni_calls
            .push(format!("DEL {} {}", a.pod_name, a.ifname));
        let answer = match node.failing_del.get(&a.pod_name).copied() {
            Some(code) => Err(refused(Op::Del, a, code)),
            None => {
                if let Some(links) = node.links.get_mut(&a.netns) {
                    links.remove(&a.ifname);
                }
                Ok(())
            }
        };
        Box::pin(async { answer })
    }

    fn forget_sandbox<'a>(&'a self, sandbox_id: &'a str) -> BoxFuture<'a, Result<(), CniError>> {
        self.node().forgotten_sandboxes.push(sandbox_id.to_owned());
        Box::pin(async { Ok(()) })
    }
}

impl Fakes {
    /// An ADD that takes `add_delay`, so tests can keep reconcile slots busy.
    async fn add_now(&self, a: &Target) -> Result<CniResult, CniError> {
        let delay = self.node().add_delay;
        tokio::time::sleep(delay).await;
        let mut node = self.node();
        node.cni_calls
            .push(format!("ADD {} {}", a.pod_name, a.ifname));
        if node.panicking_adds > 0 {
            node.panicking_adds -= 1;
            // Not while holding the lock: a poisoned node would fail every later call.
            drop(node);
            panic!("fake ADD panics");
        }
        if let Some(code) = node.failing.get(&a.pod_name).copied() {
            return Err(refused(Op::Add, a, code));
        }
        node.links
            .entry(a.netns.clone())
            .or_default()
            .insert(a.ifname.clone());
        let raw = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": a.ifname, "mac": a.if_mac.clone().unwrap_or("0a:58:00:00:00:01".into()), "sandbox": a.netns}],
            "ips": [{"address": "198.18.200.2/24", "interface": 0}]
        });
        Ok(CniResult::parse(raw).expect("fake result"))
    }
}

/// The error of a plugin that refused `op` on `a` with CNI error `code`.
fn refused(op: Op, a: &Target, code: u64) -> CniError {
    CniError::Failed {
        run: Box::new(PluginRun {
            op,
            plugin: "fake".into(),
            network: "net".into(),
            netns: Some(a.netns.clone()),
            ifname: Some(a.ifname.clone()),
        }),
        exit_code: 1,
        code: Some(code),
        msg: "refused".into(),
        details: String::new(),
        stderr: String::new(),
    }
}

impl NetnsAccess for Fakes {
    /// The fake pods have no routes: asking to move one moves nothing.
    fn move_default_route<'a>(
        &'a self,
        _netns: &'a Path,
        _ifname: &'a str,
        _gateway: std::net::IpAddr,
    ) -> NetnsFuture<'a, Vec<ReplacedRoute>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn restore_default_routes<'a>(
        &'a self,
        _netns: &'a Path,
        _routes: &'a [ReplacedRoute],
    ) -> NetnsFuture<'a, Vec<ReplacedRoute>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn inspect<'a>(&'a self, netns: &'a Path) -> NetnsFuture<'a, Inspection> {
        let node = self.node();
        let found = node
            .links
            .get(netns)
            .cloned()
            .zip(node.namespaces.get(netns).copied());
        drop(node);
        Box::pin(async move {
            let (names, id) = found.ok_or_else(|| NetnsError::Open {
                path: netns.to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
            let links = names
                .into_iter()
                .enumerate()
                .map(|(i, name)| Link {
                    name,
                    index: u32::try_from(i).unwrap_or(0) + 1,
                    mac: None,
                    oper_state: OperState::Up,
                    addresses: Vec::new(),
                })
                .collect();
            Ok(Inspection {
                id: NetnsId::fake(id),
                links,
            })
        })
    }
}

impl Feedback for Fakes {
    fn event<'a>(
        &'a self,
        pod: &'a PodRef,
        notice: Notice,
    ) -> BoxFuture<'a, Result<(), ReportError>> {
        self.node().events.push((pod.uid.clone(), notice));
        Box::pin(async { Ok(()) })
    }

    fn status<'a>(
        &'a self,
        pod: &'a PodRef,
        write: StatusWrite<'a>,
    ) -> BoxFuture<'a, Result<(), ReportError>> {
        self.node()
            .statuses
            .push((pod.uid.clone(), write.value.map(str::to_owned)));
        Box::pin(async { Ok(()) })
    }

    fn forget(&self, _uid: &str) {}
}

fn settings() -> ReconcileSettings {
    ReconcileSettings {
        concurrency: 4,
        retry_base: Duration::from_millis(10),
        retry_cap: Duration::from_millis(80),
        resync_period: Duration::from_secs(300),
    }
}

pub(crate) fn context(fakes: &Fakes, dir: &std::path::Path) -> Context {
    Context {
        runtime: Arc::new(fakes.clone()),
        cni: Arc::new(fakes.clone()),
        netns: Arc::new(fakes.clone()),
        store: Store::open(dir).expect("store"),
        feedback: Arc::new(fakes.clone()),
        networks: Networks::new(Default::default(), "/nonexistent"),
        settings: settings(),
        metrics: crate::metrics::Metrics::new(),
    }
}

pub(crate) fn view(uid: &str, networks: Option<&str>) -> PodView {
    PodView {
        uid: uid.into(),
        namespace: "ns".into(),
        name: format!("pod-{uid}"),
        phase: "Running".into(),
        networks: networks.map(str::to_owned),
        host_network: false,
        deleting: false,
        container_ids: vec!["containerd://c1".into()],
        network_status: None,
        resource_version: "1".into(),
    }
}
