//! One control plane per test binary, shared by its tests: starting one takes seconds, so each
//! test gets its own namespace and node name on the same server instead of its own server.
//!
//! It runs as the `control-plane` command with `--ephemeral`, a child of the test process
//! holding the write end of its stdin: when the test process ends — tests done, a panic, a
//! signal — the pipe closes and the command stops its daemons by PID and removes its dir.
//! Nothing lingers and nothing depends on destructors of statics, which Rust never runs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

/// The line `control-plane` prints once it is ready; scripts rely on it.
pub const READY_PREFIX: &str = "control plane ready: kubeconfig ";

/// The shared control plane of this test process.
pub struct Shared {
    server: String,
    kubeconfig: PathBuf,
    control: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    podagent_kubeconfig: OnceLock<PathBuf>,
    node_kubeconfigs: Mutex<HashMap<String, PathBuf>>,
    admission_policy: OnceLock<()>,
    network_crd: OnceLock<()>,
    attachment_definition_crd: OnceLock<()>,
    admin: OnceLock<super::Admin>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static NEXT_NAME: AtomicU32 = AtomicU32::new(0);

/// The control plane every test of this binary uses, started on first use. Panics (failing
/// the test) with the command's own words when it cannot start.
pub fn shared() -> &'static Shared {
    SHARED.get_or_init(|| Shared::spawn().unwrap_or_else(|err| panic!("{err:#}")))
}

