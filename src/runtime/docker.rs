//! Docker Engine API client (bollard) for nodes whose pods run as dockershim-style containers.
//!
//! With dockershim and cri-dockerd, a pod sandbox is a plain Docker container (the pause
//! container) labelled `io.kubernetes.pod.uid=<uid>` and `io.kubernetes.docker.type=podsandbox`.
//! Docker does not expose a namespace path, but the sandbox's init process owns the pod's netns,
//! so `/proc/<State.Pid>/ns/net` is that namespace for as long as the container runs; pid 0
//! means the container is not running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::ListContainersOptions;

use futures::future::BoxFuture;

use super::{POD_UID_LABEL, Runtime, RuntimeError, RuntimeKind, RuntimeVersion, Sandbox};
use crate::error_chain::render;
use crate::pod::PodRef;

/// The label dockershim and cri-dockerd put on sandbox (pause) containers.
const DOCKER_TYPE_LABEL: &str = "io.kubernetes.docker.type";
const SANDBOX_TYPE: &str = "podsandbox";

/// A Docker Engine reached through its unix socket. Cloning shares the HTTP client.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    endpoint: PathBuf,
    timeout: Duration,
    docker: Docker,
}

impl DockerRuntime {
    /// A client for the Engine socket at `endpoint`; fails when the socket file is missing.
    pub(crate) fn new(endpoint: PathBuf, timeout: Duration) -> Result<Self, RuntimeError> {
        let path = endpoint
            .to_str()
            .ok_or_else(|| RuntimeError::InvalidEndpoint {
                endpoint: endpoint.display().to_string(),
                reason: "not valid UTF-8".to_owned(),
            })?;
        // bollard's own timeout is whole seconds; the precise deadline is ours, below.
        let seconds = timeout.as_secs().max(1);
        let docker = Docker::connect_with_unix(path, seconds, bollard::API_DEFAULT_VERSION)
            .map_err(|error| unreachable(endpoint.clone(), "connect", error))?;
        Ok(DockerRuntime {
            endpoint,
            timeout,
            docker,
        })
    }

    pub(crate) fn endpoint(&self) -> &Path {
        &self.endpoint
    }

    /// Runs one request under the deadline, leaving the Engine's own error to the caller.
    async fn deadline<T>(
        &self,
        call: &'static str,
        request: impl Future<Output = Result<T, DockerError>>,
    ) -> Result<Result<T, DockerError>, RuntimeError> {
        super::with_deadline(&self.endpoint, call, self.timeout, request).await
    }

    /// Runs one request under the deadline and maps its failure.
    async fn call<T>(
        &self,
        call: &'static str,
        request: impl Future<Output = Result<T, DockerError>>,
    ) -> Result<T, RuntimeError> {
        self.deadline(call, request)
            .await?
            .map_err(|error| self.error(call, error))
    }

    fn error(&self, call: &'static str, error: DockerError) -> RuntimeError {
        let endpoint = self.endpoint.clone();
        match error {
            DockerError::RequestTimeoutError => RuntimeError::DeadlineExceeded {
                endpoint,
                call,
                timeout: self.timeout,
            },
            DockerError::IOError { .. }
            | DockerError::HyperLegacyError { .. }
            | DockerError::SocketNotFoundError(_) => unreachable(endpoint, call, error),
            error => RuntimeError::UnexpectedResponse {
                endpoint,
                call,
                what: render(&error),
            },
        }
    }
}

/// Why the Engine at `endpoint` could not be reached. bollard checks that the socket file exists
/// before dialling and says so in a variant of its own, without an io error to classify.
fn unreachable(endpoint: PathBuf, call: &'static str, error: DockerError) -> RuntimeError {
    match error {
        DockerError::SocketNotFoundError(_) => RuntimeError::NoSocket {
            kind: RuntimeKind::Docker,
            endpoint,
        },
        error => {
            let reason = render(&error);
            super::unreachable(RuntimeKind::Docker, endpoint, call, &error, reason)
        }
    }
}

impl Runtime for DockerRuntime {
    fn sandbox<'a>(&'a self, pod: &'a PodRef) -> BoxFuture<'a, Result<Sandbox, RuntimeError>> {
        Box::pin(self.find_sandbox(pod))
    }

    fn version(&self) -> BoxFuture<'_, Result<RuntimeVersion, RuntimeError>> {
        Box::pin(self.ask_version())
    }
}

impl DockerRuntime {
    #[tracing::instrument(name = "sandbox", skip(self), fields(pod = %pod, uid = %pod.uid, endpoint = %self.endpoint.display()))]
    async fn find_sandbox(&self, pod: &PodRef) -> Result<Sandbox, RuntimeError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![
                    format!("{POD_UID_LABEL}={}", pod.uid),
                    format!("{DOCKER_TYPE_LABEL}={SANDBOX_TYPE}"),
                ],
            )])),
            ..ListContainersOptions::default()
        };
        let containers = self
            .call(
                "list containers",
                self.docker.list_containers(Some(options)),
            )
            .await?;
        let newest = |running: bool| {
            containers
                .iter()
                .filter(|c| (c.state == Some(ContainerSummaryStateEnum::RUNNING)) == running)
                .filter_map(|c| Some((c.created.unwrap_or(0), c.id.as_deref()?)))
                .max()
        };
        let Some((_, id)) = newest(true) else {
            return Err(match newest(false) {
                Some((_, id)) => RuntimeError::NotReady {
                    pod: pod.to_string(),
                    sandbox_id: id.to_owned(),
                    reason: "sandbox container is not running".to_owned(),
                },
                None => RuntimeError::NoSandbox {
                    pod: pod.to_string(),
                },
            });
        };
        let inspected = match self
            .deadline("inspect container", self.docker.inspect_container(id, None))
            .await?
        {
            // Removed between list and inspect: same as never having been there.
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Err(RuntimeError::NoSandbox {
                    pod: pod.to_string(),
                });
            }
            result => result.map_err(|error| self.error("inspect container", error))?,
        };
        let pid = inspected.state.and_then(|state| state.pid).unwrap_or(0);
        if pid <= 0 {
            return Err(RuntimeError::NotReady {
                pod: pod.to_string(),
                sandbox_id: id.to_owned(),
                reason: "sandbox container has no process (pid 0): not running".to_owned(),
            });
        }
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        tracing::debug!(sandbox = %id, netns = %netns.display(), "sandbox resolved");
        Ok(Sandbox {
            id: id.to_owned(),
            netns,
        })
    }

    async fn ask_version(&self) -> Result<RuntimeVersion, RuntimeError> {
        let version = self.call("version", self.docker.version()).await?;
        let missing = |field: &str| RuntimeError::UnexpectedResponse {
            endpoint: self.endpoint.clone(),
            call: "version",
            what: format!("no {field} in the answer"),
        };
        Ok(RuntimeVersion {
            kind: RuntimeKind::Docker,
            name: "docker".to_owned(),
            version: version.version.ok_or_else(|| missing("Version"))?,
            api_version: version.api_version.ok_or_else(|| missing("ApiVersion"))?,
        })
    }
}
