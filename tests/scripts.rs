//! The operator scripts and the manifests, run with `kubectl` (at the server's version) and
//! `jq` against the real control plane; the scripts reach it through `KUBECONFIG`, as they
//! would a cluster. Each test works in a namespace of its own, the current namespace of its
//! kubeconfig.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::{Value, json};
use testkit::control_plane::{self, Shared};
use testkit::prereq;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One test's view of the shared control plane: its own namespace, an admin kubeconfig whose
/// current namespace it is, and `kubectl` at the server's version first on PATH.
struct Cluster {
    shared: &'static Shared,
    ns: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        prereq::require_command("jq", "jq");
        let shared = control_plane::shared();
        let ns = shared.create_namespace("scripts");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config: Value = serde_yaml::from_str(
            &fs::read_to_string(shared.kubeconfig()).expect("read the admin kubeconfig"),
        )
        .expect("kubeconfig is YAML");
        config["contexts"][0]["context"]["namespace"] = json!(ns);
        fs::write(
            dir.path().join("kubeconfig"),
            serde_yaml::to_string(&config).expect("yaml"),
        )
        .expect("write kubeconfig");
        Cluster { shared, ns, dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::iter::once(control_plane::bin_dir()).chain(std::env::split_paths(&path));
        command
            .env("KUBECONFIG", self.kubeconfig())
            .env("KUBECACHEDIR", self.shared.kubectl_cache())
            .env("PATH", std::env::join_paths(dirs).expect("PATH"));
        command
    }

    fn script(&self, name: &str, args: &[&str]) -> Output {
        let mut command = self.command(repo().join("scripts").join(name));
        command.args(args);
        command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        let mut command = self.command("kubectl");
        command.args(args);
        command.output().expect("run kubectl")
    }

    fn create_pod(&self, name: &str, networks: Option<&str>) {
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running"},
        });
        if let Some(networks) = networks {
            pod["metadata"]["annotations"] = json!({ "networks": networks });
        }
        self.shared.admin().create(pod).expect("create pod");
    }

    fn pod(&self, name: &str) -> Value {
        self.shared
            .admin()
            .get("v1", "Pod", Some(&self.ns), name)
            .unwrap_or_else(|| panic!("pod {name} exists"))
    }

    fn networks(&self, pod: &str) -> Option<String> {
        self.pod(pod)["metadata"]["annotations"]["networks"]
            .as_str()
            .map(str::to_owned)
    }
}

fn assert_ok(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

fn assert_fails_saying(output: &Output, what: &str, needle: &str) {
    assert!(!output.status.success(), "{what} succeeded but should fail");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(needle),
        "{what}: stderr lacks {needle:?}:\n{stderr}"
    );
}

fn parsed(annotation: Option<String>) -> Value {
    serde_json::from_str(&annotation.expect("networks annotation")).expect("annotation is JSON")
}

#[test]
fn adding_a_network_twice_lists_it_once() {
    let cluster = Cluster::start();
    cluster.create_pod("web", None);
    for _ in 0..2 {
        let out = cluster.script("add-network-annotation.sh", &["web", "data"]);
        assert_ok(&out, "add data");
    }
    assert_eq!(parsed(cluster.networks("web")), json!([{"name": "data"}]));
}

