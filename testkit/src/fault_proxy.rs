//! A fault-injecting HTTP proxy between podagent and a real kube-apiserver.
//!
//! A real API server does not produce latency, stalls, cut connections or errors on demand, yet
//! podagent must survive all of them. [`FaultProxy`] listens on plain HTTP on loopback and
//! forwards every request to the upstream HTTPS API server unchanged (method, path and query,
//! headers including `Authorization`, body), streaming each response back frame by frame so
//! long-lived watch streams reach the client as they come. Tests steer it through [`Faults`].
//!
//! Why HTTP-level and not TCP-level: the faults that matter are per request and per response
//! frame — fail the next request with a Kubernetes `Status`, hold a watch's next event, delay
//! each new request — and a TCP relay sees only an encrypted byte stream with no request
//! boundaries. Terminating HTTP here (plain to the client, TLS to the server, verified against
//! the cluster CA) makes those faults exact. Only HTTP/1.1 is served; upgrades (exec,
//! port-forward) are not supported.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;
type Upstream = Client<HttpsConnector<HttpConnector>, Incoming>;

/// Headers that describe one hop, not the message: never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A running proxy; it stops serving (every connection closes) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Faults,
    requests: Requests,
    task: JoinHandle<()>,
}

/// The faults a [`FaultProxy`] applies, changed at any time from the test; clones share them.
#[derive(Clone)]
pub struct Faults {
    inner: Arc<FaultState>,
}

struct FaultState {
    latency: Mutex<Duration>,
    /// Pending injected failures: how many are left, their status code, and the path prefix a
    /// request must have to get one (empty: every request).
    failures: Mutex<(u32, u16, String)>,
    stall: watch::Sender<bool>,
    /// Bumped by every cut; each connection closes when it changes.
    cuts: watch::Sender<u64>,
    /// The next request with this method and path prefix is held until released.
    hold: Mutex<Option<(String, String)>>,
    /// How many requests have been held so far.
    held: watch::Sender<u32>,
    /// Bumped by every release; held requests go on when it changes.
    releases: watch::Sender<u64>,
    /// What upstream answered held requests, once forwarded: (request line, status).
    held_answers: Mutex<Vec<(String, u16)>>,
}

struct Shared {
    upstream: String,
    client: Upstream,
    faults: Faults,
    requests: Requests,
}

/// Every request the proxy received, as `METHOD path?query`, in arrival order.
type Requests = Arc<Mutex<Vec<String>>>;

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 in front of `upstream`.
    ///
    /// upstream: e.g. "https://127.0.0.1:6443"; ca_pem: the PEM of the CA that signed the
    /// upstream's serving cert (the only root the proxy trusts).
    pub async fn start(upstream: &str, ca_pem: &str) -> Result<FaultProxy> {
        let upstream = upstream.trim_end_matches('/').to_string();
        let uri: Uri = upstream
            .parse()
            .with_context(|| format!("upstream {upstream:?}"))?;
        if uri.scheme_str() != Some("https") || uri.authority().is_none() {
            bail!("upstream {upstream:?} is not an https://host:port URL");
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.context("parsing the CA PEM")?)?;
        }
        if roots.is_empty() {
            bail!("the CA PEM holds no certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fault proxy")?;
        let faults = Faults {
            inner: Arc::new(FaultState {
                latency: Mutex::new(Duration::ZERO),
                failures: Mutex::new((0, 0, String::new())),
                stall: watch::Sender::new(false),
                cuts: watch::Sender::new(0),
                hold: Mutex::new(None),
                held: watch::Sender::new(0),
                releases: watch::Sender::new(0),
                held_answers: Mutex::new(Vec::new()),
            }),
        };
        let requests = Requests::default();
        let shared = Arc::new(Shared {
            upstream,
            client: Client::builder(TokioExecutor::new()).build(connector),
            faults: faults.clone(),
            requests: requests.clone(),
        });
        Ok(FaultProxy {
            addr: listener.local_addr()?,
            faults,
            requests,
            task: tokio::spawn(serve(listener, shared)),
        })
    }

    /// The proxy's URL: `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The handle that sets this proxy's faults (clone it to keep it past the proxy).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Writes a kubeconfig at `path` whose server is this proxy, with the user (token) copied
    /// from the kubeconfig at `from` (a YAML kubeconfig with one user carrying `token:`); no CA
    /// (plain http).
    pub fn write_kubeconfig(&self, from: &Path, path: &Path) -> Result<()> {
        let text =
            std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
        let source: serde_json::Value =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", from.display()))?;
        let user = &source["users"][0];
        let (Some(name), Some(_token)) = (user["name"].as_str(), user["user"]["token"].as_str())
        else {
            bail!("{}: its first user has no name or no token", from.display());
        };
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fault-proxy", "cluster": {"server": self.url()}}],
            "users": [user],
            "contexts": [{"name": "fault-proxy", "context": {"cluster": "fault-proxy", "user": name}}],
            "current-context": "fault-proxy",
        });
        std::fs::write(path, serde_yaml::to_string(&kubeconfig)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Every request received so far (failed, held or forwarded), as `METHOD path?query`
    /// in arrival order: what a client asked of the API server, seen from outside it.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.requests).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet: aborting it aborts them all.
        self.task.abort();
    }
}

