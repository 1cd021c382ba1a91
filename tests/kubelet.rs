//! podagent beside a real kubelet, in direct and npwg mode: the kubelet runs the pods (placed by
//! the scheduler), their primary CNI and their lifecycle, podagent hot-plugs on the credentials
//! `create-kubeconfig.sh --node` makes with the admission policy applied. What the fast tier
//! assumes of the kubelet is seen here: a sandbox whose pause process dies is re-created and
//! re-plugged, a container restart costs nothing, a graceful delete interleaves with podagent's
//! teardown, a Deployment's rollout gets every new pod plugged and every old lease released, a
//! kubelet or podagent restart converges without a CNI call, and the kubelet's status and
//! podagent's annotation never clobber each other.
//!
//! Outcomes are read from the pods' netns, the network's lease files, the plugin wrapper's logs,
//! `kubectl exec` and the API, never from podagent's log.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podagent::annotation::ifname;
use serde_json::{Value, json};
use testkit::kubelet::{NodeRuntime, PAUSE_COMMAND, POD_COMMAND, pid_running};
use testkit::netns::{HostLinks, unique_name};
use testkit::node::{Agent, Node, WAIT, has_link, ipv4, sample};

const PODAGENT: &str = env!("CARGO_BIN_EXE_podagent");
const NETWORK: &str = "data";

/// How podagent is told about networks.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Direct,
    Npwg,
}

impl Mode {
    /// The annotation that selects networks in this mode.
    fn annotation(self) -> &'static str {
        match self {
            Mode::Direct => "networks",
            Mode::Npwg => "k8s.v1.cni.cncf.io/networks",
        }
    }

    /// The annotation podagent writes what it plugged into.
    fn status_annotation(self) -> &'static str {
        match self {
            Mode::Direct => testkit::node::STATUS_ANNOTATION,
            Mode::Npwg => "k8s.v1.cni.cncf.io/network-status",
        }
    }

    /// The annotation value asking for the `data` network.
    fn asks_for_data(self) -> String {
        match self {
            Mode::Direct => json!([{ "name": NETWORK }]).to_string(),
            Mode::Npwg => NETWORK.to_owned(),
        }
    }

    /// The annotations of a pod asking for the `data` network.
    fn with_data(self) -> Value {
        json!({ self.annotation(): self.asks_for_data() })
    }
}

/// A kubelet node with podagent's CRDs and the admission policy, and the `data` network (the
/// bridge through the logging wrapper, host-local leases in `ipam-data`) defined in the node's
/// `default` namespace the way the mode reads it.
struct Cluster {
    host: Node,
    mode: Mode,
    _links: HostLinks,
}

impl Cluster {
    async fn new(mode: Mode) -> Cluster {
        Cluster::on(mode, NodeRuntime::Containerd).await
    }

    async fn on(mode: Mode, runtime: NodeRuntime) -> Cluster {
        let host = Node::with_kubelet_on(PODAGENT, runtime).await;
        let bridge = unique_name("kdb");
        let links = HostLinks(vec![bridge.clone()]);
        host.cluster().install_admission_policy();
        let config = host.bridge_config(NETWORK, &bridge, &host.quarter(1));
        match mode {
            Mode::Direct => {
                host.cluster().install_network_crd();
                host.put_network(
                    "default",
                    NETWORK,
                    json!({"plugin": "bridge", "config": config.to_string()}),
                );
            }
            Mode::Npwg => {
                host.cluster().install_attachment_definition_crd();
                host.put_attachment_definition(
                    "default",
                    NETWORK,
                    json!({"config": config.to_string()}),
                );
            }
        }
        Cluster {
            host,
            mode,
            _links: links,
        }
    }

    /// podagent in the mode, on this node's own identity.
    fn start_agent(&self) -> Agent {
        let host = &self.host;
        let mut config = host.agent_config();
        config.kubeconfig = host.cluster().node_kubeconfig(host.name());
        config.networks = match self.mode {
            Mode::Direct => format!(
                "mode = \"direct\"\nfallback_namespace = \"{}\"\n",
                host.ns("default")
            ),
            Mode::Npwg => "mode = \"npwg\"\n".to_owned(),
        };
        host.start_agent_with(&config)
    }

