//! The container runtime: from a pod's UID to its sandbox id and network namespace path.
//!
//! Hot-plugging needs two facts the Kubernetes API does not carry: the id of the pod sandbox
//! (`CNI_CONTAINERID`, `K8S_POD_INFRA_CONTAINER_ID`) and the path of its network namespace
//! (`CNI_NETNS`). Only the node's runtime knows them (DESIGN.md §5):
//! - CRI v1 runtimes (containerd, CRI-O, and cri-dockerd in front of Docker) through
//!   `ListPodSandbox` + verbose `PodSandboxStatus` ([`cri`]);
//! - the Docker Engine API for nodes that run pods through dockershim-style sandbox containers
//!   ([`docker`]).
//!
//! Every call carries a deadline, errors say whether to retry later (no sandbox yet, not ready,
//! unreachable, deadline) or whether the runtime answered something podagent cannot use, and
//! the namespace path is used exactly as the runtime reports it.
//!
//! The [`Runtime`] trait returns boxed futures so the reconciler holds it as `Arc<dyn Runtime>`,
//! the same way it holds every other edge (CNI plugins, netns, feedback): one allocation per
//! call costs nothing at podagent's call rate, and one style of edge trait keeps the
//! controller free of type parameters. The daemon picks one runtime at start-up, an
//! [`AnyRuntime`] from [`connect`]; unit tests of the reconciler plug in a fake.

pub(crate) mod cri;
pub(crate) mod docker;
pub(crate) mod verbose;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::error_chain::render;

pub use cri::CriRuntime;
pub(crate) use docker::DockerRuntime;
pub(crate) use verbose::VerboseInfoError;

use crate::pod::PodRef;

/// Label every kubelet-created sandbox carries (CRI runtimes and cri-dockerd alike).
pub(crate) const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";

/// A ready pod sandbox. Only ready sandboxes are returned: every other state is an error that
/// says why, so a value of this type always has a live network namespace behind `netns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    /// The namespace path, verbatim from the runtime (`/var/run/netns/cni-…`) or
    /// `/proc/<pid>/ns/net` of the sandbox's process.
    pub netns: PathBuf,
}

/// What answered at the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVersion {
    /// The runtime recognised from its name (`containerd`, `cri-o`, `docker`); for a CRI
    /// runtime with another name, the configured kind.
    pub kind: RuntimeKind,
    pub name: String,
    pub version: String,
    /// The runtime's API version (CRI `runtime_api_version`, Docker `ApiVersion`).
    pub api_version: String,
}

/// The configured runtime, `auto` probing the default sockets in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeKind {
    #[default]
    Auto,
    Containerd,
    Crio,
    Docker,
}

impl RuntimeKind {
    /// The kind a CRI runtime name stands for, if podagent knows it.
    fn from_runtime_name(name: &str) -> Option<RuntimeKind> {
        match name {
            "containerd" => Some(RuntimeKind::Containerd),
            "cri-o" => Some(RuntimeKind::Crio),
            // cri-dockerd reports the engine underneath.
            "docker" | "cri-dockerd" => Some(RuntimeKind::Docker),
            _ => None,
        }
    }

    /// The setting's value (`auto`, `containerd`, …).
    fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Auto => "auto",
            RuntimeKind::Containerd => "containerd",
            RuntimeKind::Crio => "crio",
            RuntimeKind::Docker => "docker",
        }
    }

    /// Who an error is about: with `auto` and an explicit socket nobody knows which runtime
    /// was meant, and "auto: no socket at …" would read as a runtime named auto.
    fn runtime(self) -> &'static str {
        match self {
            RuntimeKind::Auto => "container runtime",
            kind => kind.as_str(),
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to reach the runtime: the configuration's `runtime.*` keys (`Default` is empty, not
/// usable: its timeout is zero).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub kind: RuntimeKind,
    /// A socket path, bare or as `unix:///path`; `None` uses the kind's default sockets.
    pub endpoint: Option<PathBuf>,
    /// Deadline of every single runtime call.
    pub timeout: Duration,
}

