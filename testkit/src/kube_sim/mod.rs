//! kube-sim: a test Kubernetes API server that kube-rs and kubectl cannot tell from a real one for
//! the calls podagent, its scripts and its tests make.
//!
//! No kube-apiserver can be installed on a test host, and a mocked client would test nothing of
//! the real watch/list/patch path. So this is a real HTTP server speaking the real wire protocol:
//! discovery, list/watch with one global resourceVersion, bookmarks, 410 Gone, field and label
//! selectors, PUT/PATCH with optimistic concurrency, subresource `status`, both event APIs on one
//! storage, namespaces, service accounts and token secrets, custom resources from CRDs, bearer
//! tokens, HTTP and HTTPS, and fault injection ([`Faults`]).
//!
//! Library API (the shape other tests rely on):
//! - [`KubeSim::start`] with [`Options`]; [`KubeSim::url`], [`KubeSim::kubeconfig_path`];
//! - [`KubeSim::faults`]: `close_all_watches`, `force_gone_on_next_watch`, `fail_next(n, code)`,
//!   `set_latency`, `stall_watches`, `restart_empty_watch_cache`, `clear`;
//! - direct store access for seeding without HTTP: [`KubeSim::create`], [`KubeSim::get`],
//!   [`KubeSim::list`], [`KubeSim::patch_merge`], [`KubeSim::delete`]. These write like a
//!   cluster whose kubelet and controllers already ran: the object is stored as given, status
//!   included, and a missing namespace is created. They return [`Error`] (convertible into
//!   `anyhow::Error` with `?`), so a test can match on the API reason.
//! - [`KubeSim::request_count`], [`KubeSim::shutdown`] (also done on drop).
//!
//! Known differences from a real server, none of which the project's clients depend on: no
//! protobuf, no managedFields or field ownership (server-side apply merges), no schema
//! validation or pruning of custom resources, OpenAPI documents only as far as kubectl's
//! validation check needs them (see `openapi`), pods are deleted at once
//! (no grace period; finalizers are honoured), aggregated discovery is not offered (clients fall
//! back to per-group discovery).

mod cluster;
mod controllers;
mod faults;
mod http;
mod list;
mod objects;
mod openapi;
mod patch;
mod resources;
mod select;
mod server;
mod status;
mod store;
mod table;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use faults::Faults;
pub use status::ApiError;

use cluster::{Cluster, Mode, Target};

/// What failed while starting kube-sim or in a direct store call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the API server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("creating the serving certificate: {reason}")]
    Certificate { reason: String },
    #[error("writing the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating a temporary directory for the kubeconfig: {0}")]
    TempDir(std::io::Error),
    #[error("{operation} {kind} {name}: {source}")]
    Rejected {
        operation: &'static str,
        kind: String,
        name: String,
        source: Box<ApiError>,
    },
}

/// How to start kube-sim.
#[derive(Debug, Clone)]
pub struct Options {
    /// Port 0 picks a free port.
    pub listen: SocketAddr,
    pub tls: bool,
    /// When set, every request must carry `Authorization: Bearer <token>` (or a token issued
    /// into a service-account token secret); otherwise requests are not authenticated.
    pub token: Option<String>,
    /// Where to write the kubeconfig; default: a file in a temp dir owned by the KubeSim.
    pub kubeconfig: Option<PathBuf>,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// How many changes the watch history keeps; older resourceVersions get 410 Gone.
    pub history: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            token: None,
            kubeconfig: None,
            bookmark_interval: Duration::from_secs(10),
            history: 10_000,
        }
    }
}

