//! The endpoint `ficus run --metrics-addr` serves: `/metrics` (Prometheus text format),
//! `/healthz` (the process is up: always 200) and `/readyz` (200 when [`crate::health::readiness`]
//! says ready, 503 otherwise; a JSON body says why).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::{info, warn};

use crate::RunError;
use crate::health::Health;

#[derive(Clone)]
struct Shared {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// Listens on `addr` (`host:port`) and serves the endpoint until the process ends; returns the
/// address bound (port 0 picks one).
pub async fn serve(
    addr: &str,
    health: Arc<Health>,
    metrics: PrometheusHandle,
) -> Result<std::net::SocketAddr, RunError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        RunError::Config(format!(
            "metrics address {addr}: {e}\nhint: give --metrics-addr (or [metrics] addr) a free host:port, like 127.0.0.1:9187"
        ))
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| RunError::Config(format!("metrics address {addr}: {e}")))?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        // Histograms are drained into their buckets here, not on the hot path.
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Shared { health, metrics });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
}

async fn scrape(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        shared.metrics.render(),
    )
}

async fn ready(State(shared): State<Shared>) -> impl IntoResponse {
    let verdict = shared.health.readiness();
    let status = if verdict.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&verdict).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body + "\n")
}
