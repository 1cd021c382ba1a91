//! A real Kubernetes control plane for the tests, the demo and the benchmarks: etcd,
//! kube-apiserver (TLS, `--authorization-mode=Node,RBAC`, NodeRestriction, service-account
//! issuer and keys, a client certificate for reaching kubelets), kube-controller-manager with
//! the workload controllers a user's cluster runs, and kube-scheduler, built from pinned Go
//! modules (see [`cache`]) and started privately on free loopback ports.
//!
//! Why the real server: every end-to-end claim rests on the API server's behaviour — watch
//! bookmarks and 410s, strategic merge, status-subresource rules, Event validation, RBAC,
//! admission, protobuf for kubectl — and only the real one has all of it.
//!
//! Nodes come in two kinds. Most tests bind pods to node names that have no Node object and
//! play the kubelet's part themselves; `testkit::kubelet` adds real kubelets, which register
//! their Node, run the pods the scheduler places and answer `kubectl exec`. The pod GC stays
//! off, as it would delete the first kind's pods (bound to nodes that do not exist) after ~40 s.
//!
//! Two ways to hold one:
//! - [`ControlPlane::start`] runs the three daemons as children of this process, stopped on
//!   drop (the `control-plane` command, and tests that restart the API server);
//! - [`shared`] gives every test of a test binary the same one: the `control-plane` command as
//!   a child that stops everything once its stdin closes, which happens when the test process
//!   ends, however it ends.

mod admin;
mod cache;
mod pki;
mod shared;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::host::process::Daemon;

pub use admin::Admin;
pub use cache::{CACHE_ROOT, bin_dir, binary, etcd_version, kubernetes_version};
pub use pki::client_certificate;
pub use shared::{READY_PREFIX, Shared, shared};

/// How long the API server gets to answer `/readyz` after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The controllers kube-controller-manager runs: service accounts and their tokens, namespace
/// deletion, owner references, the `kube-root-ca.crt` ConfigMap projected tokens need, the
/// workload controllers (Deployment, ReplicaSet, DaemonSet), and node lifecycle, which lifts
/// the `not-ready` taint a kubelet registers its Node with (without it the scheduler places
/// nothing). Not the pod GC (see the module doc).
const CONTROLLERS: &str = "serviceaccount-token,serviceaccount,namespace,garbagecollector,\
                           root-ca-cert-publisher,deployment,replicaset,daemonset,nodelifecycle";

/// A running etcd + kube-apiserver + kube-controller-manager + kube-scheduler; stopped on drop.
pub struct ControlPlane {
    dir: PathBuf,
    server: String,
    kubeconfig: PathBuf,
    pki: pki::Pki,
    apiserver_port: u16,
    etcd_url: String,
    // Dropped in reverse start order: scheduler, controller manager, API server, etcd.
    scheduler: Option<Daemon>,
    controller_manager: Option<Daemon>,
    apiserver: Option<Daemon>,
    etcd: Option<Daemon>,
}

impl ControlPlane {
    /// Starts the three daemons with their data, keys and logs under `dir` and returns once
    /// the API server is ready and the controller manager has created the `default` service
    /// account (so pods can be created). Writes `<dir>/admin.kubeconfig`.
    pub async fn start(dir: &Path) -> Result<ControlPlane> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let pki = pki::Pki::create(&dir.join("pki"))?;
        let etcd_port = crate::free_port()?;
        let peer_port = crate::free_port()?;
        let apiserver_port = crate::free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let server = format!("https://127.0.0.1:{apiserver_port}");
        let kubeconfig = dir.join("admin.kubeconfig");
        pki.write_admin_kubeconfig(&kubeconfig, &server)?;

        let mut etcd = Command::new(binary("etcd"));
        let peer = format!("http://127.0.0.1:{peer_port}");
        etcd.arg("--name=podagent-test")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=podagent-test={peer}"))
            // A test cluster's data dies with it; fsync per write would only slow the tests.
            .arg("--unsafe-no-fsync")
            // As kubeadm runs it: without progress notifications the API server's watch cache
            // of a quiet resource never learns the current revision, and sends no bookmarks.
            .arg("--watch-progress-notify-interval=5s")
            .arg("--log-level=warn");
        let etcd = Daemon::spawn("etcd", etcd, &dir.join("etcd.log"));

