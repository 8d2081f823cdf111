//! The rest of the connection resource: list, show, upsert, re-point, delete, and the
//! audit events. Each runs API.md's checks in order: token (401), scope (403), context
//! (403), existence (404), query or body (422).
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::initiator;
use crate::auth::scope;
use crate::connections::{Upsert, Upserted};
use crate::http::guard::{
    authorize_client, authorize_connection, existing_client, existing_connection,
};
use crate::http::schemas::{
    ConnectionListResponse, ConnectionResponse, ConnectionWithSecretResponse, ErrorResponse,
    EventListResponse, RepointRequest, UpsertRequest,
};
use crate::http::state::AppState;
use crate::http::views::{ConnectionView, ConnectionWithSecret, TrailEntry, with_secret_expiry};
use crate::http::{ApiError, Invalid, Paging, RequestMeta, input};

/// `GET /api/clients/{id}/connections`: the client's connections, paged and filtered.
///
/// Scope `connection:read`; context: the caller's own client, any for NHS and CABINET.
#[utoipa::path(
    get,
    path = "/api/clients/{id}/connections",
    summary = "List a client's connections (scope connection:read)",
    tag = "connections",
    params(
        ("id" = Uuid, Path, description = "The client (legal entity) id"),
        ("page" = Option<u64>, Query, description = "Page number, from 1 (default 1)", minimum = 1),
        ("page_size" = Option<u64>, Query, description = "Entries per page, 1 to 300 (default 50)", minimum = 1, maximum = 300),
        ("consumer_id" = Option<Uuid>, Query, description = "Only the connection to this consumer"),
        ("redirect_uri" = Option<String>, Query, description = "Only connections whose redirect_uri contains this text"),
    ),
    responses(
        (status = 200, description = "One page of connections, oldest first", body = ConnectionListResponse,
            headers(("x-secret-expires-at" = String, description = "Only with the `consumer_id` filter, which selects at most one connection: when its current secret expires under the lifetime policy (RFC 3339, UTC). Absent without the filter (one header cannot describe many secrets), and when the secret never expires"))),
        (status = 401, description = "No, unknown, expired or blocked token", body = ErrorResponse),
        (status = 403, description = "Invalid scopes, or the context rule refuses this client", body = ErrorResponse),
        (status = 404, description = "No such client, or the id is not a UUID", body = ErrorResponse),
        (status = 422, description = "A query parameter breaks its rules", body = ErrorResponse),
        (status = 503, description = "The database is unreachable", body = ErrorResponse),
    ),
    security(("bearer" = ["connection:read"]))
)]
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let (_, client_id) = authorize_client(&state, &req, scope::READ, &path).await?;
    existing_client(&state, client_id).await?;
    let mut invalid = Vec::new();
    let params = input::params(req.query_string())?;
    let page = input::page_request(&params, &mut invalid);
    let filter = input::list_filter(&params, &mut invalid);
    reject(invalid)?;
    let found = state.connections.list(client_id, &filter, page).await?;
    // One header describes one secret: only a list filtered to one consumer has it.
    let expires_at = match (filter.consumer_id, found.entries.as_slice()) {
        (Some(_), [only]) => only.secret_expires_at,
        _ => None,
    };
    let data: Vec<ConnectionView<'_>> = found.entries.iter().map(ConnectionView::from).collect();
    Ok(with_secret_expiry(
        meta.list(data, &Paging::of(page, found.total)),
        expires_at,
    ))
}

/// `GET /api/clients/{id}/connections/{connection_id}`: one connection, without its
/// secret.
///
/// Scope `connection:read`; context: the caller's own client, any for NHS and CABINET.
#[utoipa::path(
    get,
    path = "/api/clients/{id}/connections/{connection_id}",
    summary = "Show one connection (scope connection:read)",
    tag = "connections",
    params(
        ("id" = Uuid, Path, description = "The client (legal entity) id"),
        ("connection_id" = Uuid, Path, description = "The connection id"),
    ),
    responses(
        (status = 200, description = "The connection", body = ConnectionResponse,
            headers(("x-secret-expires-at" = String, description = "When this connection's current secret expires under the lifetime policy (RFC 3339, UTC); absent when it never expires"))),
        (status = 401, description = "No, unknown, expired or blocked token", body = ErrorResponse),
        (status = 403, description = "Invalid scopes, or the context rule refuses this client", body = ErrorResponse),
        (status = 404, description = "No such connection for this client, or an id is not a UUID", body = ErrorResponse),
        (status = 503, description = "The database is unreachable", body = ErrorResponse),
    ),
    security(("bearer" = ["connection:read"]))
)]
pub async fn show(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let (_, client_id, connection_id) =
        authorize_connection(&state, &req, scope::READ, path).await?;
    let connection = existing_connection(&state, client_id, connection_id).await?;
    Ok(with_secret_expiry(
        meta.object(StatusCode::OK, ConnectionView::from(&connection)),
        connection.secret_expires_at,
    ))
}

