//! Operations endpoints: liveness, readiness, metrics, the OpenAPI document and the docs
//! page. None needs a token.
use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, web};

use crate::http::schemas::{ErrorResponse, HealthResponse};
use crate::http::state::AppState;
use crate::http::views::HealthView;
use crate::http::{ApiError, RequestMeta};
use crate::readiness;

/// `GET /health/live`: 200 while the process runs. No scope.
#[utoipa::path(
    get,
    path = "/health/live",
    summary = "Liveness",
    tag = "operations",
    responses((status = 200, description = "The process runs", body = HealthResponse))
)]
pub async fn live(meta: RequestMeta) -> HttpResponse {
    meta.object(
        StatusCode::OK,
        HealthView {
            status: "live",
            checks: BTreeMap::new(),
        },
    )
}

/// `GET /health/ready`: 200 when every backing service answers within the readiness
/// timeout, else 503. No scope.
#[utoipa::path(
    get,
    path = "/health/ready",
    summary = "Readiness of every backing service",
    tag = "operations",
    responses(
        (status = 200, description = "Every backing service answered", body = HealthResponse),
        (status = 503, description = "A backing service did not answer in time", body = ErrorResponse),
    )
)]
pub async fn ready(
    state: web::Data<AppState>,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let outcomes = readiness::run(&state.readiness, state.config.http.readiness_timeout).await;
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.failure.as_ref().map(|why| format!("{}: {why}", o.name)))
        .collect();
    if !failed.is_empty() {
        // The reasons reach the log only (`ApiError` logs its cause), never the body.
        return Err(ApiError::Unavailable(anyhow::anyhow!(
            "not ready: {}",
            failed.join("; ")
        )));
    }
    Ok(meta.object(
        StatusCode::OK,
        HealthView {
            status: "ready",
            checks: outcomes.iter().map(|o| (o.name, "ok")).collect(),
        },
    ))
}

/// `GET /metrics`: Prometheus text format. No scope.
#[utoipa::path(
    get,
    path = "/metrics",
    summary = "Prometheus metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain"))
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // Outbox rows not yet pushed to the queue: the backlog the relay and sweeper owe.
    // Best effort: a slow or absent database leaves the last value.
    let backlog = state.relay.backlog();
    if let Ok(Ok(backlog)) =
        tokio::time::timeout(state.config.http.readiness_timeout, backlog).await
    {
        state.metrics.outbox_pending(backlog.rows);
        state.metrics.outbox_backlog(backlog.rows, backlog.oldest);
    }
    if let Some((db, queue)) = &state.workers {
        let within = state.config.http.readiness_timeout;
        let _ = kernel::health::sample(db, queue, state.metrics.registry(), within).await;
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// `GET /docs`: sends the browser to the API reference page, `/docs/`, which renders
/// offline (its assets are built into the binary). No scope.
#[utoipa::path(
    get,
    path = "/docs",
    summary = "The API reference page",
    tag = "operations",
    responses((status = 308, description = "Redirect to the API reference page at /docs/"))
)]
pub async fn docs() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/docs/"))
        .finish()
}
