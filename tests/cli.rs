//! The `podagent` binary's command line, configuration errors and `podagent check`, run as an
//! operator would: the real binary against the real control plane (with the credentials
//! `scripts/create-kubeconfig.sh` makes for the shipped RBAC), a private containerd, the Debian
//! CNI plugins and real directories.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::json;
use testkit::host::{Containerd, CriDaemon, Crio};

const BINARY: &str = env!("CARGO_BIN_EXE_podagent");
const DEBIAN_CNI_BIN: &str = "/usr/lib/cni";

/// Runs the binary with a clean environment for podagent (no stray PODAGENT_*, RUST_LOG or
/// systemd variables from the caller) plus `env`.
async fn podagent(args: &[&str], env: &[(&str, &str)]) -> Output {
    podagent_under(&[], args, env).await
}

/// podagent run by `wrapper` (a command that runs the rest of its arguments, like `unshare`).
async fn podagent_under(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut command = tokio::process::Command::new(program);
            command.args(wrapper_args).arg(BINARY);
            command
        }
        None => tokio::process::Command::new(BINARY),
    };
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("PODAGENT_")
            || [
                "RUST_LOG",
                "NOTIFY_SOCKET",
                "WATCHDOG_USEC",
                "JOURNAL_STREAM",
            ]
            .contains(&name.as_str())
        {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command
        .output()
        .await
        .unwrap_or_else(|err| panic!("cannot run {BINARY}: {err}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A configuration file for the test host.
struct ConfigFile {
    dir: tempfile::TempDir,
}

impl ConfigFile {
    fn write(body: &str) -> ConfigFile {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("podagent.toml"), body).expect("write config");
        ConfigFile { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("podagent.toml")
    }

    fn path_str(&self) -> String {
        self.path().display().to_string()
    }
}

/// The settings of a healthy test host; each field can be broken on its own.
struct Host {
    node: String,
    kubeconfig: PathBuf,
    runtime_kind: &'static str,
    runtime_socket: PathBuf,
    conf_dir: PathBuf,
    bin_dir: String,
    state_dir: PathBuf,
    networks_mode: &'static str,
    /// The test host's primary is the Debian bridge, deliberately.
    accept_other_primary: bool,
}

impl Host {
    fn config(&self) -> ConfigFile {
        ConfigFile::write(&format!(
            "node_name = \"{}\"\nstate_dir = \"{}\"\n[kube]\nkubeconfig = \"{}\"\n\
             [runtime]\nkind = \"{}\"\nendpoint = \"unix://{}\"\n\
             [cni]\nconf_dir = \"{}\"\nbin_dirs = [\"{}\"]\n\
             [networks]\nmode = \"{}\"\naccept_other_primary = {}\n",
            self.node,
            self.state_dir.display(),
            self.kubeconfig.display(),
            self.runtime_kind,
            self.runtime_socket.display(),
            self.conf_dir.display(),
            self.bin_dir,
            self.networks_mode,
            self.accept_other_primary,
        ))
    }
}

async fn check(host: &Host) -> (Option<i32>, Vec<String>) {
    let config = host.config();
    let out = podagent(&["check", "--config", &config.path_str()], &[]).await;
    let lines = text(&out.stdout).lines().map(str::to_string).collect();
    (out.status.code(), lines)
}

fn line<'a>(lines: &'a [String], what: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l[l.char_indices().nth(2).map_or(0, |(i, _)| i)..].starts_with(what))
        .unwrap_or_else(|| panic!("no `{what}` line in {lines:#?}"))
}

fn assert_only_failure(lines: &[String], what: &str) {
    for l in lines {
        let failed = l.starts_with('✗');
        let is_it = l.contains(&format!(" {what}:"));
        assert_eq!(failed, is_it, "only `{what}` should fail: {lines:#?}");
    }
}

/// The `what` line failed and says exactly `detail`.
fn assert_failed(lines: &[String], what: &str, detail: &str) {
    assert_eq!(
        line(lines, what),
        format!("✗ {what}: {detail}"),
        "{lines:#?}"
    );
}

/// No line says one cause twice: a wrapper that embeds its source and a transport that wraps
/// one io error in several layers must not show through as repetition.
fn assert_each_cause_once(lines: &[String]) {
    for l in lines {
        assert!(l.matches("os error").count() <= 1, "cause repeated: {l}");
        let mut causes: Vec<&str> = l
            .split(": ")
            .flat_map(|part| part.split("; "))
            .filter(|cause| cause.len() > 8)
            .collect();
        let said = causes.len();
        causes.sort_unstable();
        causes.dedup();
        assert_eq!(causes.len(), said, "cause repeated: {l}");
    }
}

#[tokio::test]
async fn invalid_config_exits_64_naming_each_key_and_its_source() {
    let config = ConfigFile::write("anotation_key = \"typo\"\nstate_dir = \"relative\"\n");
    let out = podagent(
        &[
            "run",
            "--config",
            &config.path_str(),
            "--cni-conf-path",
            "net.d",
        ],
        &[("PODAGENT_RECONCILE__CONCURRENCY", "lots")],
    )
    .await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let file = config.path().display().to_string();
    assert_eq!(
        text(&out.stderr),
        format!(
            "podagent: invalid configuration:\n  \
             `state_dir` (from file {file}): must be an absolute path, got \"relative\"\n  \
             `cni.conf_dir` (from flag --cni-conf-dir/--cni-conf-path): must be an absolute \
             path, got \"net.d\"\n  \
             `reconcile.concurrency` (from environment variable \
             PODAGENT_RECONCILE__CONCURRENCY): invalid type: found string \"lots\", expected u64\n  \
             `anotation_key` (from file {file}): unknown key (see \
             /opt/kaloom/etc/podagent.toml for the valid ones)\n"
        )
    );
}

#[tokio::test]
async fn missing_explicit_config_file_exits_64_naming_it() {
    let out = podagent(&["run", "--config", "/nonexistent/podagent.toml"], &[]).await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    // The io error is both embedded in the message and its source: said once.
    assert_eq!(
        text(&out.stderr),
        "podagent: cannot read configuration file /nonexistent/podagent.toml: No such file or \
         directory (os error 2)\n"
    );
}

#[tokio::test]
async fn invalid_log_filter_exits_64_naming_where_it_came_from() {
    let config = ConfigFile::write("");
    let out = podagent(
        &["run", "--config", &config.path_str()],
        &[("RUST_LOG", "podagent=[")],
    )
    .await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        "podagent: invalid log filter \"podagent=[\" (from RUST_LOG): error parsing level \
         filter: expected one of \"off\", \"error\", \"warn\", \"info\", \"debug\", \"trace\", \
         or a number 0-5\n"
    );
}