/// `PUT /api/clients/{id}/connections`: create the connection to `consumer_id`, or
/// re-point the existing one. 201 with the new secret when created, 200 without it when
/// updated.
///
/// Scope `connection:write`; context: the caller's own client, any for NHS and CABINET.
#[utoipa::path(
    put,
    path = "/api/clients/{id}/connections",
    summary = "Create or re-point the connection to a consumer (scope connection:write)",
    tag = "connections",
    params(("id" = Uuid, Path, description = "The client (legal entity) id")),
    request_body = UpsertRequest,
    responses(
        (status = 200, description = "The existing connection, re-pointed; no secret", body = ConnectionResponse,
            headers(("x-secret-expires-at" = String, description = "When this connection's current secret expires under the lifetime policy (RFC 3339, UTC); absent when it never expires"))),
        (status = 201, description = "A new connection and its secret, shown this once", body = ConnectionWithSecretResponse,
            headers(("x-secret-expires-at" = String, description = "When the new secret expires under the lifetime policy (RFC 3339, UTC); absent when it never expires"))),
        (status = 401, description = "No, unknown, expired or blocked token", body = ErrorResponse),
        (status = 403, description = "Invalid scopes, or the context rule refuses this client", body = ErrorResponse),
        (status = 404, description = "No such client, or the id is not a UUID", body = ErrorResponse),
        (status = 413, description = "The body is over 4 KiB", body = ErrorResponse),
        (status = 422, description = "The body breaks its rules, or the consumer is no client", body = ErrorResponse),
        (status = 503, description = "The database is unreachable", body = ErrorResponse),
    ),
    security(("bearer" = ["connection:write"]))
)]
pub async fn upsert(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let (principal, client_id) = authorize_client(&state, &req, scope::WRITE, &path).await?;
    existing_client(&state, client_id).await?;
    let body = input::body(&req, payload).await?;
    let fields = input::json_object(&body)?;
    let mut invalid = Vec::new();
    let consumer_id = input::consumer_id(&fields, &mut invalid);
    let redirect_uri = input::redirect_uri(&fields, &mut invalid);
    if let Some(consumer_id) = consumer_id
        && !state.connections.client_exists(consumer_id).await?
    {
        invalid.push(Invalid::json_property(
            "$.consumer_id",
            "existence",
            "no client has this id",
            vec![],
        ));
    }
    // Each `None` came with its `invalid` entry.
    let (Some(consumer_id), Some(redirect_uri), true) =
        (consumer_id, redirect_uri, invalid.is_empty())
    else {
        return Err(ApiError::Validation(invalid));
    };
    let upserted = state
        .connections
        .upsert(Upsert {
            client_id,
            consumer_id,
            redirect_uri,
            actor: initiator(&principal, &meta),
        })
        .await?;
    Ok(match upserted {
        Upserted::Created { connection, secret } => {
            tracing::info!(client_id = %client_id, connection_id = %connection.id, "connection created");
            with_secret_expiry(
                meta.object_with_secret(
                    StatusCode::CREATED,
                    ConnectionWithSecret::new(&connection, secret.expose()),
                ),
                connection.secret_expires_at,
            )
        }
        Upserted::Updated(changed) => {
            let connection = changed.connection;
            tracing::info!(client_id = %client_id, connection_id = %connection.id, "connection re-pointed");
            with_secret_expiry(
                meta.object(StatusCode::OK, ConnectionView::from(&connection)),
                connection.secret_expires_at,
            )
        }
    })
}

