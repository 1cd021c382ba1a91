//! The DaemonSet, scheduled and run by the cluster: the image of `scripts/build-image.sh` is one
//! of the kubelet node's local images, an operator applies
//! `manifests/podagent-serviceaccount-and-rbac.yaml` and `manifests/podagent-<runtime>.yaml`,
//! the DaemonSet controller makes the pod, the scheduler binds it, the kubelet runs it with the
//! manifest's mounts, host network and PID namespace, service-account token and probes. From
//! there podagent hot-plugs into a pod the kubelet runs (the node's Debian plugins, run in the
//! node's root at /host), a `rollout restart` keeps the interface and makes no CNI call, and
//! deleting the DaemonSet stops podagent cleanly.
//!
//! Two settings are added to the manifest, with `kubectl set env --local`, as on any cluster
//! like this one: it has no Service proxy, so the in-cluster configuration's
//! `KUBERNETES_SERVICE_HOST`/`PORT` name the API server itself (what clusters without kube-proxy
//! set), and the node's primary CNI is not kactus, so podagent runs in direct mode.
//!
//! The CRI-O manifest is not run this way: the kubelet runs pods on CRI-O here (tests/kubelet.rs),
//! but not a privileged container. CRI-O grants such a container every capability the kernel
//! knows, and this machine's bounding set lacks CAP_SYS_RESOURCE (runc: "unable to apply caps:
//! operation not permitted"); a node-critical pod's oom_score_adj of -997 fails for the same
//! reason (containerd clamps it with `restrict_oom_score_adj`; CRI-O has no such setting).
//! tests/packaging.rs runs the CRI-O manifest's container beside a real CRI-O instead.
//!
//! In a binary of its own: the DaemonSet is `kube-system/podagent` on every node of the cluster,
//! and its listener the host network's port 9754.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use testkit::control_plane::{self, Shared};
use testkit::kubelet::NodeRuntime;
use testkit::netns::{HostLinks, unique_name};
use testkit::node::{Node, http_get, ipv4, links, sample};

const PODAGENT: &str = env!("CARGO_BIN_EXE_podagent");
/// Where every manifest's probes (and metrics) are: `metrics.listen`'s default, host network.
const LISTENER: &str = "127.0.0.1:9754";

/// Waits for the DaemonSet's rollout; when it does not finish, says why (its pods' state and
/// Events).
const ROLLOUT: &str = "{ kubectl -n kube-system rollout status daemonset/podagent --timeout=120s \
    || { kubectl -n kube-system describe pods -l app.kubernetes.io/name=podagent >&2; exit 1; }; }";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `sh -c script` with the admin's kubectl first on PATH; its stdout, or a panic with stderr.
