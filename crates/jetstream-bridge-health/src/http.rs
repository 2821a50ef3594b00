//! The axum router: `GET /health/jetstream`, `/health/live`, `/health/ready`, `/metrics`.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use crate::health::Health;
use crate::metrics::METRICS_CONTENT_TYPE;

/// The path of the Ruby gem's health endpoint.
pub const HEALTH_PATH: &str = "/health/jetstream";
/// The path of the liveness probe.
pub const LIVE_PATH: &str = "/health/live";
/// The path of the readiness probe.
pub const READY_PATH: &str = "/health/ready";
/// The path of the Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";

/// A router to mount (e.g. `app.merge(router(health))`) with four routes:
///
/// | route | 200 | 503 | body |
/// |---|---|---|---|
/// | `GET /health/jetstream` | healthy | not healthy | the [`HealthReport`](crate::HealthReport) JSON |
/// | `GET /health/live` | live | a watched runtime ended or stalled | [`Liveness`](crate::Liveness) JSON (no request made) |
/// | `GET /health/ready` | ready | shutting down, unhealthy, or outbox lag over the limit | [`Readiness`](crate::Readiness) JSON |
/// | `GET /metrics` | always | — | OpenMetrics text (500 if encoding fails) |
///
/// Health, readiness and metrics share the probe's rate limit: at most one uncached probe per
/// interval, however many probes and scrapers call.
///
/// # Examples
///
/// ```no_run
/// # async fn example(health: jetstream_bridge_health::Health) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
/// axum::serve(listener, jetstream_bridge_health::router(health)).await
/// # }
/// ```
pub fn router(health: Health) -> Router {
    Router::new()
        .route(HEALTH_PATH, get(health_handler))
        .route(LIVE_PATH, get(live_handler))
        .route(READY_PATH, get(ready_handler))
        .route(METRICS_PATH, get(metrics_handler))
        .with_state(health)
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a health response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

const fn status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn health_handler(State(health): State<Health>) -> Response {
    let report = health.health_check().await;
    json(status(report.healthy), &report)
}

async fn live_handler(State(health): State<Health>) -> Response {
    let live = health.liveness();
    json(status(live.live), &live)
}

async fn ready_handler(State(health): State<Health>) -> Response {
    let ready = health.readiness().await;
    json(status(ready.ready), &ready)
}

async fn metrics_handler(State(health): State<Health>) -> Response {
    match health.encode_metrics().await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(METRICS_CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e.to_masked_string(), "cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
