//! The `control-plane` command as people and scripts use it: one ready line, a real
//! kube-apiserver that the server-version kubectl and the host's own kubectl both talk to
//! (kubectl ≥ 1.32 sends protobuf), a clean stop on SIGTERM, and with `--ephemeral` a stop and
//! clean-up when its stdin closes; with `--nodes N` a line per Ready kubelet node.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use testkit::control_plane::{self, READY_PREFIX};

const BINARY: &str = env!("CARGO_BIN_EXE_control-plane");

/// Starts the command on `dir` with `args` and returns it with its ready line.
fn start(dir: &Path, args: &[&str]) -> (Child, String) {
    let (child, mut lines) = start_reading(dir, args);
    (child, lines.next().expect("the ready line"))
}

/// Starts the command on `dir` with `args`; it and the lines it prints.
fn start_reading(dir: &Path, args: &[&str]) -> (Child, impl Iterator<Item = String>) {
    testkit::prereq::require_root();
    let mut child = Command::new(BINARY)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start control-plane");
    let lines = BufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .map(|line| line.expect("read a line of control-plane"));
    (child, lines)
}

fn kubectl(program: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("KUBECACHEDIR", kubeconfig.with_file_name("kubectl-cache"))
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pids of processes whose command line mentions `dir`.
fn processes_naming(dir: &Path) -> Vec<i32> {
    testkit::host::processes_naming(dir)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "control-plane did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ready_line_real_server_kubectl_and_a_clean_sigterm_stop() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, line) = start(dir.path(), &[]);
    let kubeconfig = dir
        .path()
        .canonicalize()
        .expect("dir")
        .join("admin.kubeconfig");
    let expected = format!(
        "{READY_PREFIX}{} server https://127.0.0.1:",
        kubeconfig.display()
    );
    assert!(line.starts_with(&expected), "{line:?}, want {expected:?}…");

    let version = kubectl(&control_plane::binary("kubectl"), &kubeconfig, &["version"]);
    assert!(
        version.contains(&format!(
            "Server Version: {}",
            control_plane::kubernetes_version()
        )),
        "{version}"
    );
    kubectl(
        &control_plane::binary("kubectl"),
        &kubeconfig,
        &["create", "ns", "x"],
    );
    // The host's kubectl (a 1.32 or 1.33 client) sends create bodies as protobuf.
    let host_kubectl = testkit::prereq::which("kubectl").expect("kubectl on PATH");
    kubectl(&host_kubectl, &kubeconfig, &["create", "ns", "y"]);
    let namespaces = kubectl(&host_kubectl, &kubeconfig, &["get", "ns", "-o", "name"]);
    assert!(
        namespaces.contains("namespace/x") && namespaces.contains("namespace/y"),
        "{namespaces}"
    );

    assert!(!processes_naming(dir.path()).is_empty(), "daemons running");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    assert!(wait_for_exit(&mut child).success(), "exit 0 on SIGTERM");
    assert_eq!(
        processes_naming(dir.path()),
        Vec::<i32>::new(),
        "daemons left"
    );
    assert!(
        dir.path().join("kube-apiserver.log").is_file(),
        "without --ephemeral the dir and its logs stay"
    );
}

#[test]
fn ephemeral_stops_and_cleans_up_when_stdin_closes() {
    let parent = tempfile::tempdir().expect("temp dir");
    let dir: PathBuf = parent.path().join("cp");
    let (mut child, line) = start(&dir, &["--ephemeral"]);
    assert!(line.starts_with(READY_PREFIX), "{line:?}");
    assert!(!processes_naming(&dir).is_empty(), "daemons running");
    drop(child.stdin.take());
    assert!(
        wait_for_exit(&mut child).success(),
        "exit 0 once stdin closed"
    );
    assert_eq!(processes_naming(&dir), Vec::<i32>::new(), "daemons left");
    assert!(!dir.exists(), "{} removed", dir.display());
}

#[test]
fn nodes_are_ready_kubelets_named_with_their_ip_and_runtime_and_stop_with_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, mut lines) = start_reading(dir.path(), &["--nodes", "1"]);
    let ready = lines.next().expect("the ready line");
    assert!(ready.starts_with(READY_PREFIX), "{ready:?}");
    let node = lines.next().expect("a node line");
    let fields: Vec<&str> = node.split(' ').collect();
    let [_, name, _, ip, _, cri] = fields[..] else {
        panic!("node line {node:?} is not `node NAME ip IP cri unix://SOCKET`");
    };
    assert_eq!(
        (fields[0], name, fields[2], fields[4]),
        ("node", "node-1", "ip", "cri"),
        "{node:?}"
    );
    let socket = Path::new(cri.strip_prefix("unix://").expect("a unix:// endpoint"));
    assert!(socket.exists(), "{} exists", socket.display());

    let kubeconfig = dir.path().join("admin.kubeconfig");
    let kubectl_path = control_plane::binary("kubectl");
    let status = kubectl(
        &kubectl_path,
        &kubeconfig,
        &[
            "get",
            "node",
            name,
            "-o",
            "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address} \
             {.status.conditions[?(@.type==\"Ready\")].status}",
        ],
    );
    assert_eq!(
        status,
        format!("{ip} True"),
        "node {name}'s address and readiness"
    );

    let runtime_dir = socket.parent().expect("the runtime's dir").to_path_buf();
    assert!(
        !processes_naming(&runtime_dir).is_empty(),
        "containerd running"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    assert!(wait_for_exit(&mut child).success(), "exit 0 on SIGTERM");
    assert_eq!(
        processes_naming(&runtime_dir),
        Vec::<i32>::new(),
        "left running"
    );
    assert!(!runtime_dir.exists(), "{} removed", runtime_dir.display());
}
