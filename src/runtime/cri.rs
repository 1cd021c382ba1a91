//! CRI v1 client for containerd, CRI-O and cri-dockerd over their unix socket.
//!
//! The CRI protobuf types and the tonic client come from the `k8s-cri` crate: it tracks the
//! upstream `cri-api` definitions and generates them at build time with `protoc` (Debian's
//! `protobuf-compiler`, a build prerequisite). That keeps third-party `.proto` files out of
//! this repository and makes a CRI API update a version bump instead of a re-vendoring.
//!
//! The channel connects lazily through a unix-socket connector: no I/O happens until the first
//! call, and when the runtime restarts the broken connection is dropped and the next call dials
//! the socket again. Each call is bounded by the configured deadline, so a hung runtime costs
//! one reconcile a few seconds, never the agent.

use std::error::Error as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ListPodSandboxRequest, PodSandbox, PodSandboxFilter, PodSandboxState, PodSandboxStateValue,
    PodSandboxStatusRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use futures::future::BoxFuture;

use super::{POD_UID_LABEL, Runtime, RuntimeError, RuntimeKind, RuntimeVersion, Sandbox, verbose};
use crate::error_chain::render_causes;
use crate::pod::PodRef;

/// The CRI API version podagent speaks (sent in `VersionRequest`).
const CRI_API_VERSION: &str = "v1";

/// A CRI runtime reached through a unix socket. Cloning shares the channel.
#[derive(Debug, Clone)]
pub struct CriRuntime {
    kind: RuntimeKind,
    endpoint: PathBuf,
    timeout: Duration,
    client: RuntimeServiceClient<Channel>,
}

impl CriRuntime {
    /// A client for the CRI socket at `endpoint`. Nothing is dialled yet; the first call
    /// connects. Must be called inside a tokio runtime (the channel spawns its worker).
    pub fn new(kind: RuntimeKind, endpoint: PathBuf, timeout: Duration) -> Self {
        let socket = endpoint.clone();
        // The URI is only a placeholder required by tonic; the connector ignores it.
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(timeout)
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }));
        CriRuntime {
            kind,
            endpoint,
            timeout,
            client: RuntimeServiceClient::new(channel),
        }
    }

    pub(crate) fn endpoint(&self) -> &Path {
        &self.endpoint
    }

    /// Runs one RPC under the deadline, leaving the gRPC status to the caller.
    async fn deadline<T>(
        &self,
        call: &'static str,
        rpc: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<Result<T, Status>, RuntimeError> {
        super::with_deadline(&self.endpoint, call, self.timeout, rpc)
            .await
            .map(|result| result.map(tonic::Response::into_inner))
    }

    /// Runs one RPC under the deadline and maps its failure.
    async fn call<T>(
        &self,
        call: &'static str,
        rpc: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, RuntimeError> {
        self.deadline(call, rpc)
            .await?
            .map_err(|status| self.status_error(call, status))
    }

    fn status_error(&self, call: &'static str, status: Status) -> RuntimeError {
        let endpoint = self.endpoint.clone();
        match status.code() {
            // tonic puts the interesting part (e.g. "No such file or directory") in the chain.
            Code::Unavailable => super::unreachable(
                self.kind,
                endpoint,
                call,
                &status,
                render_causes(status.message().to_owned(), status.source()),
            ),
            Code::DeadlineExceeded => RuntimeError::DeadlineExceeded {
                endpoint,
                call,
                timeout: self.timeout,
            },
            code => RuntimeError::UnexpectedResponse {
                endpoint,
                call,
                what: render_causes(format!("{code:?}: {}", status.message()), status.source()),
            },
        }
    }

    async fn list(
        &self,
        pod: &PodRef,
        state: Option<PodSandboxState>,
    ) -> Result<Vec<PodSandbox>, RuntimeError> {
        let request = ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                id: String::new(),
                state: state.map(|state| PodSandboxStateValue {
                    state: state.into(),
                }),
                label_selector: [(POD_UID_LABEL.to_owned(), pod.uid.clone())].into(),
            }),
        };
        let mut client = self.client.clone();
        let response = self
            .call("ListPodSandbox", client.list_pod_sandbox(request))
            .await?;
        Ok(response.items)
    }
}

impl Runtime for CriRuntime {
    fn sandbox<'a>(&'a self, pod: &'a PodRef) -> BoxFuture<'a, Result<Sandbox, RuntimeError>> {
        Box::pin(self.find_sandbox(pod))
    }

    fn version(&self) -> BoxFuture<'_, Result<RuntimeVersion, RuntimeError>> {
        Box::pin(self.ask_version())
    }
}

