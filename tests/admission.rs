//! The admission policy (`manifests/podagent-admission-policy.yaml`) on the real kube-apiserver:
//! a podagent credential changes only its own node's pods, and only podagent's annotations.
//!
//! The policy is cluster-wide, so this file has a test binary, and a control plane, of its own;
//! its one test walks the operator's story in order: no policy (and `podagent check` says so),
//! the policy installed, each identity podagent can have, and podagent hot-plugging under it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use podagent::annotation::ifname;
use serde_json::json;
use testkit::control_plane::{self, Shared};
use testkit::node::Node;

const BINARY: &str = env!("CARGO_BIN_EXE_podagent");
const STATUS_KEY: &str = "podagent.kaloom.com/network-status";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `kubectl` with `kubeconfig`: what a stolen credential can do from any machine.
fn kubectl(cluster: &Shared, kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(control_plane::binary("kubectl"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECACHEDIR", cluster.kubectl_cache())
        .output()
        .expect("run kubectl")
}

/// The API server's answer to one request.
struct Answer {
    code: u16,
    /// The body: the pod, or a `Status` whose message says why not.
    body: String,
    /// `Warning:` response headers (what a Warn binding adds).
    warnings: String,
}

/// A merge patch of `pod`'s metadata, sent as a raw request with the server, CA and token of
/// `kubeconfig`: what anyone holding podagent's credential can send from any machine. (`kubectl
/// patch` would first GET the pod, which podagent's role does not allow.)
fn patch(kubeconfig: &Path, ns: &str, pod: &str, metadata: &str) -> Answer {
    testkit::prereq::require_command("curl", "curl");
    let config: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).expect("read kubeconfig"))
            .expect("kubeconfig is YAML");
    let cluster = &config["clusters"][0]["cluster"];
    let server = cluster["server"].as_str().expect("server");
    let token = config["users"][0]["user"]["token"].as_str().expect("token");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.crt");
    let decoded = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let data = cluster["certificate-authority-data"].as_str().expect("CA");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(data.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run base64");
    std::fs::write(&ca, decoded.stdout).expect("write CA");
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-sS", "-X", "PATCH", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(&ca)
        .arg("-D")
        .arg(&headers)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/merge-patch+json"])
        .args(["--data", &format!("{{\"metadata\":{metadata}}}")])
        .arg(format!("{server}/api/v1/namespaces/{ns}/pods/{pod}"))
        .output()
        .expect("run curl");
    let stdout = text(&out.stdout);
    let (body, code) = stdout
        .rsplit_once('\n')
        .expect("curl printed the status code");
    let warnings = std::fs::read_to_string(&headers)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("warning:"))
        .collect::<Vec<_>>()
        .join("\n");
    Answer {
        code: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
        warnings,
    }
}

fn status_patch(value: &str) -> String {
    format!("{{\"annotations\":{{\"{STATUS_KEY}\":\"{value}\"}}}}")
}

#[track_caller]
fn assert_allowed(answer: &Answer, what: &str) {
    assert_eq!(answer.code, 200, "{what}: {}", answer.body);
}

#[track_caller]
fn assert_denied(answer: &Answer, what: &str, message: &str) {
    assert_eq!(answer.code, 403, "{what}: {}", answer.body);
    assert!(
        answer
            .body
            .contains("ValidatingAdmissionPolicy 'podagent-node-bound'"),
        "{what}: not the policy's 403: {}",
        answer.body
    );
    assert!(answer.body.contains(message), "{what}: {}", answer.body);
}