pub(crate) const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
pub(crate) const CRIO_SOCKET: &str = "/var/run/crio/crio.sock";
pub(crate) const CRI_DOCKERD_SOCKET: &str = "/var/run/cri-dockerd.sock";
pub(crate) const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Why a runtime question got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The pod has no sandbox (yet, or any more): retry when the pod changes.
    #[error("pod {pod} has no sandbox")]
    NoSandbox { pod: String },
    /// The newest sandbox exists but is not ready (stopped, or still being set up): retry later.
    #[error("sandbox {sandbox_id} of pod {pod} is not ready: {reason}")]
    NotReady {
        pod: String,
        sandbox_id: String,
        reason: String,
    },
    /// The socket file does not exist: the runtime is not installed, not started yet, or
    /// listens elsewhere. Retry later.
    #[error("{}: no socket at {}", kind.runtime(), endpoint.display())]
    NoSocket {
        kind: RuntimeKind,
        endpoint: PathBuf,
    },
    /// The socket file exists but nothing accepts on it: the runtime stopped or is
    /// restarting. Retry later.
    #[error("{}: nothing listening on {}", kind.runtime(), endpoint.display())]
    NotListening {
        kind: RuntimeKind,
        endpoint: PathBuf,
    },
    /// The connection failed some other way (reset, permission denied): retry later.
    #[error("container runtime at {} is unreachable ({call}): {reason}", endpoint.display())]
    Unreachable {
        endpoint: PathBuf,
        call: &'static str,
        reason: String,
    },
    #[error("{call} on container runtime at {} exceeded its {timeout:?} deadline", endpoint.display())]
    DeadlineExceeded {
        endpoint: PathBuf,
        call: &'static str,
        timeout: Duration,
    },
    /// The runtime answered, but not something podagent can use.
    #[error("unexpected answer to {call} from container runtime at {}: {what}", endpoint.display())]
    UnexpectedResponse {
        endpoint: PathBuf,
        call: &'static str,
        what: String,
    },
    #[error("cannot find the network namespace of sandbox {sandbox_id} of pod {pod} in the verbose status from {}", endpoint.display())]
    SandboxInfo {
        endpoint: PathBuf,
        pod: String,
        sandbox_id: String,
        #[source]
        source: VerboseInfoError,
    },
    #[error("invalid runtime endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("no container runtime answered a version call (kind {kind}); tried: {tried}")]
    NoneAnswered { kind: RuntimeKind, tried: String },
}

/// A pod sandbox runtime.
pub trait Runtime: Send + Sync {
    /// The ready sandbox of `pod`, with its network namespace path.
    fn sandbox<'a>(&'a self, pod: &'a PodRef) -> BoxFuture<'a, Result<Sandbox, RuntimeError>>;
    /// What the runtime says it is; also the liveness probe used by `auto` selection.
    fn version(&self) -> BoxFuture<'_, Result<RuntimeVersion, RuntimeError>>;
}

/// The runtime the daemon talks to, chosen once by [`connect`].
#[derive(Debug, Clone)]
pub enum AnyRuntime {
    Cri(CriRuntime),
    Docker(DockerRuntime),
}

impl AnyRuntime {
    /// The socket this runtime is reached through.
    pub fn endpoint(&self) -> &Path {
        match self {
            AnyRuntime::Cri(runtime) => runtime.endpoint(),
            AnyRuntime::Docker(runtime) => runtime.endpoint(),
        }
    }
}

impl Runtime for AnyRuntime {
    fn sandbox<'a>(&'a self, pod: &'a PodRef) -> BoxFuture<'a, Result<Sandbox, RuntimeError>> {
        match self {
            AnyRuntime::Cri(runtime) => runtime.sandbox(pod),
            AnyRuntime::Docker(runtime) => runtime.sandbox(pod),
        }
    }

    fn version(&self) -> BoxFuture<'_, Result<RuntimeVersion, RuntimeError>> {
        match self {
            AnyRuntime::Cri(runtime) => runtime.version(),
            AnyRuntime::Docker(runtime) => runtime.version(),
        }
    }
}

/// The wire protocol spoken at a candidate socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Cri,
    DockerEngine,
}

/// One socket [`connect`] may try.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    kind: RuntimeKind,
    protocol: Protocol,
    path: PathBuf,
}

