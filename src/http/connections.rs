//! Handlers of the connection resource.
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};
use uuid::Uuid;

use super::manage::{authorize_connection, existing_connection};
use super::openapi::{
    ConnectionWithSecretResponse, ErrorResponse, RefreshRequest, VerifiedResponse,
};
use super::views::ConnectionWithSecret;
use super::{ApiError, Invalid, RequestMeta};
use crate::app::AppState;
use crate::auth::scope;
use crate::connections::{Rotate, RotateError};
use crate::secrets::SecretDigest;

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
        (status = 200, description = "The connection and its new secret, shown this once", body = ConnectionWithSecretResponse),
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
    let metrics = state.metrics.clone();
    let answer = rotate_through_actor(req, state, path, body, meta).await;
    metrics.refresh(match &answer {
        Ok(_) => "rotated",
        Err(err) => err.error_type(),
    });
    answer
}

async fn rotate_through_actor(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let (principal, client_id, connection_id) =
        authorize_connection(&state, &req, scope::REFRESH_SECRET, path).await?;
    let grace_period = match grace_period(&body, state.config.max_grace_period.as_secs()) {
        Ok(grace_period) => grace_period,
        // Existence answers before the body does (API.md's order).
        Err(invalid) => {
            existing_connection(&state, client_id, connection_id).await?;
            return Err(ApiError::Validation(invalid));
        }
    };
    let rotated = state
        .registry
        .send(Rotate {
            client_id,
            connection_id,
            grace_period,
            actor_user_id: principal.user_id,
            actor_client_id: principal.client_id,
            request_id: meta.request_id.clone(),
            remote_address: meta.remote_address.clone(),
        })
        .await
        .map_err(|_| RotateError::Stopped)
        .and_then(|result| result)?;
    // Before answering: the old secret must already fail here and, through Redis, on
    // every other instance.
    state.credentials.invalidate(&rotated.invalidation).await;
    // The notice and the shared invalidation go through the queue.
    dispatch_outbox(&state, rotated.outbox_ids.clone());
    tracing::info!(
        client_id = %client_id,
        connection_id = %connection_id,
        secret_version = rotated.connection.secret_version,
        grace_period,
        "secret rotated"
    );
    Ok(meta.object(
        StatusCode::OK,
        ConnectionWithSecret::new(&rotated.connection, rotated.secret.expose()),
    ))
}

/// `POST /api/connections/actions/verify` with header `api-key`. No bearer token and no
/// scope: this is the gateways' path.
#[utoipa::path(
    post,
    path = "/api/connections/actions/verify",
    summary = "Verify a connection secret (header api-key; no token)",
    tag = "connections",
    responses(
        (status = 200, description = "The connection this secret authenticates; never the secret", body = VerifiedResponse),
        (status = 401, description = "api-key header not set, or no connection has that secret", body = ErrorResponse),
        (status = 503, description = "The database is unreachable", body = ErrorResponse),
    ),
    security(("api_key" = []))
)]
pub async fn verify(
    req: HttpRequest,
    state: web::Data<AppState>,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let Some(presented) = req.headers().get("api-key") else {
        return Err(ApiError::InvalidApiKey("api-key header not set"));
    };
    let digest = SecretDigest::of(presented.to_str().unwrap_or_default());
    let connection = state
        .credentials
        .verify(&state.db, &digest)
        .await?
        .ok_or(ApiError::InvalidApiKey("invalid api-key header"))?;
    Ok(meta.object(StatusCode::OK, &connection))
}

impl From<RotateError> for ApiError {
    fn from(err: RotateError) -> Self {
        match err {
            RotateError::NotFound => ApiError::NotFound,
            RotateError::Store(db) => db.into(),
            RotateError::Internal(e) => ApiError::Internal(e),
            RotateError::Stopped => {
                ApiError::Internal(anyhow::anyhow!("connection actor mailbox closed"))
            }
        }
    }
}

/// After commit: pushes a change's outbox rows to the queue in the background; if the
/// push fails, the sweeper pushes the committed rows later.
pub(super) fn dispatch_outbox(state: &AppState, outbox_ids: Vec<Uuid>) {
    let relay = state.relay.clone();
    // CAUTION: Tokio's spawn, not actix's: a task on an HTTP worker's local set can be
    // dropped outside the runtime when the worker stops, and dropping a pooled database
    // connection there panics.
    tokio::spawn(async move {
        if let Err(e) = relay.dispatch(&outbox_ids).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "outbox dispatch failed; the sweeper will retry"
            );
        }
    });
}

/// The refresh body: empty, or an object whose optional `grace_period` is a whole number
/// of seconds in `0..=max`.
fn grace_period(body: &[u8], max: u64) -> Result<i64, Vec<Invalid>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(0);
    }
    let fields = super::query::json_object(body)?;
    let out_of_range = || {
        vec![Invalid::json_property(
            "$.grace_period",
            "number",
            format!("expected an integer from 0 to {max}"),
            vec![json!({"greater_than_or_equal_to": 0, "less_than_or_equal_to": max})],
        )]
    };
    match fields.get("grace_period") {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n
            .as_u64()
            .filter(|secs| *secs <= max)
            .and_then(|secs| i64::try_from(secs).ok())
            .ok_or_else(out_of_range),
        Some(_) => Err(vec![Invalid::json_property(
            "$.grace_period",
            "type",
            "type mismatch. Expected integer",
            vec![json!("integer")],
        )]),
    }
}

#[cfg(test)]
mod tests {
    use super::grace_period;

    #[test]
    fn grace_period_rules() {
        assert_eq!(grace_period(b"", 10).unwrap(), 0);
        assert_eq!(grace_period(b" \n", 10).unwrap(), 0);
        assert_eq!(grace_period(b"{}", 10).unwrap(), 0);
        assert_eq!(grace_period(br#"{"grace_period": 10}"#, 10).unwrap(), 10);
        assert_eq!(grace_period(br#"{"grace_period": null}"#, 10).unwrap(), 0);
        for bad in [
            &br#"{"grace_period": 11}"#[..],
            br#"{"grace_period": -1}"#,
            br#"{"grace_period": 1.5}"#,
            br#"{"grace_period": "5"}"#,
            br#"[1]"#,
            br#"{"grace_period": "#,
        ] {
            let invalid = grace_period(bad, 10).unwrap_err();
            assert_eq!(invalid.len(), 1, "{}", String::from_utf8_lossy(bad));
        }
    }
}
