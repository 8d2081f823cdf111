//! Refresh client secret (API-009-001-006-0340).
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::initiator;
use crate::auth::scope;
use crate::connections::Rotate;
use crate::http::guard::{authorize_connection, existing_connection};
use crate::http::schemas::{ConnectionWithSecretResponse, ErrorResponse, RefreshRequest};
use crate::http::state::AppState;
use crate::http::views::{ConnectionWithSecret, with_secret_expiry};
use crate::http::{ApiError, RequestMeta, input};

/// `PATCH /api/clients/{id}/connections/{connection_id}/actions/refresh_secret`
///
/// Scope `connection:refresh_secret`; context: the caller's own client, any for NHS and
/// CABINET. Body: none, or `{"grace_period": seconds}`.
#[utoipa::path(
    patch,
    path = "/api/clients/{id}/connections/{connection_id}/actions/refresh_secret",
    summary = "Refresh client secret, API-009-001-006-0340 (scope connection:refresh_secret)",
    tag = "connections",
    params(
        ("id" = Uuid, Path, description = "The client (legal entity) id"),
        ("connection_id" = Uuid, Path, description = "The connection id"),
    ),
    request_body(content = Option<RefreshRequest>, description = "None, or the grace period"),
    responses(
        (status = 200, description = "The connection and its new secret, shown this once", body = ConnectionWithSecretResponse,
            headers(("x-secret-expires-at" = String, description = "When the new secret expires under the lifetime policy (RFC 3339, UTC); absent when it never expires"))),
        (status = 401, description = "No, unknown, expired or blocked token", body = ErrorResponse),
        (status = 403, description = "Invalid scopes, or the context rule refuses this client", body = ErrorResponse),
        (status = 404, description = "No such connection for this client, or an id is not a UUID", body = ErrorResponse),
        (status = 413, description = "The body is over 4 KiB", body = ErrorResponse),
        (status = 422, description = "The body breaks its rules", body = ErrorResponse),
        (status = 429, description = "The client's refresh budget is spent; try again after `Retry-After` seconds", body = ErrorResponse,
            headers(("retry-after" = u64, description = "Whole seconds until a refresh is possible again"))),
        (status = 503, description = "The database is unreachable", body = ErrorResponse),
    ),
    security(("bearer" = ["connection:refresh_secret"]))
)]
pub async fn refresh_secret(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let mut outcome = Outcome {
        metrics: &state.metrics,
        answered: false,
    };
    let answer = rotate(&req, &state, path, payload, &meta).await;
    outcome.answered = true;
    state.metrics.refresh(match &answer {
        Ok(_) => "rotated",
        Err(ApiError::TooManyRequests { .. }) => "rate_limited",
        Err(err) => err.error_type(),
    });
    answer
}

/// Counts a refresh whose caller went away before it was answered (the request was
/// dropped): `secret_refreshes_total{outcome="abandoned"}`.
struct Outcome<'a> {
    metrics: &'a crate::telemetry::Metrics,
    answered: bool,
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.metrics.refresh("abandoned");
        }
    }
}

/// API.md's order: token, scope, context, existence (404), body (413/422), then the
/// service: rate (429) and the rotation. The body is read only once the caller is known
/// to be allowed and the connection to exist.
// CAUTION: the existence check comes before the budget and the actor on every path, with
// or without a body: a refresh of a connection that is not there must take nothing from
// the client's budget (a token that may name any client could otherwise spend it), start
// no actor and open no write transaction.
async fn rotate(
    req: &HttpRequest,
    state: &AppState,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    meta: &RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let (principal, client_id, connection_id) =
        authorize_connection(state, req, scope::REFRESH_SECRET, path).await?;
    existing_connection(state, client_id, connection_id).await?;
    let grace_period = if input::has_body(req) {
        let body = input::body(req, payload).await?;
        input::grace_period(&body, state.config.rotation.max_grace_period.as_secs())?
    } else {
        0
    };
    let rotated = state
        .connections
        .rotate(Rotate {
            client_id,
            connection_id,
            grace_period,
            actor: initiator(&principal, meta),
        })
        .await?;
    tracing::info!(
        client_id = %client_id,
        connection_id = %connection_id,
        secret_version = rotated.connection.secret_version,
        grace_period,
        "secret rotated"
    );
    Ok(with_secret_expiry(
        meta.object_with_secret(
            StatusCode::OK,
            ConnectionWithSecret::new(&rotated.connection, rotated.secret.expose()),
        ),
        rotated.connection.secret_expires_at,
    ))
}