        let mut plane = ControlPlane {
            dir,
            server,
            kubeconfig,
            pki,
            apiserver_port,
            etcd_url,
            scheduler: None,
            controller_manager: None,
            apiserver: None,
            etcd: Some(etcd),
        };
        let started = Instant::now();
        plane.start_apiserver().await?;
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "API server ready"
        );
        plane.start_controller_manager().await?;
        plane.start_scheduler();
        Ok(plane)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// An admin (`system:masters`) kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory holding data, keys and the daemons' logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of the keys: the CA that signs a kubelet node's client certificate
    /// ([`client_certificate`]).
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// Stops and starts kube-apiserver on the same port and data: every watch and connection
    /// drops. etcd is compacted to its current revision in between, so a watch from any
    /// resourceVersion the old server handed out gets a real 410, whether the new server
    /// serves it from its watch cache or, while that cache is still filling, from etcd.
    /// Returns once the new server is ready.
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.stop_async().await;
        }
        self.compact_etcd().await?;
        self.start_apiserver().await
    }

    /// Compacts etcd's history past every revision the API server has seen (through etcd's JSON
    /// gateway). A watch from revision X starts at X + 1, which a compaction at X + 1 still
    /// keeps: so two writes outside the API server's keys (`/podagent-test/bump`) come first,
    /// and the compaction is at the revision of the second.
    async fn compact_etcd(&self) -> Result<()> {
        // base64("/podagent-test/bump") and base64("1").
        let bump = serde_json::json!({"key": "L3BvZGFnZW50LXRlc3QvYnVtcA==", "value": "MQ=="});
        self.etcd_call("put", bump.clone()).await?;
        let header = self.etcd_call("put", bump).await?;
        let revision = header["header"]["revision"]
            .as_str()
            .with_context(|| format!("etcd's put answer has no header.revision: {header}"))?
            .to_string();
        self.etcd_call(
            "compaction",
            serde_json::json!({"revision": revision, "physical": true}),
        )
        .await?;
        Ok(())
    }

    /// One POST to etcd's `/v3/kv/<call>`; its JSON answer.
    async fn etcd_call(&self, call: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        use http_body_util::{BodyExt, Full};
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<bytes::Bytes>>();
        let uri = format!("{}/v3/kv/{call}", self.etcd_url);
        let request = http::Request::post(&uri).body(Full::from(body.to_string()))?;
        let response = client
            .request(request)
            .await
            .with_context(|| format!("POST {uri}"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        if !status.is_success() {
            bail!("POST {uri} answered {status}: {text}");
        }
        serde_json::from_slice(&bytes).with_context(|| format!("POST {uri} answered {text:?}"))
    }

    async fn start_apiserver(&mut self) -> Result<()> {
        let pki = &self.pki;
        let mut command = Command::new(binary("kube-apiserver"));
        command
            .arg(format!("--etcd-servers={}", self.etcd_url))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            // The `kubernetes` Service's endpoint would be the loopback address, which the
            // reconciler refuses; nothing here reaches the server through that Service.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--secure-port={}", self.apiserver_port))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            .arg(format!("--token-auth-file={}", pki.token_file.display()))
            .arg("--authorization-mode=Node,RBAC")
            // What keeps a kubelet to its own Node and its pods, as on every real cluster.
            .arg("--enable-admission-plugins=NodeRestriction")
            // `kubectl exec` and `logs` reach a kubelet by the address it registered (no node
            // name resolves here), with a client certificate its webhook authorization allows.
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg(format!(
                "--kubelet-client-certificate={}",
                pki.kubelet_client_cert.display()
            ))
            .arg(format!(
                "--kubelet-client-key={}",
                pki.kubelet_client_key.display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_public.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_private.display()
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=true")
            .arg(format!(
                "--cert-dir={}",
                self.dir.join("apiserver").display()
            ))
            .arg("--profiling=false")
            .arg("--v=1");
        let mut daemon = Daemon::spawn(
            "kube-apiserver",
            command,
            &self.dir.join("kube-apiserver.log"),
        );
        let client = self.client().await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let request = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(request).await {
                Ok(text) if text.trim() == "ok" => break,
                _ if Instant::now() > deadline => {
                    bail!(
                        "kube-apiserver did not answer /readyz with ok within {}s; last log \
                         lines:\n{}",
                        READY_TIMEOUT.as_secs(),
                        daemon.log_tail()
                    )
                }
                _ => {
                    daemon.assert_running();
                    if let Some(etcd) = self.etcd.as_mut() {
                        etcd.assert_running();
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        self.apiserver = Some(daemon);
        Ok(())
    }

    async fn start_controller_manager(&mut self) -> Result<()> {
        let mut command = Command::new(binary("kube-controller-manager"));
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--controllers={CONTROLLERS}"))
            .arg("--use-service-account-credentials")
            .arg(format!("--root-ca-file={}", self.pki.ca_cert.display()))
            .arg(format!(
                "--service-account-private-key-file={}",
                self.pki.sa_private.display()
            ))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg("--v=1");
        let mut daemon = Daemon::spawn(
            "kube-controller-manager",
            command,
            &self.dir.join("kube-controller-manager.log"),
        );
        let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
            kube::Api::namespaced(self.client().await?, "default");
        let deadline = Instant::now() + READY_TIMEOUT;
        while accounts.get_opt("default").await?.is_none() {
            daemon.assert_running();
            if Instant::now() > deadline {
                bail!(
                    "kube-controller-manager created no `default` service account within {}s; \
                     last log lines:\n{}",
                    READY_TIMEOUT.as_secs(),
                    daemon.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.controller_manager = Some(daemon);
        Ok(())
    }

    /// Starts kube-scheduler. Nothing to wait for: pods the tests bind to a node themselves
    /// never need it, and a pod left to it is scheduled once it (and a Ready node) is up.
    fn start_scheduler(&mut self) {
        let mut command = Command::new(binary("kube-scheduler"));
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg("--v=1");
        self.scheduler = Some(Daemon::spawn(
            "kube-scheduler",
            command,
            &self.dir.join("kube-scheduler.log"),
        ));
    }

    /// A kube client with the admin's credentials.
    pub async fn client(&self) -> Result<kube::Client> {
        admin_client(&self.kubeconfig).await
    }

    /// Stops the daemons (also done on drop), scheduler first.
    pub async fn stop(mut self) {
        for daemon in [
            self.scheduler.take(),
            self.controller_manager.take(),
            self.apiserver.take(),
            self.etcd.take(),
        ]
        .into_iter()
        .flatten()
        {
            let mut daemon = daemon;
            daemon.stop_async().await;
        }
    }
}

/// A kube client for the kubeconfig at `path`.
pub async fn admin_client(path: &Path) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("loading {}", path.display()))?;
    Ok(kube::Client::try_from(config)?)
}