impl Shared {
    fn spawn() -> Result<Shared> {
        crate::prereq::require_root();
        let dir = std::env::temp_dir().join(format!("podagent-cp-{}", std::process::id()));
        let program = crate::binaries::testkit_binary("control-plane");
        let mut child = Command::new(&program)
            .arg("--dir")
            .arg(&dir)
            .arg("--ephemeral")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdin = child.stdin.take().context("control-plane stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("control-plane stdout")?);
        let line = read_line(&mut stdout)?;
        let Some(rest) = line.strip_prefix(READY_PREFIX) else {
            let status = child.wait().ok();
            bail!(
                "control-plane did not start (exit {status:?}); it printed {line:?} (its log \
                 is on the test's stderr)"
            );
        };
        let (kubeconfig, server) = rest
            .split_once(" server ")
            .with_context(|| format!("unexpected ready line {line:?}"))?;
        Ok(Shared {
            server: server.to_string(),
            kubeconfig: PathBuf::from(kubeconfig),
            control: Mutex::new((stdin, stdout)),
            podagent_kubeconfig: OnceLock::new(),
            node_kubeconfigs: Mutex::new(HashMap::new()),
            admission_policy: OnceLock::new(),
            network_crd: OnceLock::new(),
            attachment_definition_crd: OnceLock::new(),
            admin: OnceLock::new(),
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The admin kubeconfig: for the test's own kubelet and kubectl part, never for podagent.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The control plane's dir: its keys (`pki/`) and the admin kubeconfig, what a
    /// [`crate::kubelet::KubeletNode`] needs to join it.
    pub fn dir(&self) -> &Path {
        self.kubeconfig
            .parent()
            .expect("kubeconfig inside the control plane dir")
    }

    /// The PEM of the CA that signed the API server's serving certificate.
    pub fn ca_pem(&self) -> String {
        let path = self.dir().join("pki").join("ca.crt");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
    }

    /// A new admin client (kube clients belong to the tokio runtime they were made on, and
    /// every test has its own).
    pub async fn client(&self) -> kube::Client {
        super::admin_client(&self.kubeconfig)
            .await
            .unwrap_or_else(|err| panic!("admin client for {}: {err:#}", self.server))
    }

    /// Blocking admin calls, for the kubelet's and the operator's part of a test.
    pub fn admin(&self) -> &super::Admin {
        self.admin.get_or_init(|| {
            super::Admin::new(&self.kubeconfig)
                .unwrap_or_else(|err| panic!("admin client for {}: {err:#}", self.server))
        })
    }

    /// A name no other test of this process uses: `<prefix>-<pid>-<n>`, a DNS-1123 label.
    pub fn unique_name(&self, prefix: &str) -> String {
        let n = NEXT_NAME.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{}-{n}", std::process::id())
    }

    /// Creates a fresh namespace `<prefix>-<pid>-<n>` and waits for its `default` service
    /// account (pods cannot be created before the controller manager made it). Generous: right
    /// after a kube-apiserver restart the controller manager's informers may still be in their
    /// reconnect backoff (up to 30 s in client-go).
    pub fn create_namespace(&self, prefix: &str) -> String {
        let name = self.unique_name(prefix);
        let admin = self.admin();
        admin
            .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
            .unwrap_or_else(|err| panic!("creating namespace {name}: {err:#}"));
        for _ in 0..1200 {
            if admin
                .get("v1", "ServiceAccount", Some(&name), "default")
                .is_some()
            {
                return name;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("namespace {name} got no default service account within 60s");
    }

    /// The control plane's own kubectl as the admin: the operator's and the user's commands.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(super::binary("kubectl"));
        self.as_admin(&mut command);
        command
    }

    /// Gives `command` (kubectl, or a script that runs it) the admin kubeconfig and the
    /// discovery cache.
    pub fn as_admin<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.kubectl_cache())
    }

    /// A discovery cache for kubectl inside the control plane's dir (`KUBECACHEDIR`), so no
    /// test leaves one per server port in root's home.
    pub fn kubectl_cache(&self) -> PathBuf {
        self.kubeconfig.with_file_name("kubectl-cache")
    }

    /// The kubeconfig of the identity all nodes share (`kube-system/podagent`): made once by
    /// `scripts/create-kubeconfig.sh` for the service account of
    /// `manifests/podagent-serviceaccount-and-rbac.yaml`, exactly as an operator makes it, so
    /// podagent has the shipped RBAC and nothing more.
    pub fn podagent_kubeconfig(&self) -> &Path {
        self.podagent_kubeconfig
            .get_or_init(|| self.create_kubeconfig(&[], "podagent"))
    }

    /// The kubeconfig of `node`'s own identity (`kube-system/podagent-node-<node>`), made once
    /// per node by `scripts/create-kubeconfig.sh --node NODE`: the identity the admission
    /// policy keeps to that node's pods.
    pub fn node_kubeconfig(&self, node: &str) -> PathBuf {
        let mut made = self
            .node_kubeconfigs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        made.entry(node.to_string())
            .or_insert_with(|| self.create_kubeconfig(&["--node", node], &format!("node-{node}")))
            .clone()
    }

    /// Runs `scripts/create-kubeconfig.sh ARGS <dir>/<subdir>` as the admin; the kubeconfig
    /// it wrote.
    fn create_kubeconfig(&self, args: &[&str], subdir: &str) -> PathBuf {
        let out = self.dir().join(subdir);
        let mut command = Command::new(repo().join("scripts/create-kubeconfig.sh"));
        command
            .args(args)
            .arg(&out)
            .arg("podagent-kubeconfig.yaml")
            .env("KUBECTL", super::binary("kubectl"));
        self.run_as_admin(command);
        out.join("podagent-kubeconfig.yaml")
    }

    /// Applies `manifests/podagent-admission-policy.yaml` once, as an operator does. The API
    /// server enforces a new policy only after it has loaded it (about a second): a test that
    /// needs a denial waits for it.
    pub fn install_admission_policy(&self) {
        self.admission_policy.get_or_init(|| {
            let mut command = Command::new(super::binary("kubectl"));
            command
                .arg("apply")
                .arg("-f")
                .arg(repo().join("manifests/podagent-admission-policy.yaml"));
            self.run_as_admin(command);
        });
    }

    /// Applies `manifests/networks-crd.yaml` once, as an operator does, and returns once the
    /// API server serves `kaloom.com/v1` `Network` objects.
    pub fn install_network_crd(&self) {
        self.install_crd(
            &self.network_crd,
            "networks-crd.yaml",
            "networks.kaloom.com",
        );
    }

    /// The same for `manifests/network-attachment-definitions-crd.yaml` (NPWG's
    /// `k8s.cni.cncf.io/v1` NetworkAttachmentDefinitions, which Multus would install).
    pub fn install_attachment_definition_crd(&self) {
        self.install_crd(
            &self.attachment_definition_crd,
            "network-attachment-definitions-crd.yaml",
            "network-attachment-definitions.k8s.cni.cncf.io",
        );
    }

    fn install_crd(&self, once: &OnceLock<()>, manifest: &str, name: &str) {
        once.get_or_init(|| {
            let kubectl = || Command::new(super::binary("kubectl"));
            let mut apply = kubectl();
            apply
                .arg("apply")
                .arg("-f")
                .arg(repo().join("manifests").join(manifest));
            self.run_as_admin(apply);
            // Right after the apply the object may have no status conditions yet, which
            // `kubectl wait` reports as an error instead of waiting: ask again until a deadline.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let output = kubectl()
                    .args(["wait", "--for=condition=Established", "--timeout=10s"])
                    .arg(format!("crd/{name}"))
                    .env("KUBECONFIG", &self.kubeconfig)
                    .env("KUBECACHEDIR", self.kubectl_cache())
                    .output()
                    .unwrap_or_else(|err| panic!("cannot run kubectl wait: {err}"));
                if output.status.success() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "CRD {name} not Established within 60 s: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
    }

    /// Runs an operator's command with the admin kubeconfig; panics with its output when it
    /// fails.
    fn run_as_admin(&self, mut command: Command) {
        let output = self
            .as_admin(&mut command)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
        assert!(
            output.status.success(),
            "{command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Restarts kube-apiserver (same port, same data, etcd compacted in between): every watch
    /// drops, and a watch from a resourceVersion the old server handed out gets a real 410.
    /// Affects every test of this process: only for test binaries that can take it.
    pub fn restart_apiserver(&self) {
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let (stdin, stdout) = &mut *control;
        writeln!(stdin, "restart-apiserver")
            .and_then(|()| stdin.flush())
            .expect("write to control-plane");
        let line = read_line(stdout).expect("control-plane answer");
        assert_eq!(
            line, "apiserver restarted",
            "control-plane answered {line:?}"
        );
    }
}

fn read_line(from: &mut BufReader<ChildStdout>) -> Result<String> {
    let mut line = String::new();
    from.read_line(&mut line)
        .context("reading control-plane's output")?;
    Ok(line.trim_end().to_string())
}

/// The repository the test binaries were built from.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
