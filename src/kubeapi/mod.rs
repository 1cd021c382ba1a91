//! The Kubernetes API client: built from podagent's kubeconfig, with errors an operator can act
//! on.
//!
//! (Named `kubeapi` because `kube` is the client crate.) The RPM installs podagent with a
//! kubeconfig written by `create-kubeconfig.sh` (a service-account token or client certificate
//! and the cluster CA); as a DaemonSet it runs with the pod's service account instead. The
//! failures people actually hit are a missing or unreadable file, a server that cannot be
//! reached, and a role missing a verb, so each has its own error naming the file, the URL or the
//! verb and resource to grant. Exec credential plugins are out of scope: a node agent cannot
//! rely on a user's login tooling.
//!
//! Everything podagent says to or reads from the API server goes through here: the pod watch
//! ([`PodWatcher`]), the feedback on pods (`events`: Events and the status annotation) and what
//! `podagent check` asks about podagent's own identity (`identity`).

mod counting;
pub(crate) mod events;
mod identity;
mod networks;
mod pods;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

pub(crate) use events::can_create_events;
pub(crate) use identity::{NODE_BOUND_POLICY, Speaks, node_bound_policy, who_am_i};
pub(crate) use networks::{NetworkWatcher, api_version};
pub use pods::{PodEvent, PodView, PodWatcher};

use crate::config::KubeSettings;
use crate::metrics::Metrics;

/// The service-account token a pod gets; its presence means "running in a cluster".
pub(crate) const SERVICE_ACCOUNT_TOKEN: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/token";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "kubeconfig {path} does not exist (write it with scripts/create-kubeconfig.sh, or run \
         podagent in a pod with a service account)"
    )]
    MissingKubeconfig { path: PathBuf },
    #[error("cannot read kubeconfig {path}: {reason}")]
    ReadKubeconfig { path: PathBuf, reason: String },
    #[error(
        "kubeconfig {path} uses an exec credential plugin ({command}), which podagent does not \
         support: use a token or a client certificate"
    )]
    ExecUnsupported { path: PathBuf, command: String },
    #[error("cannot use the in-cluster service account: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("cannot build the API client for {url}: {source}")]
    Client { url: String, source: kube::Error },
    #[error("API server {url} is unreachable: {source}")]
    Unreachable { url: String, source: kube::Error },
    #[error("API server {url} rejected podagent's credentials (401 Unauthorized): {message}")]
    Unauthorized { url: String, message: String },
    #[error(
        "forbidden (403): podagent's role may not `{verb}` `{resource}` ({scope}); grant verb \
         {verb} on {resource} in its ClusterRole: {message}"
    )]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        scope: String,
        message: String,
    },
    #[error(
        "API server {url} does not serve {resource} (404): install its CustomResourceDefinition \
         (kubectl apply -f /opt/kaloom/share/podagent/manifests/{manifest})"
    )]
    NotServed {
        url: String,
        resource: &'static str,
        manifest: &'static str,
    },
    #[error("`{verb}` `{resource}` ({scope}) failed with {code}: {message}")]
    Api {
        verb: &'static str,
        resource: &'static str,
        scope: String,
        code: u16,
        message: String,
    },
}

/// What a request was, so its failure can say which permission is missing.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) verb: &'static str,
    pub(crate) resource: &'static str,
    pub(crate) scope: String,
}

impl Request {
    /// Classifies a failed request: no answer, bad credentials, missing RBAC rule, or other.
    pub(crate) fn error(&self, url: &str, err: kube::Error) -> KubeError {
        match err {
            kube::Error::Api(status) => match status.code {
                401 => KubeError::Unauthorized {
                    url: url.to_string(),
                    message: status.message,
                },
                403 => KubeError::Forbidden {
                    verb: self.verb,
                    resource: self.resource,
                    scope: self.scope.clone(),
                    message: status.message,
                },
                code => KubeError::Api {
                    verb: self.verb,
                    resource: self.resource,
                    scope: self.scope.clone(),
                    code,
                    message: status.message,
                },
            },
            other => KubeError::Unreachable {
                url: url.to_string(),
                source: other,
            },
        }
    }
}

/// Where the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    Kubeconfig(PathBuf),
    InCluster,
}

impl Credentials {
    /// The configured kubeconfig, or the in-cluster service account when the kubeconfig was
    /// not configured explicitly, its default file is absent and the token file exists.
    pub(crate) fn resolve(settings: &KubeSettings) -> Credentials {
        Credentials::resolve_with(settings, Path::new(SERVICE_ACCOUNT_TOKEN))
    }

    fn resolve_with(settings: &KubeSettings, token: &Path) -> Credentials {
        if !settings.kubeconfig_explicit && !settings.kubeconfig.exists() && token.exists() {
            Credentials::InCluster
        } else {
            Credentials::Kubeconfig(settings.kubeconfig.clone())
        }
    }
}