/// Opens the configured runtime: the first candidate socket whose version call answers
/// (DESIGN.md §5: containerd, CRI-O, then Docker through cri-dockerd or the Engine API).
///
/// Must run inside a tokio runtime: the CRI channel's connection task is spawned on it.
pub async fn connect(settings: &Settings) -> Result<AnyRuntime, RuntimeError> {
    let mut tried = Vec::new();
    // Sockets that are missing or that nobody accepts on: every protocol fails there alike, so
    // the second protocol on the same socket is not tried and the cause is said once.
    let mut unusable: Vec<PathBuf> = Vec::new();
    for candidate in candidates(settings)? {
        if unusable.contains(&candidate.path) {
            continue;
        }
        let runtime = match candidate.protocol {
            Protocol::Cri => Ok(AnyRuntime::Cri(CriRuntime::new(
                candidate.kind,
                candidate.path.clone(),
                settings.timeout,
            ))),
            Protocol::DockerEngine => {
                DockerRuntime::new(candidate.path.clone(), settings.timeout).map(AnyRuntime::Docker)
            }
        };
        let answer = match runtime {
            Ok(runtime) => runtime.version().await.map(|version| (runtime, version)),
            Err(error) => Err(error),
        };
        match answer {
            Ok((runtime, version)) => {
                tracing::info!(
                    configured = %settings.kind,
                    runtime = %version.kind,
                    name = %version.name,
                    version = %version.version,
                    api_version = %version.api_version,
                    endpoint = %candidate.path.display(),
                    "container runtime selected"
                );
                return Ok(runtime);
            }
            Err(error) => {
                if matches!(
                    error,
                    RuntimeError::NoSocket { .. } | RuntimeError::NotListening { .. }
                ) {
                    unusable.push(candidate.path.clone());
                }
                let error = render(&error);
                tracing::debug!(endpoint = %candidate.path.display(), %error, "runtime candidate did not answer");
                tried.push(error);
            }
        }
    }
    Err(RuntimeError::NoneAnswered {
        kind: settings.kind,
        tried: tried.join("; "),
    })
}

/// The sockets to try, in order, for the configured kind and endpoint.
fn candidates(settings: &Settings) -> Result<Vec<Candidate>, RuntimeError> {
    let candidate = |kind, protocol, path: PathBuf| Candidate {
        kind,
        protocol,
        path,
    };
    if let Some(endpoint) = &settings.endpoint {
        let path = socket_path(endpoint)?;
        // An explicit Docker endpoint may be the Engine socket or cri-dockerd's CRI socket:
        // the Engine API is tried first since that is what `docker` usually means.
        let order: &[Protocol] = match settings.kind {
            RuntimeKind::Containerd | RuntimeKind::Crio => &[Protocol::Cri],
            RuntimeKind::Docker => &[Protocol::DockerEngine, Protocol::Cri],
            RuntimeKind::Auto => &[Protocol::Cri, Protocol::DockerEngine],
        };
        return Ok(order
            .iter()
            .map(|protocol| candidate(settings.kind, *protocol, path.clone()))
            .collect());
    }
    let containerd = candidate(
        RuntimeKind::Containerd,
        Protocol::Cri,
        CONTAINERD_SOCKET.into(),
    );
    let crio = candidate(RuntimeKind::Crio, Protocol::Cri, CRIO_SOCKET.into());
    let cri_dockerd = candidate(
        RuntimeKind::Docker,
        Protocol::Cri,
        CRI_DOCKERD_SOCKET.into(),
    );
    let docker = candidate(
        RuntimeKind::Docker,
        Protocol::DockerEngine,
        DOCKER_SOCKET.into(),
    );
    Ok(match settings.kind {
        RuntimeKind::Containerd => vec![containerd],
        RuntimeKind::Crio => vec![crio],
        RuntimeKind::Docker => vec![cri_dockerd, docker],
        RuntimeKind::Auto => vec![containerd, crio, cri_dockerd, docker],
    })
}

/// The socket path of an endpoint given as `unix:///path` or as a bare absolute path.
pub(crate) fn socket_path(endpoint: &Path) -> Result<PathBuf, RuntimeError> {
    let invalid = |reason: &str| RuntimeError::InvalidEndpoint {
        endpoint: endpoint.display().to_string(),
        reason: reason.to_owned(),
    };
    let text = endpoint
        .to_str()
        .ok_or_else(|| invalid("not valid UTF-8"))?;
    let path = match text.split_once("://") {
        Some(("unix", path)) => path,
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "scheme {scheme:?} is not supported, only unix sockets are"
            )));
        }
        None => text,
    };
    if !path.starts_with('/') {
        return Err(invalid("the socket path must be absolute"));
    }
    Ok(PathBuf::from(path))
}

