//! Refresh client secret (API-009-001-006-0340).
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::initiator;
use crate::auth::scope;
use crate::connections::Rotate;
use crate::connections::idempotency::{Begun, KeyMaterial};
use crate::http::Invalid;
use crate::http::guard::{authorize_connection, existing_connection};
use crate::http::schemas::{ConnectionWithSecretResponse, ErrorResponse, RefreshRequest};
use crate::http::state::AppState;
use crate::http::views::{ConnectionWithSecret, with_secret_expiry};
use crate::http::{ApiError, RequestMeta, headers, input};

/// Set on a refresh answered again for its `Idempotency-Key`.
const IDEMPOTENT_REPLAYED: actix_web::http::header::HeaderName =
    actix_web::http::header::HeaderName::from_static("idempotent-replayed");

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
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the refresh safe to retry: an RFC 8941 String (or the same characters unquoted) of 16 to 255 visible ASCII characters. A retry with the same key and body gets the first 200 again, with `Idempotent-Replayed: true`, for MITHRIL_IDEMPOTENCY_TTL (default 1h)"),
    ),
    request_body(content = Option<RefreshRequest>, description = "None, or the grace period"),
    responses(
        (status = 200, description = "The connection and its new secret, shown this once", body = ConnectionWithSecretResponse,
            headers(("x-secret-expires-at" = String, description = "When the new secret expires under the lifetime policy (RFC 3339, UTC); absent when it never expires"),
                ("idempotent-replayed" = String, description = "`true` on the answer of an earlier request with the same Idempotency-Key, given again"))),
        (status = 401, description = "No, unknown, expired or blocked token", body = ErrorResponse),
        (status = 403, description = "Invalid scopes, or the context rule refuses this client", body = ErrorResponse),
        (status = 404, description = "No such connection for this client, or an id is not a UUID", body = ErrorResponse),
        (status = 409, description = "A request with this Idempotency-Key is still running (on any instance); retry later", body = ErrorResponse),
        (status = 413, description = "The body is over 4 KiB", body = ErrorResponse),
        (status = 422, description = "The body or the Idempotency-Key breaks its rules, or the key was used with another body", body = ErrorResponse),
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
    let mut replayed = false;
    let answer = rotate(&req, &state, path, payload, &meta, &mut replayed).await;
    outcome.answered = true;
    state.metrics.refresh(match &answer {
        Ok(_) if replayed => "replayed",
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
    replayed: &mut bool,
) -> Result<HttpResponse, ApiError> {
    let (principal, client_id, connection_id) =
        authorize_connection(state, req, scope::REFRESH_SECRET, path).await?;
    let seen = existing_connection(state, client_id, connection_id).await?;
    let grace_period = if input::has_body(req) {
        let body = input::body(req, payload).await?;
        input::grace_period(&body, state.config.rotation.max_grace_period.as_secs())?
    } else {
        0
    };
    let cmd = Rotate {
        client_id,
        connection_id,
        grace_period,
        actor: initiator(&principal, meta),
        remember: None,
        seen: Some(seen),
        span: tracing::Span::current(),
    };
    let rotated = match headers::idempotency_key(req)? {
        None => state.connections.rotate(cmd).await?,
        Some(key) => {
            let key = KeyMaterial::derive(&key, client_id, connection_id)?;
            match state.connections.begin_once(key, grace_period).await? {
                Begun::Fresh(ticket) => {
                    let render =
                        Arc::new(|connection: &entity::connection::Model, secret: &str| {
                            serde_json::to_value(ConnectionWithSecret::new(connection, secret))
                        });
                    state.connections.rotate_once(cmd, ticket, render).await?
                }
                Begun::Replay(answer) => {
                    *replayed = true;
                    let mut response = with_secret_expiry(
                        meta.object_with_secret(StatusCode::OK, &answer.data),
                        answer.secret_expires_at,
                    );
                    response.headers_mut().insert(
                        IDEMPOTENT_REPLAYED,
                        actix_web::http::header::HeaderValue::from_static("true"),
                    );
                    return Ok(response);
                }
                Begun::InProgress => return Err(ApiError::Conflict),
                Begun::OtherBody => {
                    return Err(ApiError::Validation(vec![Invalid::header(
                        "Idempotency-Key",
                        "reused",
                        "this Idempotency-Key was used with another body",
                    )]));
                }
            }
        }
    };
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