#[test]
fn adding_with_a_mac_keeps_other_entries_and_their_fields() {
    let cluster = Cluster::start();
    cluster.create_pod(
        "web",
        Some(r#"[{"name":"green","isPrimary":true,"upperLayers":["x"]}]"#),
    );
    let out = cluster.script(
        "add-network-annotation.sh",
        &["web", "data", &cluster.ns, "00:AA:BB:CC:DD:EE"],
    );
    assert_ok(&out, "add data with a MAC");
    assert_eq!(
        parsed(cluster.networks("web")),
        json!([
            {"name": "green", "isPrimary": true, "upperLayers": ["x"]},
            {"name": "data", "ifMac": "00:aa:bb:cc:dd:ee"}
        ])
    );
}

#[test]
fn a_multicast_mac_is_refused_before_the_pod_is_touched() {
    let cluster = Cluster::start();
    cluster.create_pod("web", None);
    let before = cluster.pod("web")["metadata"]["resourceVersion"].clone();
    let out = cluster.script(
        "add-network-annotation.sh",
        &["web", "data", &cluster.ns, "01:00:5e:00:00:01"],
    );
    assert_fails_saying(&out, "add with a multicast MAC", "multicast");
    assert_eq!(cluster.pod("web")["metadata"]["resourceVersion"], before);
}

#[test]
fn deleting_a_network_removes_only_that_entry() {
    let cluster = Cluster::start();
    cluster.create_pod("web", Some(r#"[{"name":"data"},{"name":"green"}]"#));
    let out = cluster.script("del-network-annotation.sh", &["web", "data", &cluster.ns]);
    assert_ok(&out, "del data");
    assert_eq!(parsed(cluster.networks("web")), json!([{"name": "green"}]));
    let out = cluster.script("del-network-annotation.sh", &["web", "green"]);
    assert_ok(&out, "del green");
    assert_eq!(parsed(cluster.networks("web")), json!([]));
}

#[test]
fn deleting_a_network_that_is_not_listed_fails_and_names_what_is() {
    let cluster = Cluster::start();
    let annotation = r#"[{"name":"green"}]"#;
    cluster.create_pod("web", Some(annotation));
    let out = cluster.script("del-network-annotation.sh", &["web", "data"]);
    assert_fails_saying(&out, "del of a missing network", "has no network data");
    assert!(text(&out.stderr).contains("it lists: green"));
    assert_eq!(cluster.networks("web").as_deref(), Some(annotation));
}

#[test]
fn a_malformed_annotation_is_reported_and_left_unchanged() {
    let cluster = Cluster::start();
    for (pod, bad) in [
        ("notjson", "{not json"),
        ("notlist", r#"{"name":"data"}"#),
        ("noname", r#"[{"ifMac":"00:11:22:33:44:55"}]"#),
    ] {
        cluster.create_pod(pod, Some(bad));
        for (script, args) in [
            ("add-network-annotation.sh", [pod, "data"]),
            ("del-network-annotation.sh", [pod, "data"]),
        ] {
            let out = cluster.script(script, &args);
            assert_fails_saying(&out, &format!("{script} on {pod}"), "malformed");
            assert_eq!(
                cluster.networks(pod).as_deref(),
                Some(bad),
                "{script} on {pod}"
            );
        }
    }
}

#[test]
fn a_missing_pod_is_reported() {
    let cluster = Cluster::start();
    let out = cluster.script("add-network-annotation.sh", &["ghost", "data", &cluster.ns]);
    assert_fails_saying(
        &out,
        "add to a missing pod",
        &format!("pod ghost not found in {}", cluster.ns),
    );
    let out = cluster.script("del-network-annotation.sh", &["ghost", "data"]);
    assert_fails_saying(&out, "del from a missing pod", "pod ghost not found");
}

#[test]
fn create_kubeconfig_writes_a_private_token_kubeconfig_that_kubectl_can_use() {
    let cluster = Cluster::start();
    cluster.create_pod("web", None);
    let out_dir = tempfile::Builder::new()
        .prefix("podagent-kubeconfig-")
        .tempdir()
        .expect("temp dir");
    let out_path = out_dir.path().join("podagent-kubeconfig.yaml");

    let out = cluster.script(
        "create-kubeconfig.sh",
        &[out_dir.path().to_str().expect("utf-8 path")],
    );
    assert_ok(&out, "create-kubeconfig.sh");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "install -m 0600 -o root -g root {} /opt/kaloom/etc/podagent-kubeconfig.yaml",
            out_path.display()
        )),
        "the copy command is printed:\n{stdout}"
    );
    let mode = fs::metadata(&out_path)
        .expect("kubeconfig")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // The secret was created for the service account and filled by the token controller.
    let secret = cluster
        .shared
        .admin()
        .get("v1", "Secret", Some("kube-system"), "podagent-token")
        .expect("token secret");
    assert_eq!(secret["type"], "kubernetes.io/service-account-token");
    let kubeconfig: Value = serde_yaml::from_str(&fs::read_to_string(&out_path).expect("read"))
        .expect("kubeconfig is YAML");
    let user = &kubeconfig["users"][0]["user"];
    assert!(user["token"].as_str().is_some_and(|t| !t.is_empty()));
    let admin: Value =
        serde_yaml::from_str(&fs::read_to_string(cluster.kubeconfig()).expect("read"))
            .expect("kubeconfig is YAML");
    assert_ne!(
        user["token"], admin["users"][0]["user"]["token"],
        "the service account's token, not the admin's"
    );
    assert_eq!(
        kubeconfig["clusters"][0]["cluster"]["server"],
        cluster.shared.server()
    );
    assert_eq!(
        kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"],
        secret["data"]["ca.crt"]
    );

    // kubectl verifies the server with the embedded CA and authenticates with the token.
    let get = cluster
        .command("kubectl")
        .env("KUBECONFIG", &out_path)
        .args(["get", "pods", "--namespace", &cluster.ns, "-o", "name"])
        .output()
        .expect("run kubectl");
    assert_ok(&get, "kubectl get pods with the new kubeconfig");
    assert_eq!(text(&get.stdout).trim(), "pod/web");

    // A second run reuses the secret and the token.
    let again = cluster.script(
        "create-kubeconfig.sh",
        &[out_dir.path().to_str().expect("utf-8 path")],
    );
    assert_ok(&again, "create-kubeconfig.sh again");
    assert!(text(&again.stdout).contains("reusing secret kube-system/podagent-token"));
    let second: Value = serde_yaml::from_str(&fs::read_to_string(&out_path).expect("read"))
        .expect("kubeconfig is YAML");
    assert_eq!(
        second["users"][0]["user"]["token"],
        *user.get("token").expect("token")
    );
}

#[test]
fn create_kubeconfig_makes_one_identity_per_node() {
    let cluster = Cluster::start();
    let node = cluster.shared.unique_name("node-id");
    let out_dir = tempfile::tempdir().expect("temp dir");
    let dir = out_dir.path().to_str().expect("utf-8 path");
    let out = cluster.script("create-kubeconfig.sh", &["--node", &node, dir]);
    assert_ok(&out, "create-kubeconfig.sh --node");
    assert!(
        text(&out.stdout).contains(&format!("Install it on node {node}, and on no other node:")),
        "{}",
        text(&out.stdout)
    );
    let account = format!("podagent-node-{node}");
    let admin = cluster.shared.admin();
    assert!(
        admin
            .get("v1", "ServiceAccount", Some("kube-system"), &account)
            .is_some()
    );
    let binding = admin
        .get(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            None,
            &account,
        )
        .expect("the node's ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], "podagent");
    assert_eq!(binding["subjects"][0]["name"], account.as_str());
    let secret = admin
        .get(
            "v1",
            "Secret",
            Some("kube-system"),
            &format!("{account}-token"),
        )
        .expect("the node's token secret");
    assert_eq!(
        secret["metadata"]["annotations"]["kubernetes.io/service-account.name"],
        account.as_str()
    );

    // The kubeconfig authenticates as the node's own account, with podagent's ClusterRole.
    let whoami = cluster
        .command("kubectl")
        .env(
            "KUBECONFIG",
            out_dir.path().join("podagent-kubeconfig.yaml"),
        )
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .output()
        .expect("run kubectl");
    assert_ok(&whoami, "kubectl auth whoami with the node's kubeconfig");
    assert_eq!(
        text(&whoami.stdout),
        format!("system:serviceaccount:kube-system:{account}")
    );
    let can = cluster.kubectl(&[
        "auth",
        "can-i",
        "patch",
        "pods",
        "--all-namespaces",
        "--as",
        &format!("system:serviceaccount:kube-system:{account}"),
    ]);
    assert_eq!(text(&can.stdout).trim(), "yes", "{}", text(&can.stderr));

    // Again: the same account and secret, reused.
    let again = cluster.script("create-kubeconfig.sh", &[&format!("--node={node}"), dir]);
    assert_ok(&again, "create-kubeconfig.sh --node again");
    assert!(
        text(&again.stdout).contains(&format!("reusing secret kube-system/{account}-token")),
        "{}",
        text(&again.stdout)
    );

    // Not a node name: refused before anything is created.
    let bad = cluster.script("create-kubeconfig.sh", &["--node", "Bad_Node", dir]);
    assert_eq!(bad.status.code(), Some(64), "{bad:?}");
    assert!(text(&bad.stderr).contains("--node Bad_Node is not a node name"));
    assert!(
        admin
            .get(
                "v1",
                "ServiceAccount",
                Some("kube-system"),
                "podagent-node-Bad_Node"
            )
            .is_none()
    );
}

#[test]
fn every_script_and_scriptlet_is_shellcheck_clean() {
    prereq::require_command("shellcheck", "shellcheck");
    // Every script of the repository: the operator's and the test host's.
    let scripts: Vec<PathBuf> = fs::read_dir(repo().join("scripts"))
        .expect("scripts dir")
        .map(|entry| entry.expect("scripts entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sh"))
        .collect();
    assert!(scripts.len() >= 10, "{scripts:?}");
    let out = Command::new("shellcheck")
        .current_dir(repo())
        .arg("-x")
        .args(&scripts)
        .output()
        .expect("run shellcheck");
    assert_ok(&out, "shellcheck of the scripts");
    let out = Command::new("shellcheck")
        .current_dir(repo())
        .args(["-s", "sh"])
        .args([
            "packaging/rpm/post-install.sh",
            "packaging/rpm/pre-uninstall.sh",
            "packaging/rpm/post-uninstall.sh",
        ])
        .output()
        .expect("run shellcheck");
    assert_ok(&out, "shellcheck of the RPM scriptlets");
}

// ---- manifests ---------------------------------------------------------------------------

fn manifest_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(repo().join("manifests"))
        .expect("manifests dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.push(repo().join("examples/data-net.yaml"));
    paths.sort();
    paths
}

fn documents(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let yaml = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::to_value(yaml).expect("YAML as JSON")
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

const DAEMONSETS: [(&str, &str, &str); 3] = [
    (
        "podagent-docker.yaml",
        "docker",
        "unix:///var/run/docker.sock",
    ),
    (
        "podagent-crio.yaml",
        "crio",
        "unix:///var/run/crio/crio.sock",
    ),
    (
        "podagent-containerd.yaml",
        "containerd",
        "unix:///run/containerd/containerd.sock",
    ),
];

/// `metrics.listen` as etc/podagent.toml ships it.
fn default_metrics_listen() -> String {
    let path = repo().join("etc/podagent.toml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let metrics = text
        .split_once("\n[metrics]\n")
        .expect("a [metrics] table")
        .1;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("listen = "))
        .expect("metrics.listen")
        .trim_matches('"')
        .to_owned()
}

/// The seed's file names and the files that replaced them, kept for one release.
const DEPRECATED_NAMES: [(&str, &str); 2] = [
    ("podagent-ds.yaml", "podagent-docker.yaml"),
    ("podagent-cs.yaml", "podagent-crio.yaml"),
];

#[test]
fn seed_manifest_names_apply_the_same_objects_as_their_new_names() {
    for (old, new) in DEPRECATED_NAMES {
        let read = |file: &str| {
            let path = repo().join("manifests").join(file);
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        assert_eq!(
            read(old),
            format!(
                "# Deprecated name: use {new}; removed in the next release\n{}",
                read(new)
            ),
            "manifests/{old} must be manifests/{new} behind the deprecation comment \
             (a copy of {new} with that comment as its first line)"
        );
    }
}

#[test]
fn daemonsets_are_consistent_with_their_runtime_and_the_rbac_manifest() {
    let rbac = documents(&repo().join("manifests/podagent-serviceaccount-and-rbac.yaml"));
    let accounts: Vec<(String, String)> = rbac
        .iter()
        .filter(|d| d["kind"] == "ServiceAccount")
        .map(|d| {
            (
                d["metadata"]["namespace"].as_str().unwrap_or("").to_owned(),
                d["metadata"]["name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let mut images = Vec::new();
    for (file, runtime, endpoint) in DAEMONSETS {
        let docs = documents(&repo().join("manifests").join(file));
        assert_eq!(docs.len(), 1, "{file}: one DaemonSet");
        let ds = &docs[0];
        assert_eq!(
            (ds["apiVersion"].as_str(), ds["kind"].as_str()),
            (Some("apps/v1"), Some("DaemonSet"))
        );
        let namespace = ds["metadata"]["namespace"].as_str().expect("namespace");
        let selector = &ds["spec"]["selector"]["matchLabels"];
        let template = &ds["spec"]["template"];
        for (key, value) in selector.as_object().expect("matchLabels") {
            assert_eq!(
                &template["metadata"]["labels"][key], value,
                "{file}: selector matches the template"
            );
        }
        let spec = &template["spec"];
        let account = spec["serviceAccountName"]
            .as_str()
            .expect("serviceAccountName");
        assert!(
            accounts.contains(&(namespace.to_owned(), account.to_owned())),
            "{file}: service account {namespace}/{account} is not in the RBAC manifest"
        );
        assert_eq!(spec["hostNetwork"], true, "{file}: hostNetwork");

        let containers = spec["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1);
        let container = &containers[0];
        images.push(container["image"].as_str().expect("image").to_owned());
        assert_eq!(
            container["securityContext"]["privileged"], true,
            "{file}: privileged"
        );
        assert_eq!(
            container["command"],
            json!(["/opt/kaloom/bin/podagent"]),
            "{file}: the RPM's binary path"
        );
        // The probes reach the listener where the shipped configuration puts it.
        let listen = default_metrics_listen();
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(
                format!("{}:{}", get["host"].as_str().unwrap_or(""), get["port"]),
                listen,
                "{file}: {probe} at metrics.listen"
            );
            assert_eq!(get["path"], path, "{file}: {probe}");
        }
        let args: Vec<&str> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(args.first(), Some(&"run"), "{file}: runs the agent");
        assert!(
            args.contains(&format!("--runtime={runtime}").as_str()),
            "{file}: {args:?}"
        );
        assert!(
            args.contains(&format!("--runtime-endpoint={endpoint}").as_str()),
            "{file}: {args:?}"
        );
        assert!(
            args.contains(&"--node-name=$(NODE_NAME)"),
            "{file}: {args:?}"
        );
        assert!(
            !args.iter().any(|a| a.starts_with("--kubeconfig")),
            "{file}: in-cluster config"
        );
        let env = container["env"].as_array().expect("env");
        assert!(
            env.iter().any(|e| e["name"] == "NODE_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
            "{file}: NODE_NAME from the downward API"
        );

        // Every mount has its volume and every volume is mounted; host paths are right.
        let volumes: Vec<&Value> = spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .collect();
        let mounts: Vec<&Value> = container["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .collect();
        let volume_names: Vec<&str> = volumes.iter().filter_map(|v| v["name"].as_str()).collect();
        let mount_names: Vec<&str> = mounts.iter().filter_map(|m| m["name"].as_str()).collect();
        for name in &mount_names {
            assert!(
                volume_names.contains(name),
                "{file}: mount {name} has no volume"
            );
        }
        for name in &volume_names {
            assert!(
                mount_names.contains(name),
                "{file}: volume {name} is not mounted"
            );
        }
        let host_path_of = |mount_path: &str| -> Option<String> {
            let mount = mounts.iter().find(|m| m["mountPath"] == mount_path)?;
            let volume = volumes.iter().find(|v| v["name"] == mount["name"])?;
            volume["hostPath"]["path"].as_str().map(str::to_owned)
        };
        for path in ["/etc/cni/net.d", "/var/lib/podagent"] {
            assert_eq!(
                host_path_of(path).as_deref(),
                Some(path),
                "{file}: {path} from the host"
            );
        }
        // Plugins run chrooted into the node's root (its binaries, libraries, /var/lib/cni),
        // which needs the node's PID namespace; mounts made on the node later must show.
        assert_eq!(
            host_path_of("/host").as_deref(),
            Some("/"),
            "{file}: / at /host"
        );
        assert!(
            mounts
                .iter()
                .any(|m| m["mountPath"] == "/host" && m["mountPropagation"] == "HostToContainer"),
            "{file}: /host with HostToContainer propagation"
        );
        assert!(args.contains(&"--cni-host-root=/host"), "{file}: {args:?}");
        assert_eq!(spec["hostPID"], true, "{file}: hostPID for cni.host_root");
        let socket = endpoint.trim_start_matches("unix://");
        let socket_dir = Path::new(socket)
            .parent()
            .expect("socket dir")
            .to_str()
            .expect("utf-8");
        assert!(
            host_path_of(socket).as_deref() == Some(socket)
                || host_path_of(socket_dir).as_deref() == Some(socket_dir),
            "{file}: the runtime socket {socket} is mounted from the host"
        );
        if runtime != "docker" {
            let netns = mounts
                .iter()
                .find(|m| m["mountPath"] == "/var/run/netns")
                .expect("netns mount");
            assert_eq!(
                netns["mountPropagation"], "HostToContainer",
                "{file}: netns created later must be visible"
            );
            assert_eq!(
                host_path_of("/var/run/netns").as_deref(),
                Some("/var/run/netns")
            );
        }
    }
    images.dedup();
    assert_eq!(images.len(), 1, "one image for every runtime: {images:?}");
}

#[test]
fn network_crd_and_the_data_example_agree() {
    let crd = documents(&repo().join("manifests/networks-crd.yaml"));
    let crd = &crd[0];
    assert_eq!(crd["metadata"]["name"], "networks.kaloom.com");
    assert_eq!(crd["spec"]["group"], "kaloom.com");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["plural"], "networks");
    assert_eq!(crd["spec"]["names"]["kind"], "Network");
    assert_eq!(crd["spec"]["versions"][0]["name"], "v1");

    let example = documents(&repo().join("examples/data-net.yaml"));
    let network = &example[0];
    assert_eq!(network["apiVersion"], "kaloom.com/v1");
    assert_eq!(network["kind"], "Network");
    assert_eq!(network["metadata"]["name"], "data");
    let config: Value = serde_json::from_str(network["spec"]["config"].as_str().expect("config"))
        .expect("spec.config is JSON");
    assert_eq!(config["type"], "bridge");
    assert_eq!(config["bridge"], "data-br");
    assert_eq!(config["name"], "data");
}

#[test]
fn every_manifest_applies_to_the_api_server_with_kubectl() {
    let cluster = Cluster::start();
    // The CRD first: the example's kind exists only once it is registered.
    let ordered: Vec<PathBuf> = {
        let (crds, rest): (Vec<PathBuf>, Vec<PathBuf>) = manifest_paths()
            .into_iter()
            .partition(|p| p.to_string_lossy().ends_with("-crd.yaml"));
        crds.into_iter().chain(rest).collect()
    };
    for path in &ordered {
        let out = cluster.kubectl(&["apply", "-f", path.to_str().expect("utf-8")]);
        assert_ok(&out, &format!("kubectl apply -f {}", path.display()));
        if path.to_string_lossy().ends_with("-crd.yaml") {
            let name = documents(path)[0]["metadata"]["name"]
                .as_str()
                .expect("a CRD name")
                .to_owned();
            let out = cluster.kubectl(&[
                "wait",
                "--for=condition=Established",
                &format!("crd/{name}"),
            ]);
            assert_ok(&out, &format!("kubectl wait for crd/{name}"));
        }
    }
    // Three runtimes, one DaemonSet name: the last one applied is what is stored.
    let admin = cluster.shared.admin();
    let ds = admin
        .get("apps/v1", "DaemonSet", Some("kube-system"), "podagent")
        .expect("DaemonSet stored");
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        "podagent"
    );
    assert!(
        admin
            .get("v1", "ServiceAccount", Some("kube-system"), "podagent")
            .is_some()
    );
    assert!(
        admin
            .get(
                "rbac.authorization.k8s.io/v1",
                "ClusterRole",
                None,
                "podagent"
            )
            .is_some()
    );
    let data = cluster.kubectl(&[
        "get",
        "networks.kaloom.com",
        "data",
        "--namespace",
        &cluster.ns,
        "-o",
        "jsonpath={.spec.plugin}",
    ]);
    assert_ok(&data, "kubectl get network data");
    assert_eq!(text(&data.stdout), "bridge");
}

#[test]
fn the_shipped_rbac_grants_what_podagent_uses_and_nothing_else() {
    let cluster = Cluster::start();
    // Applies manifests/podagent-serviceaccount-and-rbac.yaml and makes podagent's token, as
    // an operator does; every end-to-end test runs podagent with that token, so a missing
    // grant fails them. Here: nothing beyond what podagent uses is granted.
    cluster.shared.podagent_kubeconfig();
    let account = "system:serviceaccount:kube-system:podagent";
    let cases: [(&str, &str, bool); 30] = [
        ("list", "pods", true),
        ("watch", "pods", true),
        ("patch", "pods", true),
        ("create", "events.events.k8s.io", true),
        ("patch", "events.events.k8s.io", true),
        ("get", "events.events.k8s.io", true),
        // Direct mode: the Network objects, from one list+watch; never fetched, never written.
        ("list", "networks.kaloom.com", true),
        ("watch", "networks.kaloom.com", true),
        ("get", "networks.kaloom.com", false),
        ("create", "networks.kaloom.com", false),
        // Npwg mode: the same for NetworkAttachmentDefinitions.
        (
            "list",
            "network-attachment-definitions.k8s.cni.cncf.io",
            true,
        ),
        (
            "watch",
            "network-attachment-definitions.k8s.cni.cncf.io",
            true,
        ),
        (
            "get",
            "network-attachment-definitions.k8s.cni.cncf.io",
            false,
        ),
        (
            "update",
            "network-attachment-definitions.k8s.cni.cncf.io",
            false,
        ),
        // `podagent check`: is the admission policy enforced (that one binding only).
        (
            "get",
            "validatingadmissionpolicybindings.admissionregistration.k8s.io/podagent-node-bound",
            true,
        ),
        (
            "get",
            "validatingadmissionpolicybindings.admissionregistration.k8s.io/other",
            false,
        ),
        (
            "list",
            "validatingadmissionpolicybindings.admissionregistration.k8s.io",
            false,
        ),
        // Pods are only read through the watch; podagent never writes their status.
        ("get", "pods", false),
        ("update", "pods", false),
        ("create", "pods", false),
        ("delete", "pods", false),
        ("patch", "pods --subresource=status", false),
        ("create", "pods --subresource=exec", false),
        ("delete", "events.events.k8s.io", false),
        ("create", "events", false),
        ("get", "secrets", false),
        ("list", "secrets", false),
        ("list", "nodes", false),
        ("list", "configmaps", false),
        ("create", "serviceaccounts --subresource=token", false),
    ];
    let mut wrong = Vec::new();
    for (verb, resource, allowed) in cases {
        let mut args = vec!["auth", "can-i", verb];
        args.extend(resource.split(' '));
        args.extend(["--as", account, "--all-namespaces"]);
        let out = cluster.kubectl(&args);
        let answer = text(&out.stdout).trim().to_string();
        let expected = if allowed { "yes" } else { "no" };
        if answer != expected {
            wrong.push(format!(
                "{verb} {resource}: {answer:?} (want {expected}) {}",
                text(&out.stderr).trim()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "podagent's RBAC answers wrongly: {wrong:#?}"
    );
}