    /// A pod the kubelet runs, asking for `data` when `annotated`; (uid, sandbox, netns).
    async fn pod(&self, name: &str, annotated: bool) -> (String, String, PathBuf) {
        let annotations = if annotated {
            self.mode.with_data()
        } else {
            json!({})
        };
        let (uid, sandbox) = self.host.kubelet_pod("default", name, annotations).await;
        let netns = self.host.netns(&sandbox).await;
        (uid, sandbox, netns)
    }

    /// Sets (or removes) the pod's network selection.
    fn select(&self, pod: &str, networks: Option<&str>) {
        self.host
            .annotate("default", pod, self.mode.annotation(), networks);
    }

    /// Waits for `data`'s interface in `netns`; its address.
    async fn plugged(&self, netns: &Path) -> String {
        self.host
            .eventually("the data interface", || ipv4(netns, &ifname(NETWORK)))
            .await
    }

    /// The sandboxes holding a lease of `data`.
    fn lease_holders(&self) -> Vec<String> {
        let mut holders: Vec<String> = self
            .host
            .leases(NETWORK)
            .into_iter()
            .map(|(_, holder)| holder)
            .collect();
        holders.sort();
        holders
    }

    /// `kubectl exec POD -- ip -o addr show`, as a user runs it.
    fn exec_ip_addr(&self, pod: &str) -> String {
        self.kubectl(&["exec", pod, "--", "ip", "-o", "addr", "show"])
    }

    /// `kubectl -n <the node's default namespace> ARGS` as the admin; its output, or a panic
    /// with its error.
    fn kubectl(&self, args: &[&str]) -> String {
        let out = self
            .host
            .cluster()
            .kubectl()
            .args(["-n", &self.host.ns("default")])
            .args(args)
            .output()
            .expect("running kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pod as the API has it.
    fn pod_object(&self, name: &str) -> Value {
        self.host
            .get_pod("default", name)
            .unwrap_or_else(|| panic!("pod {name} exists"))
    }
}

/// `podagent_reconciles_total{outcome="settled"}` of `agent`: `None` until it serves metrics.
fn settled(agent: &Agent) -> Option<f64> {
    let metrics = agent.get("/metrics").filter(|a| a.status == 200)?.body;
    Some(
        sample(
            &metrics,
            "podagent_reconciles_total",
            &[("outcome", "settled")],
        )
        .unwrap_or(0.0),
    )
}

async fn hot_plug_and_unplug_seen_by_kubectl_exec(mode: Mode) {
    hot_plug_and_unplug_seen_by_kubectl_exec_on(mode, NodeRuntime::Containerd).await;
}

/// The kubelet on the CRI-O the setup builds (pinned netns under /var/run/netns, no infra
/// process), as the seed's users ran it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crio_hot_plug_and_unplug_seen_by_kubectl_exec() {
    hot_plug_and_unplug_seen_by_kubectl_exec_on(Mode::Direct, NodeRuntime::Crio).await;
}

async fn hot_plug_and_unplug_seen_by_kubectl_exec_on(mode: Mode, runtime: NodeRuntime) {
    let cluster = Cluster::on(mode, runtime).await;
    let host = &cluster.host;
    let (_uid, sandbox, netns) = cluster.pod("web", false).await;
    let _agent = cluster.start_agent();

    cluster.select("web", Some(&mode.asks_for_data()));
    let address = cluster.plugged(&netns).await;
    assert!(host.in_quarter(&address, 1), "data's address {address}");
    let inside = cluster.exec_ip_addr("web");
    assert!(
        inside.contains(&ifname(NETWORK)) && inside.contains(&format!("inet {address}/")),
        "kubectl exec shows {} with {address}:\n{inside}",
        ifname(NETWORK)
    );
    assert_eq!(cluster.lease_holders(), std::slice::from_ref(&sandbox));

    cluster.select("web", None);
    host.eventually("data's interface gone", || {
        (!has_link(&netns, &ifname(NETWORK))).then_some(())
    })
    .await;
    assert!(!cluster.exec_ip_addr("web").contains(&ifname(NETWORK)));
    assert_eq!(
        cluster.lease_holders(),
        Vec::<String>::new(),
        "lease released"
    );
    let pod = cluster.pod_object("web");
    let uid = pod["metadata"]["uid"].as_str().expect("a uid");
    assert_eq!(host.ready_sandbox(uid).await, sandbox, "the same sandbox");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"], 0,
        "no restart"
    );
    assert_eq!(host.count("ADD", "web"), 1);
    assert_eq!(host.count("DEL", "web"), 1);
}

