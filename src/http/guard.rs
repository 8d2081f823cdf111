//! The checks every connection route runs before it touches its body, in API.md's order:
//! token (401), scope (403), context (403), then the path's ids (404) and existence
//! (404).
use actix_web::{HttpRequest, web};
use uuid::Uuid;

use super::ApiError;
use super::state::AppState;
use crate::auth::{AuthError, Authorize, Principal};
use crate::secrets::SecretDigest;

/// The digest of `Authorization: Bearer <token>`; the plaintext goes no further.
fn bearer_digest(req: &HttpRequest) -> Option<SecretDigest> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| SecretDigest::of(token))
}

/// Token, scope and context through the Authorizer, then the path's client id as a UUID
/// (404 when it is not one).
pub async fn authorize_client(
    state: &AppState,
    req: &HttpRequest,
    scope: &'static str,
    raw_client_id: &str,
) -> Result<(Principal, Uuid), ApiError> {
    let ask = Authorize {
        token: bearer_digest(req),
        scope,
        path_client_id: Some(raw_client_id.to_owned()),
    };
    let principal = match state.tokens.decide(&ask) {
        Some(decided) => decided?,
        None => state
            .authorizer
            .send(ask)
            .await
            .map_err(|_| AuthError::Stopped)??,
    };
    let client_id = parse_id(raw_client_id)?;
    Ok((principal, client_id))
}

/// `authorize_client` for a `/{id}/connections/{connection_id}` path, then the
/// connection id as a UUID (404 when it is not one).
pub async fn authorize_connection(
    state: &AppState,
    req: &HttpRequest,
    scope: &'static str,
    path: web::Path<(String, String)>,
) -> Result<(Principal, Uuid, Uuid), ApiError> {
    let (raw_client_id, raw_connection_id) = path.into_inner();
    let (principal, client_id) = authorize_client(state, req, scope, &raw_client_id).await?;
    let connection_id = parse_id(&raw_connection_id)?;
    Ok((principal, client_id, connection_id))
}

/// The client's connection, or 404 (also when it belongs to another client).
pub async fn existing_connection(
    state: &AppState,
    client_id: Uuid,
    connection_id: Uuid,
) -> Result<entity::connection::Model, ApiError> {
    Ok(state.connections.find(client_id, connection_id).await?)
}

/// The client, or 404.
pub async fn existing_client(state: &AppState, client_id: Uuid) -> Result<(), ApiError> {
    if state.connections.client_exists(client_id).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound)
    }
}

/// A path id that is not a UUID names nothing: 404.
fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound)
}
