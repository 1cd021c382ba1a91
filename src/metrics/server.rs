//! The HTTP listener: `/metrics` for Prometheus, `/healthz` and `/readyz` for probes.
//!
//! It is bound before anything else starts, so a taken port or a refused address ends startup
//! with an error naming `metrics.listen` rather than a silent agent nobody can scrape. The
//! health answers come from the same signal the systemd watchdog uses ([`Liveness`]), so a
//! probe and the watchdog never disagree about a stalled loop: `/healthz` is 200 while podagent
//! starts (waiting for the API server or the runtime is not a fault a restart would fix) and
//! while both loops beat; `/readyz` is 200 once the first sync is done and the loops beat.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::Metrics;
use crate::systemd::Liveness;

/// The OpenMetrics text format that `prometheus-client` writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr} (key `metrics.listen`): {source}; another process may hold the \
     port: choose another address, or set metrics.listen = \"\" to turn the listener off"
)]
pub struct ListenError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Whether startup finished, and the loops' beats once it has.
#[derive(Debug, Default)]
pub(crate) struct Health {
    liveness: OnceLock<Arc<Liveness>>,
}

impl Health {
    /// The first sync is done: from now on the loops' beats decide.
    pub(crate) fn started(&self, liveness: Arc<Liveness>) {
        let _ = self.liveness.set(liveness);
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Metrics,
    health: Arc<Health>,
}

pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, source })
}

/// Serves until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, metrics: Metrics, health: Arc<Health>) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: podagent serves /metrics, /healthz and /readyz\n",
            )
        })
        .with_state(Shared { metrics, health });
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(error = %error, "the metrics listener stopped");
    }
}

async fn scrape(State(shared): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(shared): State<Shared>) -> (StatusCode, String) {
    match shared.health.liveness.get() {
        None => (StatusCode::OK, "ok: starting\n".to_owned()),
        Some(liveness) => beating(liveness, "ok"),
    }
}

async fn readyz(State(shared): State<Shared>) -> (StatusCode, String) {
    match shared.health.liveness.get() {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first sync with the API server and the container \
             runtime (see the log)\n"
                .to_owned(),
        ),
        Some(liveness) => beating(liveness, "ready"),
    }
}

fn beating(liveness: &Liveness, good: &str) -> (StatusCode, String) {
    match liveness.check() {
        Ok(()) => (StatusCode::OK, format!("{good}\n")),
        Err(stall) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stalled: {stall}\n"),
        ),
    }
}