/// `PATCH /api/clients/{id}/connections/{connection_id}`: a new `redirect_uri`.
///
/// Scope `connection:write`; context: the caller's own client, any for NHS and CABINET.
#[utoipa::path(
    patch,
    path = "/api/clients/{id}/connections/{connection_id}",
    summary = "Re-point a connection (scope connection:write)",
    tag = "connections",
    params(
        ("id" = Uuid, Path, description = "The client (legal entity) id"),
        ("connection_id" = Uuid, Path, description = "The connection id"),
    ),
    request_body = RepointRequest,
    responses(
        (status = 200, description = "The connection, re-pointed; no secret", body = ConnectionResponse,
            headers(("x-secret-expires-at" = String, description = "When this connection's current secret expires under the lifetime policy (RFC 3339, UTC); absent when it never expires"))),
        (status = 401, description = "No, unknown, expired or blocked token", body = ErrorResponse),
        (status = 403, description = "Invalid scopes, or the context rule refuses this client", body = ErrorResponse),
        (status = 404, description = "No such connection for this client, or an id is not a UUID", body = ErrorResponse),
        (status = 413, description = "The body is over 4 KiB", body = ErrorResponse),
        (status = 422, description = "The body breaks its rules", body = ErrorResponse),
        (status = 503, description = "The database is unreachable", body = ErrorResponse),
    ),
    security(("bearer" = ["connection:write"]))
)]
pub async fn update(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let (principal, client_id, connection_id) =
        authorize_connection(&state, &req, scope::WRITE, path).await?;
    // Existence answers before the body is read (API.md's order).
    existing_connection(&state, client_id, connection_id).await?;
    let body = input::body(&req, payload).await?;
    let fields = input::json_object(&body)?;
    let mut invalid = Vec::new();
    let redirect_uri = input::redirect_uri(&fields, &mut invalid);
    let (Some(redirect_uri), true) = (redirect_uri, invalid.is_empty()) else {
        return Err(ApiError::Validation(invalid));
    };
    // NotFound again if it was deleted between the check above and the update.
    let updated = state
        .connections
        .repoint(
            client_id,
            connection_id,
            redirect_uri,
            initiator(&principal, &meta),
        )
        .await?;
    tracing::info!(client_id = %client_id, connection_id = %connection_id, "connection re-pointed");
    Ok(with_secret_expiry(
        meta.object(StatusCode::OK, ConnectionView::from(&updated)),
        updated.secret_expires_at,
    ))
}

/// `DELETE /api/clients/{id}/connections/{connection_id}`: 204, no body. Both of its
/// secrets stop verifying at once, through every cache (an `invalidate_credentials` job
/// is written with the delete).
///
/// Scope `connection:delete`; context: the caller's own client, any for NHS and CABINET.
#[utoipa::path(
    delete,
    path = "/api/clients/{id}/connections/{connection_id}",
    summary = "Delete a connection (scope connection:delete)",
    tag = "connections",
    params(
        ("id" = Uuid, Path, description = "The client (legal entity) id"),
        ("connection_id" = Uuid, Path, description = "The connection id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No, unknown, expired or blocked token", body = ErrorResponse),
        (status = 403, description = "Invalid scopes, or the context rule refuses this client", body = ErrorResponse),
        (status = 404, description = "No such connection for this client, or an id is not a UUID", body = ErrorResponse),
        (status = 503, description = "The database is unreachable", body = ErrorResponse),
    ),
    security(("bearer" = ["connection:delete"]))
)]
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let (principal, client_id, connection_id) =
        authorize_connection(&state, &req, scope::DELETE, path).await?;
    // Its secrets already fail here and, through Redis, on every other instance when
    // this returns.
    let deleted = state
        .connections
        .delete(client_id, connection_id, initiator(&principal, &meta))
        .await?;
    tracing::info!(
        client_id = %client_id,
        connection_id = %deleted.id,
        "connection deleted"
    );
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /api/clients/{id}/connections/{connection_id}/events`: the connection's audit
/// events, newest first, paged.
///
/// Scope `connection:read`; context: the caller's own client, any for NHS and CABINET.
#[utoipa::path(
    get,
    path = "/api/clients/{id}/connections/{connection_id}/events",
    summary = "A connection's audit events, newest first (scope connection:read)",
    tag = "connections",
    params(
        ("id" = Uuid, Path, description = "The client (legal entity) id"),
        ("connection_id" = Uuid, Path, description = "The connection id"),
        ("page" = Option<u64>, Query, description = "Page number, from 1 (default 1)", minimum = 1),
        ("page_size" = Option<u64>, Query, description = "Entries per page, 1 to 300 (default 50)", minimum = 1, maximum = 300),
    ),
    responses(
        (status = 200, description = "One page of audit events, newest first", body = EventListResponse),
        (status = 401, description = "No, unknown, expired or blocked token", body = ErrorResponse),
        (status = 403, description = "Invalid scopes, or the context rule refuses this client", body = ErrorResponse),
        (status = 404, description = "No such connection for this client, or an id is not a UUID", body = ErrorResponse),
        (status = 422, description = "A query parameter breaks its rules", body = ErrorResponse),
        (status = 503, description = "The database is unreachable", body = ErrorResponse),
    ),
    security(("bearer" = ["connection:read"]))
)]
pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let (_, client_id, connection_id) =
        authorize_connection(&state, &req, scope::READ, path).await?;
    existing_connection(&state, client_id, connection_id).await?;
    let mut invalid = Vec::new();
    let params = input::params(req.query_string())?;
    let page = input::page_request(&params, &mut invalid);
    reject(invalid)?;
    let found = state
        .connections
        .events(client_id, connection_id, page)
        .await?;
    let data: Vec<TrailEntry<'_>> = found.entries.iter().map(TrailEntry::from).collect();
    Ok(meta.list(data, &Paging::of(page, found.total)))
}

fn reject(invalid: Vec<Invalid>) -> Result<(), ApiError> {
    if invalid.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(invalid))
    }
}
