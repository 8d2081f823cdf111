//! Middleware: one log line and the request metrics per answered request.
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use tracing::Instrument as _;
use uuid::Uuid;

use super::REQUEST_ID;
use super::state::AppState;

/// The verify route (as `http::routes` names it), whose successes are logged at debug.
const VERIFY_ROUTE: &str = "/api/connections/actions/verify";

/// Logs each request once it is answered (request id, method, route pattern, status,
/// latency, the path's client id) and counts it in the metrics. Runs outside the
/// envelope, so it sees the final status of errors too.
///
/// CAUTION: only the route pattern is logged and labelled, never the raw path or query,
/// and never a header: tokens and secrets travel in headers and bodies only.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    // The request's span, a child of the caller's where it sent a W3C `traceparent`.
    let span = if kernel::trace::enabled() {
        let span = tracing::info_span!("HTTP request", http.method = %method, http.route = tracing::field::Empty, http.status_code = tracing::field::Empty);
        let parent = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok());
        kernel::trace::follow(&span, parent);
        span
    } else {
        tracing::Span::none()
    };
    let res = next.call(req).instrument(span.clone()).await?;
    let latency = started.elapsed();

    let request = res.request();
    let route = request.match_pattern();
    let route = route.as_deref().unwrap_or("unmatched");
    let client_id = request
        .match_info()
        .get("id")
        .and_then(|id| Uuid::parse_str(id).ok());
    let status = res.status().as_u16();
    span.record("http.route", route);
    span.record("http.status_code", status);
    let request_id = res
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Some(state) = &state {
        state.metrics.http_request(&method, route, status, latency);
    }
    let latency_ms = latency.as_secs_f64() * 1000.0;
    let client_id = client_id.as_ref().map(tracing::field::display);
    if route == VERIFY_ROUTE && status == 200 {
        // Gateways verify on every call they pass: their successes are counted in the
        // metrics and a summary line a minute (see `app::summarize_verifies`), and
        // logged one by one at debug only, so the log is not their traffic.
        tracing::debug!(
            request_id, method, route, status, latency_ms, client_id, "request"
        );
    } else {
        tracing::info!(
            request_id, method, route, status, latency_ms, client_id, "request"
        );
    }
    Ok(res)
}