impl std::fmt::Display for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Kubeconfig(path) => write!(f, "kubeconfig {}", path.display()),
            Credentials::InCluster => f.write_str("in-cluster service account"),
        }
    }
}

/// A connected client and the server URL it talks to (for messages).
#[derive(Clone)]
pub(crate) struct KubeClient {
    pub(crate) client: kube::Client,
    pub(crate) url: String,
    /// Where the watches count their restarts and re-lists.
    pub(crate) metrics: Metrics,
}

/// Whether a file's mode lets any user read it (a kubeconfig holds a bearer credential).
pub(crate) fn world_readable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
}

/// Reads and checks the kubeconfig file.
fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, KubeError> {
    if !path.exists() {
        return Err(KubeError::MissingKubeconfig {
            path: path.to_path_buf(),
        });
    }
    // Read it ourselves first so that permission errors name the file plainly.
    std::fs::read(path).map_err(|e| KubeError::ReadKubeconfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if world_readable(path) {
        tracing::warn!(path = %path.display(), "kubeconfig is world-readable: chmod 600 it");
    }
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| KubeError::ReadKubeconfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let exec = kubeconfig
        .auth_infos
        .iter()
        .filter_map(|named| named.auth_info.as_ref()?.exec.as_ref())
        .find_map(|exec| exec.command.clone());
    if let Some(command) = exec {
        return Err(KubeError::ExecUnsupported {
            path: path.to_path_buf(),
            command,
        });
    }
    Ok(kubeconfig)
}

/// Builds a client from `credentials`. No request is made yet.
/// A client for `credentials` whose failed requests are counted in `metrics`.
pub(crate) async fn connect(
    credentials: &Credentials,
    metrics: &Metrics,
) -> Result<KubeClient, KubeError> {
    let config = match credentials {
        Credentials::Kubeconfig(path) => {
            let kubeconfig = read_kubeconfig(path)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError::ReadKubeconfig {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
        }
        Credentials::InCluster => kube::Config::incluster().map_err(KubeError::InCluster)?,
    };
    let url = config.cluster_url.to_string();
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|source| KubeError::Client {
            url: url.clone(),
            source,
        })?
        .with_layer(&counting::CountErrors {
            metrics: metrics.clone(),
        })
        .build();
    Ok(KubeClient {
        client,
        url,
        metrics: metrics.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn settings(path: &Path, explicit: bool) -> KubeSettings {
        KubeSettings {
            kubeconfig: path.to_path_buf(),
            kubeconfig_explicit: explicit,
        }
    }

    #[test]
    fn absent_default_kubeconfig_falls_back_to_in_cluster_when_the_token_exists() {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = dir.path().join("token");
        std::fs::write(&token, "t").expect("write token");
        let absent = dir.path().join("absent.yaml");
        assert_eq!(
            Credentials::resolve_with(&settings(&absent, false), &token),
            Credentials::InCluster
        );
        assert_eq!(
            Credentials::resolve_with(&settings(&absent, true), &token),
            Credentials::Kubeconfig(absent.clone()),
            "an explicit kubeconfig is never replaced"
        );
        assert_eq!(
            Credentials::resolve_with(&settings(&absent, false), &dir.path().join("none")),
            Credentials::Kubeconfig(absent),
            "without a token the missing file is reported"
        );
    }

    #[tokio::test]
    async fn missing_kubeconfig_names_the_path() {
        let path = PathBuf::from("/nonexistent/podagent/kubeconfig.yaml");
        let err = connect(&Credentials::Kubeconfig(path), &Metrics::new())
            .await
            .err()
            .expect("fails");
        assert!(
            err.to_string()
                .contains("/nonexistent/podagent/kubeconfig.yaml"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn exec_plugins_are_refused() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        write!(
            file,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: c\n  context:\n    cluster: k\n    user: u\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws-iam-authenticator\n"
        )
        .expect("write");
        let err = connect(
            &Credentials::Kubeconfig(file.path().into()),
            &Metrics::new(),
        )
        .await
        .err()
        .expect("fails");
        assert!(
            matches!(err, KubeError::ExecUnsupported { ref command, .. } if command == "aws-iam-authenticator"),
            "{err}"
        );
    }

    #[test]
    fn forbidden_names_verb_and_resource() {
        let request = Request {
            verb: "list",
            resource: "pods",
            scope: "all namespaces".into(),
        };
        let status = kube::core::Status {
            code: 403,
            message: "pods is forbidden".into(),
            ..kube::core::Status::default()
        };
        let err = request.error("https://h", kube::Error::Api(Box::new(status)));
        let text = err.to_string();
        assert!(text.contains("`list` `pods`"), "{text}");
    }
}
