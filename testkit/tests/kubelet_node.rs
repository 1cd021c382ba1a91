//! A kubelet node works and leaves the host as it found it: the scheduler places a pod on it,
//! the kubelet runs it with its primary CNI, `kubectl exec` reaches it through the API server,
//! and the host's sysctls, iptables rules and mount table are the same while the node runs
//! (but for its pods' pinned network namespaces) and after it is dropped as before.
//!
//! The one test of its binary: nothing else may change the host's mounts while it compares them
//! (cargo runs test binaries one after the other).

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::json;
use testkit::control_plane::shared;
use testkit::kubelet::{self, KubeletNode};

/// The sysctls a kubelet would change (it sets them when they differ from what it wants), and
/// IP forwarding, which a careless container network turns on.
const SYSCTLS: [&str; 7] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
];

/// What of the host a kubelet node could change.
#[derive(Debug, PartialEq)]
struct HostState {
    sysctls: Vec<(String, String)>,
    rules: String,
    mounts: BTreeSet<String>,
}

impl HostState {
    fn read() -> HostState {
        HostState {
            sysctls: SYSCTLS
                .iter()
                .map(|key| {
                    let value = std::fs::read_to_string(format!("/proc/sys/{key}"))
                        .unwrap_or_else(|err| panic!("reading /proc/sys/{key}: {err}"));
                    (key.to_string(), value.trim().to_string())
                })
                .collect(),
            rules: ["iptables-save", "ip6tables-save"].map(rules).join("\n"),
            mounts: mounts(),
        }
    }
}

/// The rules of every table, without the comments (they carry the time) and packet counters.
fn rules(program: &str) -> String {
    let out = Command::new(program)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    assert!(out.status.success(), "{program} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| match line.split_once(" [") {
            Some((chain, _counters)) if line.starts_with(':') => chain.to_string(),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The host's mounts: point, root, file system, source, options and propagation of each, not
/// the ids the kernel numbers them with.
fn mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("reading /proc/self/mountinfo")
        .lines()
        .map(|line| line.split(' ').skip(3).collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_node_runs_pods_and_leaves_the_host_as_it_found_it() {
    let cluster = shared();
    let admin = cluster.admin();
    kubelet::prepare_host();
    let before = HostState::read();

    let node = KubeletNode::start(
        &cluster.unique_name("kubelet"),
        cluster.server(),
        cluster.dir(),
    )
    .await;
    let namespace = cluster.create_namespace("kubelet");
    admin
        .create(node.pod_manifest(&namespace, "web", &kubelet::POD_COMMAND, json!({})))
        .expect("creating pod web");
    let pod = node.wait_running(&namespace, "web").await;
    assert_eq!(
        pod["spec"]["nodeName"],
        node.name(),
        "scheduled onto the node"
    );
    let ip = pod["status"]["podIP"].as_str().expect("a pod IP");
    assert!(
        ip.starts_with(&node.cri().address_prefix()) && ip != node.ip(),
        "pod IP {ip} comes from the node's primary network, not the node's own {}",
        node.ip()
    );

    let exec = cluster
        .kubectl()
        .args([
            "exec", "-n", &namespace, "web", "--", "ip", "-o", "addr", "show", "eth0",
        ])
        .output()
        .expect("running kubectl exec");
    assert!(
        exec.status.success(),
        "kubectl exec failed: {}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert!(
        String::from_utf8_lossy(&exec.stdout).contains(&format!("inet {ip}/24")),
        "kubectl exec shows eth0 with {ip}: {}",
        String::from_utf8_lossy(&exec.stdout)
    );

    let running = HostState::read();
    assert_eq!(
        running.sysctls, before.sysctls,
        "sysctls while the kubelet runs"
    );
    assert_eq!(
        running.rules, before.rules,
        "iptables while the kubelet runs"
    );
    let added: Vec<&String> = running.mounts.difference(&before.mounts).collect();
    assert!(
        added.iter().all(|m| m
            .split(' ')
            .nth(1)
            .is_some_and(|p| p.starts_with("/run/netns/cni-"))),
        "the only host mounts a running node adds are its pods' netns: {added:#?}"
    );
    assert!(
        !added.is_empty(),
        "the pod's netns is pinned where the host sees it"
    );

    let node_name = node.name().to_string();
    drop(node);
    assert!(
        admin.get("v1", "Node", None, &node_name).is_none(),
        "the Node object is deleted with the node"
    );
    let after = HostState::read();
    assert_eq!(after.sysctls, before.sysctls, "sysctls after the node");
    assert_eq!(after.rules, before.rules, "iptables after the node");
    assert_eq!(
        (
            after.mounts.difference(&before.mounts).collect::<Vec<_>>(),
            before.mounts.difference(&after.mounts).collect::<Vec<_>>()
        ),
        (Vec::new(), Vec::new()),
        "mounts added and removed after the node (another test binary running beside this one \
         changes them too)"
    );
}
