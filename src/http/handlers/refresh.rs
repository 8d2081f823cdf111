//! Refresh client secret (API-009-001-006-0340).
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::actor;
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
        (status = 422, description = "The body breaks its rules", body = ErrorResponse),
        (status = 503, description = "The database is unreachable", body = ErrorResponse),
    ),
    security(("bearer" = ["connection:refresh_secret"]))
)]
pub async fn refresh_secret(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let answer = rotate(&req, &state, path, &body, &meta).await;
    state.metrics.refresh(match &answer {
        Ok(_) => "rotated",
        Err(err) => err.error_type(),
    });
    answer
}

async fn rotate(
    req: &HttpRequest,
    state: &AppState,
    path: web::Path<(String, String)>,
    body: &[u8],
    meta: &RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let (principal, client_id, connection_id) =
        authorize_connection(state, req, scope::REFRESH_SECRET, path).await?;
    let grace_period = match input::grace_period(body, state.config.max_grace_period.as_secs()) {
        Ok(grace_period) => grace_period,
        // Existence answers before the body does (API.md's order).
        Err(invalid) => {
            existing_connection(state, client_id, connection_id).await?;
            return Err(ApiError::Validation(invalid));
        }
    };
    let rotated = state
        .connections
        .rotate(Rotate {
            client_id,
            connection_id,
            grace_period,
            actor: actor(&principal, meta),
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
        meta.object(
            StatusCode::OK,
            ConnectionWithSecret::new(&rotated.connection, rotated.secret.expose()),
        ),
        rotated.connection.secret_expires_at,
    ))
}