/// Classifies a failed connection from the io error somewhere in its chain: a missing socket
/// and a socket nobody accepts on are the usual cases on a node, and the io error's own text
/// ("No such file or directory") does not say which file or which runtime. `reason` is what
/// the error says otherwise.
fn unreachable(
    kind: RuntimeKind,
    endpoint: PathBuf,
    call: &'static str,
    error: &(dyn std::error::Error + 'static),
    reason: String,
) -> RuntimeError {
    let io_kind = std::iter::successors(Some(error), |&error| error.source())
        .find_map(|error| error.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    match io_kind {
        Some(std::io::ErrorKind::NotFound) => RuntimeError::NoSocket { kind, endpoint },
        Some(std::io::ErrorKind::ConnectionRefused) => {
            RuntimeError::NotListening { kind, endpoint }
        }
        _ => RuntimeError::Unreachable {
            endpoint,
            call,
            reason,
        },
    }
}

/// Runs `request` under `timeout`; when it runs out, the error names the endpoint and the call.
/// Every runtime call goes through here, so none can hang a reconcile.
async fn with_deadline<T>(
    endpoint: &Path,
    call: &'static str,
    timeout: Duration,
    request: impl Future<Output = T>,
) -> Result<T, RuntimeError> {
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| RuntimeError::DeadlineExceeded {
            endpoint: endpoint.to_owned(),
            call,
            timeout,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(kind: RuntimeKind, endpoint: Option<&str>) -> Settings {
        Settings {
            kind,
            endpoint: endpoint.map(PathBuf::from),
            timeout: Duration::from_secs(5),
        }
    }

    fn paths(candidates: &[Candidate]) -> Vec<(&str, Protocol)> {
        candidates
            .iter()
            .map(|c| (c.path.to_str().unwrap_or_default(), c.protocol))
            .collect()
    }

    #[test]
    fn auto_probes_containerd_then_crio_then_docker() {
        let list = candidates(&settings(RuntimeKind::Auto, None)).expect("defaults are valid");
        assert_eq!(
            paths(&list),
            vec![
                (CONTAINERD_SOCKET, Protocol::Cri),
                (CRIO_SOCKET, Protocol::Cri),
                (CRI_DOCKERD_SOCKET, Protocol::Cri),
                (DOCKER_SOCKET, Protocol::DockerEngine),
            ]
        );
    }

    #[test]
    fn docker_prefers_cri_dockerd_socket_over_engine_socket() {
        let list = candidates(&settings(RuntimeKind::Docker, None)).expect("defaults are valid");
        assert_eq!(
            paths(&list),
            vec![
                (CRI_DOCKERD_SOCKET, Protocol::Cri),
                (DOCKER_SOCKET, Protocol::DockerEngine)
            ]
        );
    }

    #[test]
    fn explicit_endpoint_replaces_the_defaults() {
        let list = candidates(&settings(
            RuntimeKind::Crio,
            Some("unix:///run/custom/crio.sock"),
        ))
        .expect("valid endpoint");
        assert_eq!(paths(&list), vec![("/run/custom/crio.sock", Protocol::Cri)]);
        assert_eq!(list[0].kind, RuntimeKind::Crio);
    }

    #[test]
    fn endpoint_accepts_unix_url_and_bare_path() {
        assert_eq!(
            socket_path(Path::new("unix:///run/containerd/containerd.sock")).ok(),
            Some(PathBuf::from("/run/containerd/containerd.sock"))
        );
        assert_eq!(
            socket_path(Path::new("/var/run/crio/crio.sock")).ok(),
            Some(PathBuf::from("/var/run/crio/crio.sock"))
        );
    }

    #[test]
    fn endpoint_rejects_tcp_and_relative_paths() {
        assert!(matches!(
            socket_path(Path::new("tcp://127.0.0.1:2375")),
            Err(RuntimeError::InvalidEndpoint { .. })
        ));
        assert!(matches!(
            socket_path(Path::new("run/crio.sock")),
            Err(RuntimeError::InvalidEndpoint { .. })
        ));
    }

    #[test]
    fn runtime_names_map_to_kinds() {
        assert_eq!(
            RuntimeKind::from_runtime_name("cri-o"),
            Some(RuntimeKind::Crio)
        );
        assert_eq!(
            RuntimeKind::from_runtime_name("containerd"),
            Some(RuntimeKind::Containerd)
        );
        assert_eq!(RuntimeKind::from_runtime_name("kata"), None);
    }
}