async fn a_dead_sandbox_is_recreated_replugged_and_its_lease_released(mode: Mode) {
    let cluster = Cluster::new(mode).await;
    let host = &cluster.host;
    let (uid, old_sandbox, old_netns) = cluster.pod("web", true).await;
    let _agent = cluster.start_agent();
    cluster.plugged(&old_netns).await;
    assert_eq!(cluster.lease_holders(), std::slice::from_ref(&old_sandbox));

    let pause = pid_running(&old_netns, PAUSE_COMMAND);
    kill(Pid::from_raw(pause), Signal::SIGKILL).expect("killing the pause process");
    let new_sandbox = host
        .eventually_async("the kubelet's new sandbox", WAIT, || async {
            let id = host.cri().ready_sandbox(&uid).await?;
            (id != old_sandbox).then_some(id)
        })
        .await;
    let new_netns = host.netns(&new_sandbox).await;
    assert_ne!(new_netns, old_netns);
    cluster.plugged(&new_netns).await;
    host.eventually("only the new sandbox holds a lease", || {
        (cluster.lease_holders() == [new_sandbox.clone()]).then_some(())
    })
    .await;
    let ours = [
        old_netns.display().to_string(),
        new_netns.display().to_string(),
    ];
    for (command, pod, _, netns) in host.call_netns() {
        if pod == "web" && netns != "-" {
            assert!(
                ours.contains(&netns),
                "{command} for web was sent to {netns}, not one of the pod's ({ours:?})"
            );
        }
    }
    assert_eq!(host.count("ADD", "web"), 2, "one ADD per sandbox");
}

async fn a_container_restart_changes_nothing(mode: Mode) {
    let cluster = Cluster::new(mode).await;
    let host = &cluster.host;
    let (uid, sandbox, netns) = cluster.pod("web", true).await;
    let agent = cluster.start_agent();
    cluster.plugged(&netns).await;
    let calls = host.calls().len();
    let reconciled = host
        .eventually("podagent's metrics", || settled(&agent))
        .await;

    let main = pid_running(&netns, &POD_COMMAND.join(" "));
    kill(Pid::from_raw(main), Signal::SIGKILL).expect("killing the container");
    host.eventually("the container restarted", || {
        let status = &cluster.pod_object("web")["status"]["containerStatuses"][0];
        (status["restartCount"] == 1 && status["ready"] == true).then_some(())
    })
    .await;
    // The container ids are part of what podagent watches: a reconcile follows, and does
    // nothing.
    host.eventually("podagent reconciled the restart", || {
        (settled(&agent)? > reconciled).then_some(())
    })
    .await;
    assert_eq!(host.ready_sandbox(&uid).await, sandbox, "the same sandbox");
    assert_eq!(host.calls().len(), calls, "no CNI call: {:?}", host.calls());
    assert!(has_link(&netns, &ifname(NETWORK)));
}

