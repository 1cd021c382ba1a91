//! Counts the API requests that fail, by verb, for `podagent_api_request_errors_total`.
//!
//! A layer under the client rather than a counter at each call site: every request podagent
//! makes (the watches, Events, the status patch, the network list) passes through it, including
//! the ones `kube-runtime` makes for the network watch, so none can be forgotten.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Method, Request, Response, Uri};
use tower::{Layer, Service};

use crate::metrics::Metrics;

pub(super) struct CountErrors {
    pub(super) metrics: Metrics,
}

impl<S> Layer<S> for CountErrors {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

pub(super) struct Counted<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let verb = verb(request.method(), request.uri());
        let metrics = self.metrics.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            let failed = match &answer {
                Ok(response) => {
                    response.status().is_client_error() || response.status().is_server_error()
                }
                Err(_) => true,
            };
            if failed {
                metrics.api_error(verb);
            }
            answer
        })
    }
}

/// The Kubernetes verb of a request, as RBAC names it.
fn verb(method: &Method, uri: &Uri) -> &'static str {
    let query = uri.query().unwrap_or_default();
    let watching = query
        .split('&')
        .any(|pair| pair == "watch=true" || pair == "watch=1");
    match *method {
        Method::GET if watching => "watch",
        Method::GET if is_collection(uri.path()) => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PATCH => "patch",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// Whether a path names a collection (`/api/v1/pods`, `/apis/g/v/namespaces/ns/things`)
/// rather than one object in it (`.../events/NAME`).
fn is_collection(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", _, rest @ ..] | ["apis", _, _, rest @ ..] => rest,
        _ => return false,
    };
    let rest = match rest {
        ["namespaces", _namespace, inner @ ..] if !inner.is_empty() => inner,
        other => other,
    };
    rest.len() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_follow_rbac() {
        let verb_of = |method: Method, uri: &str| verb(&method, &uri.parse().expect("uri"));
        assert_eq!(
            verb_of(Method::GET, "/api/v1/pods?fieldSelector=x&watch=true"),
            "watch"
        );
        assert_eq!(verb_of(Method::GET, "/api/v1/pods?fieldSelector=x"), "list");
        assert_eq!(verb_of(Method::GET, "/apis/kaloom.com/v1/networks"), "list");
        assert_eq!(verb_of(Method::GET, "/api/v1/namespaces"), "list");
        assert_eq!(verb_of(Method::GET, "/api/v1/namespaces/ns/events"), "list");
        assert_eq!(
            verb_of(Method::GET, "/api/v1/namespaces/ns/events/e1"),
            "get"
        );
        assert_eq!(verb_of(Method::GET, "/api/v1/namespaces/ns"), "get");
        assert_eq!(
            verb_of(Method::POST, "/api/v1/namespaces/ns/events"),
            "create"
        );
        assert_eq!(
            verb_of(Method::PATCH, "/api/v1/namespaces/ns/pods/p"),
            "patch"
        );
    }
}