/// A running kube-sim; stops on [`KubeSim::shutdown`] or drop.
pub struct KubeSim {
    cluster: Arc<Cluster>,
    url: String,
    kubeconfig: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    stop: tokio::sync::watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

fn rejected(operation: &'static str, kind: &str, name: &str) -> impl FnOnce(ApiError) -> Error {
    let (kind, name) = (kind.to_string(), name.to_string());
    move |source| Error::Rejected {
        operation,
        kind,
        name,
        source: Box::new(source),
    }
}

impl KubeSim {
    /// Binds, writes the kubeconfig and serves on the current tokio runtime.
    pub async fn start(opts: Options) -> Result<KubeSim, Error> {
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: opts.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| Error::Bind {
            addr: opts.listen,
            source,
        })?;
        let host = if local.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], local.port()))
        } else {
            local
        };
        // The CA also goes into service-account token secrets, so it exists without TLS too.
        let tls = server::make_tls()?;
        let url = format!("{}://{host}", if opts.tls { "https" } else { "http" });
        let (tempdir, kubeconfig) = match &opts.kubeconfig {
            Some(path) => (None, path.clone()),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("kube-sim-")
                    .tempdir()
                    .map_err(Error::TempDir)?;
                let path = dir.path().join("kubeconfig");
                (Some(dir), path)
            }
        };
        server::write_kubeconfig(
            &kubeconfig,
            &url,
            opts.tls.then_some(tls.ca_pem.as_str()),
            opts.token.as_deref(),
        )?;
        let store = Arc::new(store::Store::new(opts.history));
        let cluster = Arc::new(Cluster::new(
            store,
            tls.ca_pem.clone(),
            opts.token.clone(),
            opts.bookmark_interval,
        ));
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let namespace = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let rt =
                cluster
                    .kind("v1", "Namespace")
                    .map_err(rejected("create", "Namespace", ns))?;
            cluster
                .create(&rt, None, namespace, Mode::Direct)
                .map_err(rejected("create", "Namespace", ns))?;
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let acceptor = opts.tls.then_some(tls.acceptor);
        let router = http::router(cluster.clone());
        let server = tokio::spawn(server::serve(listener, acceptor, router, stopped));
        tracing::info!(%url, kubeconfig = %kubeconfig.display(), "kube-sim serving");
        Ok(KubeSim {
            cluster,
            url,
            kubeconfig,
            _tempdir: tempdir,
            stop,
            server: Some(server),
        })
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn faults(&self) -> &Faults {
        &self.cluster.faults
    }

    /// Stores any registered kind (by apiVersion/kind) as given, status included.
    pub fn create(&self, obj: Value) -> Result<Value, Error> {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let (api_version, kind, name) = (
            text(&obj["apiVersion"]),
            text(&obj["kind"]),
            text(&obj["metadata"]["name"]),
        );
        let rt = self
            .cluster
            .kind(&api_version, &kind)
            .map_err(rejected("create", &kind, &name))?;
        self.cluster
            .create(&rt, None, obj, Mode::Direct)
            .map_err(rejected("create", &kind, &name))
    }

    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let rt = self.cluster.kind(api_version, kind).ok()?;
        self.cluster.get(&rt, namespace, name).ok()
    }

    /// Objects of one kind, in one namespace or (None) all, as a list item would show them.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        match self.cluster.kind(api_version, kind) {
            Ok(rt) => self.cluster.list_objects(&rt, namespace),
            Err(_) => Vec::new(),
        }
    }

    /// A JSON merge patch on the whole object (status included, no subresource rules).
    pub fn patch_merge(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value, Error> {
        let rt = self
            .cluster
            .kind(api_version, kind)
            .map_err(rejected("patch", kind, name))?;
        self.cluster
            .update(
                &rt,
                namespace,
                name,
                Target::Main,
                Mode::Direct,
                |current| patch::apply(patch::PatchType::Merge, &current, &patch),
            )
            .map_err(rejected("patch", kind, name))
    }

    /// Deletes like an API DELETE (finalizers are honoured).
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), Error> {
        let rt = self
            .cluster
            .kind(api_version, kind)
            .map_err(rejected("delete", kind, name))?;
        self.cluster
            .delete(&rt, namespace, name, &Value::Null)
            .map(drop)
            .map_err(rejected("delete", kind, name))
    }

    /// HTTP requests received so far (every path, including rejected ones).
    pub fn request_count(&self) -> u64 {
        self.cluster.requests.load(Ordering::SeqCst)
    }

    /// Stops serving and closes every connection.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