/// The lines of `podagent check` about the identity and the policy, for `node` with
/// `kubeconfig` (the other lines need a runtime and CNI config, which are not the point here).
fn check_lines(kubeconfig: &Path, node: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("podagent.toml");
    std::fs::write(
        &config,
        format!(
            "node_name = \"{node}\"\nstate_dir = \"{}\"\n[kube]\nkubeconfig = \"{}\"\n",
            dir.path().join("state").display(),
            kubeconfig.display()
        ),
    )
    .expect("write config");
    let out = Command::new(BINARY)
        .args(["check", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run podagent check");
    text(&out.stdout)
        .lines()
        .filter(|l| {
            l.contains(" identity speaks for this node:")
                || l.contains(" admission policy enforced:")
        })
        .map(str::to_string)
        .collect()
}

/// A kubeconfig like `template` with `token` instead of its own.
fn with_token(template: &Path, token: &str, out: &Path) -> PathBuf {
    let original = std::fs::read_to_string(template).expect("read kubeconfig");
    let own = original
        .lines()
        .find_map(|line| line.trim().strip_prefix("token: "))
        .expect("a token kubeconfig");
    std::fs::write(out, original.replace(own, &format!("\"{token}\""))).expect("write kubeconfig");
    out.to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_podagent_credential_changes_only_its_nodes_pods_and_only_podagents_annotations() {
    let cluster = control_plane::shared();
    let admin = cluster.admin();
    let node_a = cluster.unique_name("node-a");
    let node_b = cluster.unique_name("node-b");
    let ns = cluster.create_namespace("tenant");
    for (pod, node) in [("on-a", &node_a), ("on-b", &node_b)] {
        admin
            .create(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns, "labels": {"app": "web"},
                             "annotations": {"networks": "[{\"name\":\"green\"}]"}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}
            }))
            .expect("create pod");
    }
    let own = cluster.node_kubeconfig(&node_a);

    // Before the policy: RBAC alone lets node A's credential patch node B's pod, and `podagent
    // check` says the policy is missing.
    assert_allowed(
        &patch(&own, &ns, "on-b", &status_patch("[]")),
        "node A's credential on node B's pod, without the policy",
    );
    assert_eq!(
        check_lines(&own, &node_a),
        [
            format!(
                "✓ identity speaks for this node: system:serviceaccount:kube-system:podagent-node-{node_a} speaks for node {node_a}"
            ),
            "✗ admission policy enforced: ValidatingAdmissionPolicy podagent-node-bound is not \
             installed, so podagent's credential can change any pod: kubectl apply -f \
             /opt/kaloom/share/podagent/manifests/podagent-admission-policy.yaml (Kubernetes \
             1.30 or later)"
                .to_string(),
        ]
    );

    // With the policy (the API server loads it within a second or two).
    cluster.install_admission_policy();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = patch(&own, &ns, "on-b", &status_patch("[]"));
        if answer.code != 200 {
            assert_denied(
                &answer,
                "node A's credential on node B's pod",
                &format!(
                    "podagent on node {node_a} may change only pods bound to that node; pod \
                     {ns}/on-b is on {node_b}"
                ),
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the policy never denied node A's credential on node B's pod"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_allowed(
        &patch(&own, &ns, "on-a", &status_patch("[{}]")),
        "node A's credential writing the status annotation of node A's pod",
    );
    assert_allowed(
        &patch(
            &own,
            &ns,
            "on-a",
            &format!("{{\"annotations\":{{\"{STATUS_KEY}\":null}}}}"),
        ),
        "node A's credential removing the status annotation of node A's pod",
    );
    let own_annotations_only = "podagent may change only its own annotations";
    assert_denied(
        &patch(&own, &ns, "on-a", r#"{"annotations":{"networks":"[]"}}"#),
        "node A's credential rewriting the user's networks annotation",
        own_annotations_only,
    );
    assert_denied(
        &patch(&own, &ns, "on-a", r#"{"annotations":{"networks":null}}"#),
        "node A's credential removing the user's networks annotation",
        own_annotations_only,
    );
    assert_denied(
        &patch(
            &own,
            &ns,
            "on-a",
            r#"{"annotations":{"other.example/key":"x"}}"#,
        ),
        "node A's credential adding another annotation",
        own_annotations_only,
    );
    assert_denied(
        &patch(&own, &ns, "on-a", r#"{"labels":{"app":"db"}}"#),
        "node A's credential changing a label",
        "podagent may not change a pod's spec, labels, finalizers or owners",
    );
    assert_denied(
        &patch(&own, &ns, "on-a", r#"{"finalizers":["example.com/hold"]}"#),
        "node A's credential adding a finalizer",
        "podagent may not change a pod's spec, labels, finalizers or owners",
    );
    assert_eq!(
        check_lines(&own, &node_a),
        [
            format!(
                "✓ identity speaks for this node: system:serviceaccount:kube-system:podagent-node-{node_a} speaks for node {node_a}"
            ),
            "✓ admission policy enforced: ValidatingAdmissionPolicy podagent-node-bound bound with Deny"
                .to_string(),
        ]
    );

    // The identity all nodes used to share: still allowed during the migration, with a
    // warning in the answer, and `podagent check` names it.
    let shared = cluster.podagent_kubeconfig();
    let answer = patch(shared, &ns, "on-b", &status_patch("[]"));
    assert_allowed(&answer, "the shared identity during the migration");
    assert!(
        answer
            .warnings
            .contains("the shared podagent identity speaks for no node"),
        "no migration warning: {:?}",
        answer.warnings
    );

    // The DaemonSet's identity: the shared account with a token bound to a pod on node A,
    // which the API server stamps with the pod's node.
    admin
        .create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_a}}))
        .expect("create node A");
    let agent_pod = cluster.unique_name("podagent");
    admin
        .create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": agent_pod, "namespace": "kube-system"},
            "spec": {"nodeName": node_a, "serviceAccountName": "podagent",
                     "containers": [{"name": "podagent", "image": "podagent"}]}
        }))
        .expect("create podagent's pod on node A");
    let token = kubectl(
        cluster,
        cluster.kubeconfig(),
        &[
            "create",
            "token",
            "podagent",
            "-n",
            "kube-system",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            &agent_pod,
        ],
    );
    assert!(
        token.status.success(),
        "TokenRequest bound to podagent's pod: {}",
        text(&token.stderr)
    );
    let scratch = tempfile::tempdir().expect("temp dir");
    let pod_bound = with_token(
        shared,
        text(&token.stdout).trim(),
        &scratch.path().join("pod-bound.yaml"),
    );
    assert_allowed(
        &patch(&pod_bound, &ns, "on-a", &status_patch("[]")),
        "a pod-bound token on its node's pod",
    );
    assert_denied(
        &patch(&pod_bound, &ns, "on-b", &status_patch("[]")),
        "a pod-bound token on another node's pod",
        &format!("podagent on node {node_a} may change only pods bound to that node"),
    );
    assert_eq!(
        check_lines(&pod_bound, &node_a)[0],
        format!(
            "✓ identity speaks for this node: system:serviceaccount:kube-system:podagent speaks for node {node_a}"
        )
    );

    // podagent itself, on its node's own identity, hot-plugs under the policy as before.
    let node = Node::with_containerd(BINARY).await;
    let (_, sandbox) = node
        .pod("default", "web", Some(r#"[{"name":"green"}]"#))
        .await;
    let netns = node.netns(&sandbox).await;
    let mut config = node.agent_config();
    config.kubeconfig = cluster.node_kubeconfig(node.name());
    let _agent = node.start_agent_with(&config);
    let green = ifname("green");
    node.eventually("green attached and reported", || {
        let reported = node
            .status("default", "web")
            .is_some_and(|status| status.to_string().contains("green"));
        (testkit::node::has_link(&netns, &green) && reported).then_some(())
    })
    .await;
    let log = node.log();
    assert!(
        !log.contains("Forbidden"),
        "podagent was denied something:\n{log}"
    );
}