impl CriRuntime {
    #[tracing::instrument(name = "sandbox", skip(self), fields(pod = %pod, uid = %pod.uid, endpoint = %self.endpoint.display()))]
    async fn find_sandbox(&self, pod: &PodRef) -> Result<Sandbox, RuntimeError> {
        let ready = self.list(pod, Some(PodSandboxState::SandboxReady)).await?;
        let Some(chosen) = newest(&ready) else {
            // Only now ask for every state: it tells "not ready" (retry soon) from "none".
            let any = self.list(pod, None).await?;
            return Err(match newest(&any) {
                Some(sandbox) => RuntimeError::NotReady {
                    pod: pod.to_string(),
                    sandbox_id: sandbox.id.clone(),
                    reason: state_name(sandbox.state).to_owned(),
                },
                None => RuntimeError::NoSandbox {
                    pod: pod.to_string(),
                },
            });
        };
        if ready.len() > 1 {
            tracing::warn!(
                ready = ready.len(),
                sandbox = %chosen.id,
                "several ready sandboxes for one pod; using the newest"
            );
        }

        let mut client = self.client.clone();
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: chosen.id.clone(),
            verbose: true,
        };
        let response = match self
            .deadline("PodSandboxStatus", client.pod_sandbox_status(request))
            .await?
        {
            // Removed between the two calls: same as never having been there.
            Err(status) if status.code() == Code::NotFound => {
                return Err(RuntimeError::NoSandbox {
                    pod: pod.to_string(),
                });
            }
            result => result.map_err(|status| self.status_error("PodSandboxStatus", status))?,
        };
        let status = response
            .status
            .ok_or_else(|| RuntimeError::UnexpectedResponse {
                endpoint: self.endpoint.clone(),
                call: "PodSandboxStatus",
                what: format!("no status for sandbox {}", chosen.id),
            })?;
        if status.state != i32::from(PodSandboxState::SandboxReady) {
            return Err(RuntimeError::NotReady {
                pod: pod.to_string(),
                sandbox_id: chosen.id.clone(),
                reason: state_name(status.state).to_owned(),
            });
        }
        let netns =
            verbose::sandbox_netns(&response.info).map_err(|source| RuntimeError::SandboxInfo {
                endpoint: self.endpoint.clone(),
                pod: pod.to_string(),
                sandbox_id: chosen.id.clone(),
                source,
            })?;
        tracing::debug!(sandbox = %chosen.id, netns = %netns.display(), "sandbox resolved");
        Ok(Sandbox {
            id: chosen.id.clone(),
            netns,
        })
    }

    async fn ask_version(&self) -> Result<RuntimeVersion, RuntimeError> {
        let mut client = self.client.clone();
        let request = VersionRequest {
            version: CRI_API_VERSION.to_owned(),
        };
        let response = self.call("Version", client.version(request)).await?;
        Ok(RuntimeVersion {
            kind: RuntimeKind::from_runtime_name(&response.runtime_name).unwrap_or(self.kind),
            name: response.runtime_name,
            version: response.runtime_version,
            api_version: response.runtime_api_version,
        })
    }
}

/// The most recently created sandbox; ties (same nanosecond) fall back to the id so the choice
/// is stable between reconciles.
fn newest(sandboxes: &[PodSandbox]) -> Option<&PodSandbox> {
    sandboxes
        .iter()
        .max_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)))
}

fn state_name(state: i32) -> &'static str {
    PodSandboxState::try_from(state)
        .map(|state| state.as_str_name())
        .unwrap_or("unknown sandbox state")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str, created_at: i64) -> PodSandbox {
        PodSandbox {
            id: id.to_owned(),
            created_at,
            ..PodSandbox::default()
        }
    }

    #[test]
    fn newest_sandbox_wins_by_creation_time() {
        let list = [sandbox("old", 10), sandbox("new", 20), sandbox("mid", 15)];
        assert_eq!(newest(&list).map(|s| s.id.as_str()), Some("new"));
        assert!(newest(&[]).is_none());
    }

    #[test]
    fn unknown_state_values_are_named_not_panicked_on() {
        assert_eq!(state_name(1), "SANDBOX_NOTREADY");
        assert_eq!(state_name(99), "unknown sandbox state");
    }

    #[tokio::test]
    async fn missing_socket_says_so_naming_runtime_and_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("absent.sock");
        let runtime = CriRuntime::new(
            RuntimeKind::Containerd,
            socket.clone(),
            Duration::from_secs(2),
        );
        let error = runtime.version().await.expect_err("no socket");
        assert!(
            matches!(error, RuntimeError::NoSocket { kind: RuntimeKind::Containerd, ref endpoint } if *endpoint == socket),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("containerd: no socket at {}", socket.display())
        );
    }

    #[tokio::test]
    async fn socket_left_behind_by_a_stopped_runtime_is_nothing_listening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("stale.sock");
        // Binding and dropping the listener leaves the socket file with nobody accepting.
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
        let runtime = CriRuntime::new(RuntimeKind::Crio, socket.clone(), Duration::from_secs(2));
        let error = runtime.version().await.expect_err("nobody listens");
        assert_eq!(
            error.to_string(),
            format!("crio: nothing listening on {}", socket.display())
        );
    }

    #[tokio::test]
    async fn silent_socket_hits_the_deadline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("silent.sock");
        // Accepts connections and never answers: the HTTP/2 handshake cannot complete.
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let runtime = CriRuntime::new(
            RuntimeKind::Crio,
            socket.clone(),
            Duration::from_millis(300),
        );
        let pod = PodRef {
            uid: "u".into(),
            namespace: "ns".into(),
            name: "p".into(),
        };
        let result = runtime.sandbox(&pod).await;
        server.abort();
        assert!(
            matches!(result, Err(RuntimeError::DeadlineExceeded { ref endpoint, .. }) if *endpoint == socket),
            "expected DeadlineExceeded, got {result:?}"
        );
    }
}