async fn a_graceful_delete_releases_everything_and_reports_nothing_after(mode: Mode) {
    let cluster = Cluster::new(mode).await;
    let host = &cluster.host;
    let (uid, _sandbox, netns) = cluster.pod("web", true).await;
    let _agent = cluster.start_agent();
    cluster.plugged(&netns).await;

    host.cluster()
        .admin()
        .delete("v1", "Pod", Some(&host.ns("default")), "web", None)
        .expect("deleting pod web");
    host.eventually("the kubelet's final delete", || {
        host.get_pod("default", "web").is_none().then_some(())
    })
    .await;
    let events = host.all_events("default");
    host.eventually("the lease released and the record gone", || {
        (cluster.lease_holders().is_empty() && host.record(&uid).is_none()).then_some(())
    })
    .await;
    let regarding = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["regarding"]["uid"] == uid)
            .cloned()
            .collect()
    };
    assert_eq!(
        regarding(&host.all_events("default")),
        regarding(&events),
        "no Event about the pod once it is gone"
    );
    assert!(
        !host.log().contains(" ERROR "),
        "podagent logged an error:\n{}",
        host.log()
    );
    // The kubelet's own teardown (its CNI DEL of the primary network, the sandbox's removal)
    // went through beside podagent's. (Its log has harmless errors of other kinds: a status
    // read of the pod just deleted, a container already gone.)
    let kubelet_log = host.kubelet().kubelet_log();
    for failure in [
        "StopPodSandbox from runtime service failed",
        "KillPodSandbox",
    ] {
        assert!(
            !kubelet_log.contains(failure),
            "the kubelet's teardown failed ({failure}):\n{}",
            host.kubelet().kubelet_log_tail()
        );
    }
}

async fn kubelet_and_podagent_restarts_converge_without_a_cni_call(mode: Mode) {
    let mut cluster = Cluster::new(mode).await;
    let (uid, sandbox, netns) = cluster.pod("web", true).await;
    let (_, _, busy) = cluster.pod("busy", false).await;
    let agent = cluster.start_agent();
    cluster.plugged(&netns).await;
    let calls = cluster.host.calls().len();

    // The kubelet restarted while podagent works (on busy's new selection), then podagent
    // restarted while the kubelet works (on a pod it is starting).
    cluster.select("busy", Some(&mode.asks_for_data()));
    cluster.host.kubelet_mut().restart_kubelet().await;
    let namespace = cluster.host.ns("default");
    let starting =
        cluster
            .host
            .kubelet()
            .pod_manifest(&namespace, "starting", &POD_COMMAND, mode.with_data());
    cluster
        .host
        .cluster()
        .admin()
        .create(starting)
        .expect("creating pod starting");
    agent.stop();
    let _agent = cluster.start_agent();
    let host = &cluster.host;
    cluster.plugged(&busy).await;
    host.kubelet().wait_running(&namespace, "starting").await;
    let starting = cluster.pod_object("starting");
    let uid_of_starting = starting["metadata"]["uid"].as_str().expect("a uid");
    let starting = host.netns(&host.ready_sandbox(uid_of_starting).await).await;
    cluster.plugged(&starting).await;
    assert_eq!(host.ready_sandbox(&uid).await, sandbox, "the same sandbox");
    assert_eq!(
        host.calls_for("web", calls),
        Vec::new(),
        "no CNI call for what is in place"
    );
    assert!(has_link(&netns, &ifname(NETWORK)));
}