impl Faults {
    /// Delays each new request by `d` before forwarding it (zero: no delay).
    pub fn set_latency(&self, d: Duration) {
        *lock(&self.inner.latency) = d;
    }

    /// While on, new requests wait before being forwarded and response bodies in flight
    /// (watches) deliver no further frames; turned off, everything resumes where it was.
    pub fn stall(&self, on: bool) {
        self.inner.stall.send_replace(on);
    }

    /// Closes every client connection open now (in-flight watches end abruptly); connections
    /// made later work.
    pub fn cut_connections(&self) {
        self.inner.cuts.send_modify(|n| *n += 1);
    }

    /// Answers the next `n` requests with `status` and a Kubernetes `Status` body, without
    /// reaching upstream.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.fail_next_under(n, status, "");
    }

    /// The same for the next `n` requests whose path starts with `prefix` only (say
    /// `/apis/kaloom.com/`); the others pass.
    pub fn fail_next_under(&self, n: u32, status: u16, prefix: &str) {
        *lock(&self.inner.failures) = (n, status, prefix.to_owned());
    }

    /// Holds the next `method` request whose path starts with `prefix` (say a status PATCH)
    /// until [`Faults::release`]: a test can change the object in between, so the held
    /// request reaches the real API server stale.
    pub fn hold_next(&self, method: &str, prefix: &str) {
        *lock(&self.inner.hold) = Some((method.to_owned(), prefix.to_owned()));
    }

    /// Waits until `n` requests have been held in all.
    pub async fn held(&self, n: u32) {
        let _ = self
            .inner
            .held
            .subscribe()
            .wait_for(|held| *held >= n)
            .await;
    }

    /// Lets every held request go on to upstream.
    pub fn release(&self) {
        self.inner.releases.send_modify(|n| *n += 1);
    }

    /// Upstream's answers to the held requests so far: (request line, status code).
    pub fn held_answers(&self) -> Vec<(String, u16)> {
        lock(&self.inner.held_answers).clone()
    }

    fn take_hold(&self, method: &str, path: &str) -> bool {
        let mut hold = lock(&self.inner.hold);
        let matches = hold
            .as_ref()
            .is_some_and(|(m, prefix)| m == method && path.starts_with(prefix.as_str()));
        if matches {
            *hold = None;
        }
        matches
    }

    /// No latency, no stall, no pending failures.
    pub fn clear(&self) {
        self.set_latency(Duration::ZERO);
        self.stall(false);
        self.fail_next(0, 0);
    }

    fn take_failure(&self, path: &str) -> Option<u16> {
        let mut failures = lock(&self.inner.failures);
        (failures.0 > 0 && path.starts_with(&failures.2)).then(|| {
            failures.0 -= 1;
            failures.1
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        // Subscribed at accept: only cuts from now on close this connection.
        let mut cuts = shared.faults.inner.cuts.subscribe();
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| handle(shared.clone(), req));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            // Dropping the connection closes the socket mid-response.
            tokio::select! {
                _ = connection => {}
                _ = cuts.changed() => {}
            }
        });
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let line = format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    lock(&shared.requests).push(line.clone());
    let faults = &shared.faults;
    let failure = faults.take_failure(req.uri().path());
    let latency = *lock(&faults.inner.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let _ = faults.inner.stall.subscribe().wait_for(|on| !on).await;
    if let Some(status) = failure {
        return Ok(status_response(status, "injected by the fault proxy"));
    }
    let held = faults.take_hold(req.method().as_str(), req.uri().path());
    if held {
        let mut releases = faults.inner.releases.subscribe();
        faults.inner.held.send_modify(|n| *n += 1);
        let _ = releases.changed().await;
    }
    let response = forward(&shared, req).await.unwrap_or_else(|err| {
        status_response(
            502,
            &format!("fault proxy: upstream request failed: {err:#}"),
        )
    });
    if held {
        lock(&faults.inner.held_answers).push((line, response.status().as_u16()));
    }
    Ok(response)
}

async fn forward(shared: &Shared, req: Request<Incoming>) -> Result<Response<Body>> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{}{path}", shared.upstream).parse()?;
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    // The client sets Host from the upstream URI.
    parts.headers.remove(header::HOST);
    let response = shared
        .client
        .request(Request::from_parts(parts, body))
        .await?;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // Each frame, once read from upstream, waits while stalled: held, never lost.
    let stall = shared.faults.inner.stall.subscribe();
    let frames = futures::stream::unfold((body, stall), |(mut body, mut stall)| async move {
        let frame = body.frame().await?;
        let _ = stall.wait_for(|on| !on).await;
        Some((frame, (body, stall)))
    });
    Ok(Response::from_parts(
        parts,
        StreamBody::new(frames).boxed_unsync(),
    ))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| name.trim().parse().ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP.map(HeaderName::from_static)) {
        headers.remove(name);
    }
}

/// A Kubernetes `Status` failure response.
fn status_response(code: u16, message: &str) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = match status.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    };
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": status.as_u16(),
    });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .expect("a valid status response")
}