fn shell(cluster: &Shared, script: &str) -> String {
    let path = format!(
        "{}:{}",
        control_plane::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = cluster
        .as_admin(Command::new("sh").args(["-c", script]))
        .current_dir(repo())
        .env("PATH", path)
        .output()
        .expect("running sh");
    assert!(
        out.status.success(),
        "`{script}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DaemonSet's pods, as the API has them.
fn podagent_pods(cluster: &Shared) -> Vec<Value> {
    cluster
        .admin()
        .list("v1", "Pod", Some("kube-system"))
        .into_iter()
        .filter(|pod| pod["metadata"]["labels"]["app.kubernetes.io/name"] == "podagent")
        .collect()
}

/// A pod the kubelet runs, asking for `green`: (uid, netns).
async fn green_pod(host: &Node, name: &str) -> (String, PathBuf) {
    let networks = json!({"networks": r#"[{"name":"green"}]"#});
    let (uid, sandbox) = host.kubelet_pod("default", name, networks).await;
    (uid, host.netns(&sandbox).await)
}

/// The CNI plugin runs the running podagent made, from its own metrics.
fn plugin_runs() -> Option<f64> {
    let metrics = http_get(LISTENER, "/metrics")
        .filter(|a| a.status == 200)?
        .body;
    let mut runs = 0.0;
    for command in ["ADD", "DEL"] {
        for outcome in ["success", "error"] {
            runs += sample(
                &metrics,
                "podagent_cni_plugin_duration_seconds_count",
                &[("command", command), ("outcome", outcome)],
            )
            .unwrap_or(0.0);
        }
    }
    Some(runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_containerd_daemonset_is_scheduled_run_restarted_and_deleted_by_the_cluster() {
    let host = Node::with_kubelet_on(PODAGENT, NodeRuntime::Containerd).await;
    let cluster = host.cluster();
    let kubelet = host.kubelet();
    let (_, tar) = testkit::binaries::podagent_image(&host.path("podagent-image.tar"));
    let manifest = "manifests/podagent-containerd.yaml";
    let image = shell(
        cluster,
        &format!(
            "kubectl create --dry-run=client -o jsonpath='{{.spec.template.spec.containers[0].image}}' -f {manifest}"
        ),
    );
    kubelet.import_image(&format!("docker.io/{image}"), &tar);

    // The `green` Network runs the node's Debian bridge as distributions ship it, with
    // host-local's leases in the node's /var/lib/cni.
    cluster.install_network_crd();
    let bridge = unique_name("dsk");
    let _links = HostLinks(vec![bridge.clone()]);
    let config = json!({"cniVersion": "1.0.0", "name": "green", "type": "bridge",
        "bridge": bridge, "isGateway": false, "ipMasq": false,
        "ipam": {"type": "host-local", "subnet": host.quarter(1)}});
    host.put_network(
        "default",
        "green",
        json!({"plugin": "bridge", "config": config.to_string()}),
    );

    let (api_host, api_port) = cluster
        .server()
        .trim_start_matches("https://")
        .rsplit_once(':')
        .expect("host:port");
    shell(
        cluster,
        &format!(
            "kubectl apply -f manifests/podagent-serviceaccount-and-rbac.yaml && \
             kubectl set env --local -o yaml -f {manifest} KUBERNETES_SERVICE_HOST={api_host} \
             KUBERNETES_SERVICE_PORT={api_port} PODAGENT_NETWORKS__MODE=direct \
             | kubectl apply -f - && \
             {ROLLOUT}"
        ),
    );
    let daemonset = cluster
        .admin()
        .get("apps/v1", "DaemonSet", Some("kube-system"), "podagent")
        .expect("the DaemonSet");
    assert_eq!(
        daemonset["status"]["numberReady"], 1,
        "{}",
        daemonset["status"]
    );
    let pods = podagent_pods(cluster);
    assert_eq!(pods.len(), 1, "one podagent pod: {pods:#?}");
    let first = pods[0]["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_owned();
    assert_eq!(
        pods[0]["spec"]["nodeName"],
        host.name(),
        "bound to the node"
    );
    let logs = shell(cluster, &format!("kubectl -n kube-system logs {first}"));
    assert!(
        logs.contains("credentials=in-cluster service account"),
        "podagent in the pod uses the pod's service-account token:\n{logs}"
    );

    // A hot-plug from inside the pod into one the kubelet runs.
    let green = podagent::annotation::ifname("green");
    let (uid, netns) = green_pod(&host, "web").await;
    let address = host
        .eventually("green plugged by the DaemonSet's podagent", || {
            ipv4(&netns, &green)
        })
        .await;
    assert!(host.in_quarter(&address, 1), "{address}");
    let lease = kubelet.node_path(&format!("/var/lib/cni/networks/green/{address}"));
    assert!(
        lease.is_file(),
        "host-local's lease is in the node's /var/lib/cni ({}): the plugin ran in the node's root",
        lease.display()
    );
    let record = kubelet.node_path(&format!("/var/lib/podagent/{uid}.json"));
    assert!(
        record.is_file(),
        "the record is on the node: {}",
        record.display()
    );
    let ifindex = |netns: &Path| {
        links(netns)
            .into_iter()
            .find(|link| link["ifname"] == green.as_str())
            .map(|link| link["ifindex"].clone())
    };
    let plugged = ifindex(&netns).expect("green's link");

    // A rolling restart: the new pod takes over what is there without a CNI call.
    shell(
        cluster,
        &format!("kubectl -n kube-system rollout restart daemonset/podagent && {ROLLOUT}"),
    );
    let second = host
        .eventually("the old podagent pod gone", || {
            let pods = podagent_pods(cluster);
            let [pod] = pods.as_slice() else { return None };
            let name = pod["metadata"]["name"].as_str()?;
            (name != first).then(|| name.to_owned())
        })
        .await;
    host.eventually("the new podagent ready", || {
        http_get(LISTENER, "/readyz").filter(|a| a.status == 200)
    })
    .await;
    // Ready means its first sync is done; a pod created now is plugged after everything it had.
    let (_, marker_netns) = green_pod(&host, "marker").await;
    host.eventually("the marker plugged", || ipv4(&marker_netns, &green))
        .await;
    // The plugin's metric is written once its run has ended, a moment after the link is made.
    let runs = host
        .eventually("the marker's ADD counted", || {
            plugin_runs().filter(|runs| *runs >= 1.0)
        })
        .await;
    assert_eq!(
        runs, 1.0,
        "the new podagent ran the plugin for the marker alone"
    );
    assert_eq!(
        ifindex(&netns),
        Some(plugged.clone()),
        "web's interface is the same link"
    );
    assert!(lease.is_file(), "web's lease kept");

    // Deleting the DaemonSet: the kubelet's SIGTERM, and podagent says it stopped.
    let mut follow = cluster
        .kubectl()
        .args(["-n", "kube-system", "logs", "-f", &second])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    shell(
        cluster,
        "kubectl -n kube-system delete daemonset podagent --wait=true",
    );
    host.eventually("the podagent pod gone", || {
        podagent_pods(cluster).is_empty().then_some(())
    })
    .await;
    let mut logs = String::new();
    follow
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut logs)
        .expect("the followed log");
    let _ = follow.wait();
    assert!(
        logs.lines()
            .last()
            .is_some_and(|line| line.contains("stopped")),
        "podagent's last words are that it stopped:\n{logs}"
    );
    assert_eq!(
        ifindex(&netns),
        Some(plugged),
        "interfaces stay when podagent goes"
    );
}