async fn the_kubelets_status_and_podagents_annotation_never_clobber(mode: Mode) {
    let cluster = Cluster::new(mode).await;
    let host = &cluster.host;
    let _agent = cluster.start_agent();
    let names: Vec<String> = (0..20).map(|n| format!("burst-{n}")).collect();
    let kubelet = host.kubelet();
    let namespace = host.ns("default");
    for name in &names {
        host.cluster()
            .admin()
            .create(kubelet.pod_manifest(&namespace, name, &POD_COMMAND, mode.with_data()))
            .unwrap_or_else(|err| panic!("creating {name}: {err:#}"));
    }
    for name in &names {
        kubelet.wait_running(&namespace, name).await;
    }
    for name in &names {
        let pod = host
            .eventually(&format!("{name}'s status annotation"), || {
                let pod = host.get_pod("default", name)?;
                let text = pod["metadata"]["annotations"][mode.status_annotation()].as_str()?;
                text.contains(&ifname(NETWORK)).then_some(pod)
            })
            .await;
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{name} is Ready: {}", pod["status"]);
        assert!(
            pod["status"]["podIP"]
                .as_str()
                .is_some_and(|ip| ip.starts_with(&kubelet.cri().address_prefix())),
            "{name} keeps the kubelet's pod IP: {}",
            pod["status"]
        );
        assert_eq!(
            pod["metadata"]["annotations"][mode.annotation()],
            mode.asks_for_data(),
            "{name}'s own selection is untouched"
        );
    }
    assert_eq!(cluster.lease_holders().len(), names.len());
}

async fn a_rollout_plugs_every_new_pod_and_releases_every_old_lease(mode: Mode) {
    let cluster = Cluster::new(mode).await;
    let host = &cluster.host;
    let _agent = cluster.start_agent();
    let namespace = host.ns("default");
    let labels = json!({"app": "web"});
    host.cluster()
        .admin()
        .create(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"namespace": namespace, "name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels, "annotations": mode.with_data()},
                    "spec": host.kubelet().pod_spec(&POD_COMMAND),
                },
            },
        }))
        .expect("creating deployment web");
    cluster.kubectl(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    let first = plugged_replicas(&cluster).await;
    cluster.kubectl(&["rollout", "restart", "deployment/web"]);
    cluster.kubectl(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    let second = plugged_replicas(&cluster).await;
    assert!(
        first.iter().all(|pod| !second.contains(pod)),
        "the rollout replaced every pod: {first:?} then {second:?}"
    );
}

/// Waits until the Deployment `web` has exactly its pods (none terminating), each plugged, and
/// the `data` leases are held by exactly their sandboxes; the pods' names.
async fn plugged_replicas(cluster: &Cluster) -> Vec<String> {
    let host = &cluster.host;
    let namespace = host.ns("default");
    let pods = host
        .eventually("web's pods, the old ones gone", || {
            let pods: Vec<Value> = host
                .cluster()
                .admin()
                .list("v1", "Pod", Some(&namespace))
                .into_iter()
                .filter(|pod| pod["metadata"]["labels"]["app"] == "web")
                .collect();
            let settled = pods.len() == 2
                && pods.iter().all(|pod| {
                    pod["metadata"]["deletionTimestamp"].is_null()
                        && pod["status"]["phase"] == "Running"
                });
            settled.then_some(pods)
        })
        .await;
    let mut sandboxes = Vec::new();
    for pod in &pods {
        let uid = pod["metadata"]["uid"].as_str().expect("a uid");
        let sandbox = host.ready_sandbox(uid).await;
        cluster.plugged(&host.netns(&sandbox).await).await;
        sandboxes.push(sandbox);
    }
    sandboxes.sort();
    host.eventually("the leases are held by the current pods alone", || {
        (cluster.lease_holders() == sandboxes).then_some(())
    })
    .await;
    pods.iter()
        .map(|pod| {
            pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// Every scenario in both modes, as `direct::…` and `npwg::…`.
macro_rules! in_both_modes {
    ($($scenario:ident),* $(,)?) => {
        mod direct {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Mode::Direct).await;
                }
            )*
        }
        mod npwg {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Mode::Npwg).await;
                }
            )*
        }
    };
}

in_both_modes!(
    hot_plug_and_unplug_seen_by_kubectl_exec,
    a_dead_sandbox_is_recreated_replugged_and_its_lease_released,
    a_container_restart_changes_nothing,
    a_graceful_delete_releases_everything_and_reports_nothing_after,
    kubelet_and_podagent_restarts_converge_without_a_cni_call,
    the_kubelets_status_and_podagents_annotation_never_clobber,
    a_rollout_plugs_every_new_pod_and_releases_every_old_lease,
);