#[tokio::test]
async fn missing_kubeconfig_ends_the_daemon_with_one_rendered_error() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let kubeconfig = scratch.path().join("absent-kubeconfig.yaml");
    let config = ConfigFile::write(&format!(
        "node_name = \"n1\"\nstate_dir = \"{}\"\n[kube]\nkubeconfig = \"{}\"\n",
        scratch.path().join("state").display(),
        kubeconfig.display()
    ));
    let out = podagent(&["run", "--config", &config.path_str()], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    let error = format!(
        "kubeconfig {} does not exist (write it with scripts/create-kubeconfig.sh, or run \
         podagent in a pod with a service account)",
        kubeconfig.display()
    );
    assert_eq!(
        stderr.lines().last(),
        Some(format!("podagent: {error}").as_str()),
        "{stderr}"
    );
    // Under systemd the log line goes to the journal instead; on stderr it carries the same
    // rendering as a field.
    for log in stderr.lines().filter(|l| l.contains("podagent failed")) {
        assert!(
            log.ends_with(&format!("podagent failed error={error}")),
            "{stderr}"
        );
    }
}

/// `cni.host_root` must be a root whose /proc shows podagent as itself (the node's, from the
/// node's PID namespace, as with a DaemonSet's `hostPID`): plugins chrooted there find
/// themselves and the pod's netns through it. `check` says so on a line of its own, and `run`
/// refuses to start rather than fail every ADD with a plugin's obscure error.
#[tokio::test]
async fn a_host_root_outside_podagents_pid_namespace_is_refused_naming_host_pid() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let config = |root: &Path| {
        ConfigFile::write(&format!(
            "node_name = \"n1\"\nstate_dir = \"{}\"\n[kube]\nkubeconfig = \"{}\"\n\
             [cni]\nhost_root = \"{}\"\n",
            scratch.path().join("state").display(),
            scratch.path().join("absent-kubeconfig.yaml").display(),
            root.display()
        ))
    };
    let check_lines = async |config: &ConfigFile| -> Vec<String> {
        let out = podagent(&["check", "--config", &config.path_str()], &[]).await;
        text(&out.stdout).lines().map(str::to_string).collect()
    };

    // The machine's own / is a root whose PID namespace podagent shares.
    let lines = check_lines(&config(Path::new("/"))).await;
    assert_eq!(
        line(&lines, "node root usable"),
        "✓ node root usable: /, in the node's PID namespace",
        "{lines:#?}"
    );

    let empty = scratch.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let lines = check_lines(&config(&empty)).await;
    assert_failed(
        &lines,
        "node root usable",
        &format!(
            "cni.host_root {0}: cannot read {0}/proc/self: No such file or directory (os error \
             2); mount the node's / there, its /proc included (hostPath / at /host), or leave \
             cni.host_root unset on the node itself",
            empty.display()
        ),
    );

    // In a PID namespace of its own podagent is process 1, and the machine's /proc shows it
    // under its number in the machine's namespace.
    let config = config(Path::new("/"));
    let out = podagent_under(
        &["unshare", "--pid", "--fork"],
        &["run", "--config", &config.path_str()],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "podagent: cni.host_root /: podagent is process 1 in its own PID namespace but "
        ) && last.ends_with(
            " in the node's /proc (/proc): plugins chrooted there would look for themselves and \
             for the pod's netns under the wrong /proc/<pid>; run podagent in the node's PID \
             namespace (hostPID: true in the pod spec)"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn usage_errors_exit_64() {
    let out = podagent(&["run", "--no-such-flag"], &[]).await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[tokio::test]
async fn go_podagent_option_names_are_accepted() {
    // Invalid on purpose (relative paths), so the run stops at validation and the errors show
    // which settings the Go-style flags reached.
    let out = podagent(
        &[
            "--node=Node-Go",
            "--cni-bin-path=a:/b",
            "--cni-vendor-name=kaloom",
            "--container-type=crio",
            "--crio-endpoint=unix:///run/crio/crio.sock",
            "--docker-endpoint=unix:///var/run/docker.sock",
            "--kubeconfig=kc.yaml",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("`cni.bin_dirs` (from flag --cni-bin-dirs/--cni-bin-path)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`kube.kubeconfig` (from flag --kubeconfig)"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("\n  `").count(),
        2,
        "only those two: {stderr}"
    );
}

#[tokio::test]
async fn version_names_commit_build_date_and_runtimes() {
    let out = podagent(&["version"], &[]).await;
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("podagent {}\n", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    for field in ["commit: ", "built: ", "runtimes: containerd"] {
        assert!(stdout.contains(field), "{field} missing: {stdout}");
    }
}

/// A node name with one running pod bound to it, on the shared control plane.
fn seeded_node() -> String {
    let cluster = testkit::control_plane::shared();
    let node = cluster.unique_name("node-cli");
    let namespace = cluster.create_namespace("team");
    cluster
        .admin()
        .create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": namespace,
                         "annotations": {"networks": "[{\"name\":\"green\"}]"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running"}
        }))
        .expect("seed pod");
    node
}

/// The node's own kubeconfig, as `scripts/create-kubeconfig.sh --node NODE` writes it, on a
/// cluster with the admission policy installed.
fn healthy(node: &str, runtime: &CriDaemon, state: &Path) -> Host {
    let cluster = testkit::control_plane::shared();
    cluster.install_admission_policy();
    Host {
        node: node.to_string(),
        kubeconfig: cluster.node_kubeconfig(node),
        runtime_kind: "containerd",
        runtime_socket: runtime.socket().to_path_buf(),
        conf_dir: runtime.dir().join("net.d"),
        bin_dir: DEBIAN_CNI_BIN.to_string(),
        state_dir: state.join("state"),
        networks_mode: "kactus",
        accept_other_primary: true,
    }
}

/// On a CRI-O node, `runtime.kind = "auto"` on its socket finds it, and the check names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_crio_that_auto_finds() {
    testkit::prereq::require_path(Path::new(DEBIAN_CNI_BIN), "containernetworking-plugins");
    let node = seeded_node();
    let crio = Crio::start().await;
    let scratch = tempfile::tempdir().expect("temp dir");
    let (code, lines) = check(&Host {
        runtime_kind: "auto",
        ..healthy(&node, &crio, scratch.path())
    })
    .await;
    assert_eq!(code, Some(0), "{lines:#?}");
    let version = testkit::host::crio_version().trim_start_matches('v');
    assert_eq!(
        line(&lines, "container runtime reachable"),
        format!(
            "✓ container runtime reachable: crio (cri-o {version}, API v1) at {}",
            crio.socket().display()
        ),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_against_a_healthy_host_and_names_each_broken_dependency() {
    testkit::prereq::require_path(Path::new(DEBIAN_CNI_BIN), "containernetworking-plugins");
    let node = seeded_node();
    let mut containerd = Containerd::start().await;
    let scratch = tempfile::tempdir().expect("temp dir");
    let host = healthy(&node, &containerd, scratch.path());
    let server = testkit::control_plane::shared().server();

    let (code, lines) = check(&host).await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert_eq!(lines.len(), 11, "{lines:#?}");
    assert!(lines.iter().all(|l| l.starts_with('✓')), "{lines:#?}");
    assert!(line(&lines, "pods on this node listable").contains(&format!("1 pods on node {node}")));
    assert_eq!(
        line(&lines, "identity speaks for this node"),
        format!(
            "✓ identity speaks for this node: system:serviceaccount:kube-system:podagent-node-{node} speaks for node {node}"
        )
    );
    assert_eq!(
        line(&lines, "admission policy enforced"),
        "✓ admission policy enforced: ValidatingAdmissionPolicy podagent-node-bound bound with Deny"
    );
    assert_eq!(
        line(&lines, "networks resolvable"),
        "✓ networks resolvable: kactus mode: the node's primary CNI config resolves each network"
    );
    assert!(
        line(&lines, "container runtime reachable").contains("containerd"),
        "{lines:#?}"
    );
    assert!(line(&lines, "CNI primary config usable").contains("10-podagent-test.conflist"));
    assert!(
        line(&lines, "CNI plugin binaries present").contains("bridge"),
        "{lines:#?}"
    );
    assert_each_cause_once(&lines);

    // No kubeconfig: the API checks that need one say why they were skipped.
    let absent = scratch.path().join("absent-kubeconfig.yaml");
    let (code, lines) = check(&Host {
        kubeconfig: absent.clone(),
        ..healthy(&node, &containerd, scratch.path())
    })
    .await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_failed(
        &lines,
        "kubeconfig readable",
        &format!(
            "kubeconfig {} does not exist (write it with scripts/create-kubeconfig.sh, or run \
             podagent in a pod with a service account)",
            absent.display()
        ),
    );
    for what in [
        "pods on this node listable",
        "events creatable",
        "identity speaks for this node",
        "admission policy enforced",
    ] {
        assert_failed(&lines, what, "not checked: no usable kubeconfig");
    }
    assert_each_cause_once(&lines);

    // Wrong token: the API server rejects the credentials.
    let original = std::fs::read_to_string(host.kubeconfig.as_path()).expect("read kubeconfig");
    let token = original
        .lines()
        .find_map(|line| line.trim().strip_prefix("token: "))
        .expect("podagent's kubeconfig carries a token");
    let wrong = scratch.path().join("wrong-kubeconfig.yaml");
    std::fs::write(&wrong, original.replace(token, "\"wrong-token\"")).expect("write kubeconfig");
    let (code, lines) = check(&Host {
        kubeconfig: wrong,
        ..healthy(&node, &containerd, scratch.path())
    })
    .await;
    assert_eq!(code, Some(1), "{lines:#?}");
    let rejected = format!(
        "API server {server}/ rejected podagent's credentials (401 Unauthorized): Unauthorized"
    );
    for what in [
        "pods on this node listable",
        "events creatable",
        "identity speaks for this node",
        "admission policy enforced",
    ] {
        assert_failed(&lines, what, &rejected);
    }
    assert_each_cause_once(&lines);

    // Nothing listens where the kubeconfig points: the transport's chain shows, each cause once.
    let closed = closed_port();
    let moved = scratch.path().join("moved-kubeconfig.yaml");
    let elsewhere = format!("https://127.0.0.1:{closed}");
    std::fs::write(&moved, original.replace(server, &elsewhere)).expect("write kubeconfig");
    let (code, lines) = check(&Host {
        kubeconfig: moved,
        ..healthy(&node, &containerd, scratch.path())
    })
    .await;
    assert_eq!(code, Some(1), "{lines:#?}");
    let unreachable = format!(
        "API server {elsewhere}/ is unreachable: ServiceError: client error (Connect): tcp \
         connect error: Connection refused (os error 111)"
    );
    for what in [
        "pods on this node listable",
        "events creatable",
        "identity speaks for this node",
        "admission policy enforced",
    ] {
        assert_failed(&lines, what, &unreachable);
    }
    assert_each_cause_once(&lines);

    // Another node's kubeconfig copied here: everything works, but the admission policy would
    // deny every change to this node's pods. And the identity every node used to share speaks
    // for none. Only the identity line fails, saying which and what to run.
    let other = format!("{node}-other");
    let fix = format!(
        "run create-kubeconfig.sh --node {node} and install the kubeconfig it writes on this node"
    );
    let cluster = testkit::control_plane::shared();
    for (kubeconfig, detail) in [
        (
            cluster.node_kubeconfig(&other),
            format!(
                "system:serviceaccount:kube-system:podagent-node-{other} speaks for node {other}, \
                 not for this node {node} (a kubeconfig copied from another node?): {fix}"
            ),
        ),
        (
            cluster.podagent_kubeconfig().to_path_buf(),
            format!(
                "system:serviceaccount:kube-system:podagent is shared by every node and speaks \
                 for none, so the admission policy cannot keep it to this node's pods: {fix}"
            ),
        ),
    ] {
        let (code, lines) = check(&Host {
            kubeconfig,
            ..healthy(&node, &containerd, scratch.path())
        })
        .await;
        assert_eq!(code, Some(1), "{lines:#?}");
        assert_only_failure(&lines, "identity speaks for this node");
        assert_failed(&lines, "identity speaks for this node", &detail);
    }

    // Kactus mode on a primary that is not kactus: the trap a new user falls into.
    let (code, lines) = check(&Host {
        accept_other_primary: false,
        ..healthy(&node, &containerd, scratch.path())
    })
    .await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_only_failure(&lines, "CNI primary config usable");
    assert_failed(
        &lines,
        "CNI primary config usable",
        &format!(
            "{}/10-podagent-test.conflist (network podagent-test) runs `bridge` first, not \
             kactus: in kactus mode podagent would ask `bridge` for a second pod interface \
             instead of the named network; set networks.mode = \"direct\" to run each \
             Network's own config, or networks.accept_other_primary = true if this primary \
             resolves networks as kactus does",
            host.conf_dir.display()
        ),
    );

    // Direct mode: the primary is not used, the Network objects must be readable. Before the
    // CRD is installed the server does not serve them; after, they are listable.
    let direct = || Host {
        networks_mode: "direct",
        accept_other_primary: false,
        ..healthy(&node, &containerd, scratch.path())
    };
    let (code, lines) = check(&direct()).await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_eq!(
        line(&lines, "CNI plugin binaries present"),
        "✗ CNI plugin binaries present: not checked: the Network objects could not be listed"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with('✗')).count(),
        2,
        "{lines:#?}"
    );
    assert_failed(
        &lines,
        "networks resolvable",
        &format!(
            "API server {server}/ does not serve networks.kaloom.com/v1 (404): install its \
             CustomResourceDefinition (kubectl apply -f \
             /opt/kaloom/share/podagent/manifests/networks-crd.yaml)"
        ),
    );
    cluster.install_network_crd();
    let (code, lines) = check(&direct()).await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(
        line(&lines, "networks resolvable").starts_with("✓ networks resolvable: direct mode: ")
            && line(&lines, "networks resolvable")
                .ends_with(" Network objects (kaloom.com/v1) listable in all namespaces"),
        "{lines:#?}"
    );
    assert_eq!(
        line(&lines, "CNI primary config usable"),
        "✓ CNI primary config usable: not used in direct mode: each Network's own config is run"
    );
    // The plugins the Network objects name are asked for VERSION; one naming a plugin the node
    // does not have fails the line, naming the object; an unusable spec.config is mentioned.
    let networks = cluster.create_namespace("nets");
    let put = |name: &str, config: &str| {
        cluster
            .admin()
            .create(
                serde_json::json!({"apiVersion": "kaloom.com/v1", "kind": "Network",
                "metadata": {"name": name, "namespace": networks}, "spec": {"config": config}}),
            )
            .unwrap_or_else(|e| panic!("Network {name}: {e:#}"));
    };
    put(
        "plain",
        r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"},{"type":"tuning"}]}"#,
    );
    put("broken", "not json");
    let (code, lines) = check(&direct()).await;
    assert_eq!(code, Some(0), "{lines:#?}");
    let plugins = line(&lines, "CNI plugin binaries present");
    assert!(
        plugins.contains("bridge (cniVersion ") && plugins.contains("tuning (cniVersion "),
        "{plugins}"
    );
    assert!(
        line(&lines, "networks resolvable").contains(&format!(
            "1 with an unusable spec.config (their entries get an InvalidNetwork Event): \
             {networks}/broken: not valid JSON"
        )),
        "{lines:#?}"
    );
    put(
        "exotic",
        r#"{"cniVersion":"1.0.0","type":"no-such-plugin"}"#,
    );
    let (code, lines) = check(&direct()).await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_only_failure(&lines, "CNI plugin binaries present");
    let plugins = line(&lines, "CNI plugin binaries present");
    assert!(
        plugins.contains(&format!("Network {networks}/exotic: "))
            && plugins.contains("no-such-plugin"),
        "{plugins}"
    );
    for name in ["plain", "broken", "exotic"] {
        let _ = cluster
            .admin()
            .delete("kaloom.com/v1", "Network", Some(&networks), name, None);
    }

    // npwg mode: the same checks on NetworkAttachmentDefinitions. Before their CRD is
    // installed the line names it and its manifest; after, the definitions are listed, one
    // without spec.config is noted, and their plugins answer VERSION.
    let npwg = || Host {
        networks_mode: "npwg",
        accept_other_primary: false,
        ..healthy(&node, &containerd, scratch.path())
    };
    let (code, lines) = check(&npwg()).await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_failed(
        &lines,
        "networks resolvable",
        &format!(
            "API server {server}/ does not serve \
             network-attachment-definitions.k8s.cni.cncf.io/v1 (404): install its \
             CustomResourceDefinition (kubectl apply -f \
             /opt/kaloom/share/podagent/manifests/network-attachment-definitions-crd.yaml)"
        ),
    );
    assert_eq!(
        line(&lines, "CNI plugin binaries present"),
        "✗ CNI plugin binaries present: not checked: the NetworkAttachmentDefinition objects \
         could not be listed"
    );
    cluster.install_attachment_definition_crd();
    let put_definition = |name: &str, spec: serde_json::Value| {
        cluster
            .admin()
            .create(serde_json::json!({"apiVersion": "k8s.cni.cncf.io/v1",
                "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": name, "namespace": networks}, "spec": spec}))
            .unwrap_or_else(|e| panic!("NetworkAttachmentDefinition {name}: {e:#}"));
    };
    put_definition(
        "plain",
        serde_json::json!({"config": r#"{"cniVersion":"1.0.0","type":"bridge"}"#}),
    );
    put_definition("on-disk", serde_json::json!({}));
    let (code, lines) = check(&npwg()).await;
    assert_eq!(code, Some(0), "{lines:#?}");
    let resolvable = line(&lines, "networks resolvable");
    assert!(
        resolvable.starts_with(
            "✓ networks resolvable: npwg mode: 2 NetworkAttachmentDefinition \
             objects (k8s.cni.cncf.io/v1) listable in all namespaces"
        ) && resolvable
            .ends_with("; 1 without spec.config, resolved from the CNI conf dir when used"),
        "{lines:#?}"
    );
    assert_eq!(
        line(&lines, "CNI primary config usable"),
        "✓ CNI primary config usable: not used in npwg mode: each \
         NetworkAttachmentDefinition's own config is run"
    );
    assert!(
        line(&lines, "CNI plugin binaries present").contains("bridge (cniVersion "),
        "{lines:#?}"
    );
    put_definition(
        "exotic",
        serde_json::json!({"config": r#"{"cniVersion":"1.0.0","type":"no-such-plugin"}"#}),
    );
    let (code, lines) = check(&npwg()).await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_only_failure(&lines, "CNI plugin binaries present");
    let plugins = line(&lines, "CNI plugin binaries present");
    assert!(
        plugins.contains(&format!("NetworkAttachmentDefinition {networks}/exotic: "))
            && plugins.contains("no-such-plugin"),
        "{plugins}"
    );

    // Empty CNI conf dir.
    let empty = scratch.path().join("empty-net.d");
    std::fs::create_dir(&empty).expect("mkdir");
    let (code, lines) = check(&Host {
        conf_dir: empty.clone(),
        ..healthy(&node, &containerd, scratch.path())
    })
    .await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_failed(
        &lines,
        "CNI primary config usable",
        &format!(
            "no usable CNI network config in {}: no *.conf, *.conflist or *.json file; install \
             the node's CNI config there (a .conf, .conflist or .json file) or point podagent at \
             the right directory",
            empty.display()
        ),
    );
    assert_failed(
        &lines,
        "CNI plugin binaries present",
        "not checked: no usable CNI config",
    );
    assert_each_cause_once(&lines);

    // The plugin binaries are not in the bin dir.
    let no_plugins = scratch.path().join("empty-bin");
    std::fs::create_dir(&no_plugins).expect("mkdir");
    let (code, lines) = check(&Host {
        bin_dir: no_plugins.display().to_string(),
        ..healthy(&node, &containerd, scratch.path())
    })
    .await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_only_failure(&lines, "CNI plugin binaries present");
    assert_failed(
        &lines,
        "CNI plugin binaries present",
        &format!(
            "CNI VERSION by plugin `bridge` for network `podagent-test`: no plugin binary \
             `bridge` in /opt/bridge/bin, {}; install the plugin there or fix the CNI bin dirs \
             and vendor settings",
            no_plugins.display()
        ),
    );
    assert_each_cause_once(&lines);

    // The state dir cannot be created: its parent is a file.
    let file = scratch.path().join("a-file");
    std::fs::write(&file, b"").expect("write file");
    let (code, lines) = check(&Host {
        state_dir: file.join("state"),
        ..healthy(&node, &containerd, scratch.path())
    })
    .await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_only_failure(&lines, "state dir writable");
    assert_failed(
        &lines,
        "state dir writable",
        &format!("{}/state: Not a directory (os error 20)", file.display()),
    );

    // No runtime socket at the configured path.
    let nowhere = scratch.path().join("nowhere.sock");
    let (code, lines) = check(&Host {
        runtime_socket: nowhere.clone(),
        ..healthy(&node, &containerd, scratch.path())
    })
    .await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_only_failure(&lines, "container runtime reachable");
    assert_failed(
        &lines,
        "container runtime reachable",
        &format!(
            "no container runtime answered a version call (kind containerd); tried: \
             containerd: no socket at {}",
            nowhere.display()
        ),
    );

    // A socket file nobody accepts on, as a runtime that died leaves it.
    let stale = scratch.path().join("stale.sock");
    testkit::host::stale_socket(&stale);
    let (code, lines) = check(&Host {
        runtime_socket: stale.clone(),
        ..healthy(&node, &containerd, scratch.path())
    })
    .await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_failed(
        &lines,
        "container runtime reachable",
        &format!(
            "no container runtime answered a version call (kind containerd); tried: \
             containerd: nothing listening on {}",
            stale.display()
        ),
    );

    // Stopped runtime: containerd removes its socket on the way out, or leaves it behind.
    containerd.stop_daemon().await;
    let (code, lines) = check(&healthy(&node, &containerd, scratch.path())).await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_only_failure(&lines, "container runtime reachable");
    let socket = containerd.socket().display();
    let tried = "no container runtime answered a version call (kind containerd); tried:";
    let stopped = line(&lines, "container runtime reachable");
    assert!(
        [
            format!("✗ container runtime reachable: {tried} containerd: no socket at {socket}"),
            format!(
                "✗ container runtime reachable: {tried} containerd: nothing listening on {socket}"
            ),
        ]
        .iter()
        .any(|expected| expected == stopped),
        "{lines:#?}"
    );
    assert_each_cause_once(&lines);
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind a loopback port")
}

#[tokio::test]
async fn check_reports_an_invalid_config_and_exits_64() {
    let config = ConfigFile::write("[cni]\nbin_dirs = []\n");
    let out = podagent(&["check", "--config", &config.path_str()], &[]).await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!(
            "✗ config valid: invalid configuration:\n  `cni.bin_dirs` (from file {}): needs at least one directory\n",
            config.path().display()
        )
    );
}

#[tokio::test]
async fn environment_cargo_gives_the_binary_is_not_read_as_configuration() {
    // Run exactly as a test process would, without scrubbing: whatever cargo exports to the
    // binary at test time (build metadata included) must not be mistaken for `PODAGENT_*`
    // settings.
    let config = ConfigFile::write("");
    let out = tokio::process::Command::new(BINARY)
        .args(["check", "--config", &config.path_str()])
        .output()
        .await
        .expect("run podagent check");
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("✓ config valid"),
        "{stdout}{}",
        text(&out.stderr)
    );
}
