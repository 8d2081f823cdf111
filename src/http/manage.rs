//! Handlers of the rest of the connection resource: list, show, upsert, re-point, delete,
//! and the audit events. Each runs API.md's checks in order: token (401), scope (403),
//! context (403), existence (404), query or body (422).
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use uuid::Uuid;
use workers::credentials::{Invalidation, StillValid};

use super::connections::dispatch_outbox;
use super::openapi::{
    ConnectionListResponse, ConnectionResponse, ConnectionWithSecretResponse, ErrorResponse,
    EventListResponse, RepointRequest, UpsertRequest,
};
use super::views::{ConnectionView, ConnectionWithSecret, EventView};
use super::{ApiError, Invalid, Paging, RequestMeta, query};
use crate::app::AppState;
use crate::auth::{Principal, scope};
use crate::connections::manage::{self, ManageError, Upsert, Upserted};
use crate::connections::{Actor, audit};

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
        (status = 200, description = "One page of connections, oldest first", body = ConnectionListResponse),
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
    ensure_client_exists(&state, client_id).await?;
    let mut invalid = Vec::new();
    let params = query::params(req.query_string()).map_err(ApiError::Validation)?;
    let page = query::page_request(&params, &mut invalid);
    let filter = query::list_filter(&params, &mut invalid);
    reject(invalid)?;
    let found = manage::list(&state.db, client_id, &filter, page).await?;
    let data: Vec<ConnectionView<'_>> = found.entries.iter().map(ConnectionView::from).collect();
    Ok(meta.list(data, &Paging::of(page, found.total)))
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
        (status = 200, description = "The connection", body = ConnectionResponse),
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
    Ok(meta.object(StatusCode::OK, ConnectionView::from(&connection)))
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
        (status = 200, description = "The existing connection, re-pointed; no secret", body = ConnectionResponse),
        (status = 201, description = "A new connection and its secret, shown this once", body = ConnectionWithSecretResponse),
        (status = 401, description = "No, unknown, expired or blocked token", body = ErrorResponse),
        (status = 403, description = "Invalid scopes, or the context rule refuses this client", body = ErrorResponse),
        (status = 404, description = "No such client, or the id is not a UUID", body = ErrorResponse),
        (status = 422, description = "The body breaks its rules, or the consumer is no client", body = ErrorResponse),
        (status = 503, description = "The database is unreachable", body = ErrorResponse),
    ),
    security(("bearer" = ["connection:write"]))
)]
pub async fn upsert(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let (principal, client_id) = authorize_client(&state, &req, scope::WRITE, &path).await?;
    ensure_client_exists(&state, client_id).await?;
    let fields = query::json_object(&body).map_err(ApiError::Validation)?;
    let mut invalid = Vec::new();
    let consumer_id = query::consumer_id(&fields, &mut invalid);
    let redirect_uri = query::redirect_uri(&fields, &mut invalid);
    if let Some(consumer_id) = consumer_id
        && !manage::client_exists(&state.db, consumer_id).await?
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
    let upserted = manage::upsert(
        &state.db,
        Upsert {
            client_id,
            consumer_id,
            redirect_uri,
            actor: actor(&principal, &meta),
        },
    )
    .await?;
    Ok(match upserted {
        Upserted::Created { connection, secret } => {
            tracing::info!(client_id = %client_id, connection_id = %connection.id, "connection created");
            meta.object(
                StatusCode::CREATED,
                ConnectionWithSecret::new(&connection, secret.expose()),
            )
        }
        Upserted::Updated { connection } => {
            rewrite_cached_view(&state, &connection).await;
            tracing::info!(client_id = %client_id, connection_id = %connection.id, "connection re-pointed");
            meta.object(StatusCode::OK, ConnectionView::from(&connection))
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
        (status = 200, description = "The connection, re-pointed; no secret", body = ConnectionResponse),
        (status = 401, description = "No, unknown, expired or blocked token", body = ErrorResponse),
        (status = 403, description = "Invalid scopes, or the context rule refuses this client", body = ErrorResponse),
        (status = 404, description = "No such connection for this client, or an id is not a UUID", body = ErrorResponse),
        (status = 422, description = "The body breaks its rules", body = ErrorResponse),
        (status = 503, description = "The database is unreachable", body = ErrorResponse),
    ),
    security(("bearer" = ["connection:write"]))
)]
pub async fn update(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let (principal, client_id, connection_id) =
        authorize_connection(&state, &req, scope::WRITE, path).await?;
    // Existence answers before the body does (API.md's order).
    existing_connection(&state, client_id, connection_id).await?;
    let fields = query::json_object(&body).map_err(ApiError::Validation)?;
    let mut invalid = Vec::new();
    let redirect_uri = query::redirect_uri(&fields, &mut invalid);
    let (Some(redirect_uri), true) = (redirect_uri, invalid.is_empty()) else {
        return Err(ApiError::Validation(invalid));
    };
    let updated = manage::update_redirect_uri(
        &state.db,
        client_id,
        connection_id,
        redirect_uri,
        &actor(&principal, &meta),
    )
    .await?
    // Deleted between the check above and the update.
    .ok_or(ApiError::NotFound)?;
    rewrite_cached_view(&state, &updated).await;
    tracing::info!(client_id = %client_id, connection_id = %connection_id, "connection re-pointed");
    Ok(meta.object(StatusCode::OK, ConnectionView::from(&updated)))
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
    let deleted = manage::delete(
        &state.db,
        client_id,
        connection_id,
        &actor(&principal, &meta),
    )
    .await?
    .ok_or(ApiError::NotFound)?;
    // Before answering: its secrets must already fail here and, through Redis, on every
    // other instance (the outbox job repeats this until it succeeds).
    state.credentials.invalidate(&deleted.invalidation).await;
    dispatch_outbox(&state, vec![deleted.outbox_id]);
    tracing::info!(
        client_id = %client_id,
        connection_id = %deleted.connection.id,
        event_id = %deleted.event_id,
        outbox_id = %deleted.outbox_id,
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
    let params = query::params(req.query_string()).map_err(ApiError::Validation)?;
    let page = query::page_request(&params, &mut invalid);
    reject(invalid)?;
    let found = audit::events(&state.db, client_id, connection_id, page).await?;
    let data: Vec<EventView<'_>> = found.entries.iter().map(EventView::from).collect();
    Ok(meta.list(data, &Paging::of(page, found.total)))
}

/// Token, scope and context through the shared pipeline, then the path's client id as a
/// UUID (404 when it is not one).
pub(super) async fn authorize_client(
    state: &AppState,
    req: &HttpRequest,
    scope: &'static str,
    raw_client_id: &str,
) -> Result<(Principal, Uuid), ApiError> {
    let principal = state.authorize(req, scope, Some(raw_client_id)).await?;
    let client_id = parse_id(raw_client_id)?;
    Ok((principal, client_id))
}

/// `authorize_client` for a `/{id}/connections/{connection_id}` path, then the
/// connection id as a UUID (404 when it is not one).
pub(super) async fn authorize_connection(
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
pub(super) async fn existing_connection(
    state: &AppState,
    client_id: Uuid,
    connection_id: Uuid,
) -> Result<entity::connection::Model, ApiError> {
    manage::find(&state.db, client_id, connection_id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// A path id that is not a UUID names nothing: 404.
pub(super) fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound)
}

async fn ensure_client_exists(state: &AppState, client_id: Uuid) -> Result<(), ApiError> {
    if manage::client_exists(&state.db, client_id).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound)
    }
}

/// A re-point changes what verify answers for this connection's secrets (its
/// `redirect_uri`): every cache gets the new view, here at once and on other instances
/// through Redis. Best effort: the secrets stay valid either way, and the cache TTL
/// bounds how long a stale `redirect_uri` can be served if Redis is down.
async fn rewrite_cached_view(state: &AppState, connection: &entity::connection::Model) {
    let mut still_valid = vec![StillValid {
        digest: connection.secret_hash.clone(),
        valid_until: None,
    }];
    if let (Some(digest), Some(until)) = (
        &connection.previous_secret_hash,
        connection.previous_secret_expires_at,
    ) {
        still_valid.push(StillValid {
            digest: digest.clone(),
            valid_until: Some(until),
        });
    }
    let invalidation = Invalidation {
        connection: crate::connections::view(connection),
        retire: Vec::new(),
        still_valid,
    };
    state.credentials.invalidate(&invalidation).await;
}

fn reject(invalid: Vec<Invalid>) -> Result<(), ApiError> {
    if invalid.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(invalid))
    }
}

fn actor(principal: &Principal, meta: &RequestMeta) -> Actor {
    Actor {
        user_id: principal.user_id,
        client_id: principal.client_id,
        request_id: meta.request_id.clone(),
        remote_address: meta.remote_address.clone(),
    }
}

impl From<ManageError> for ApiError {
    fn from(err: ManageError) -> Self {
        match err {
            ManageError::Store(db) => db.into(),
            ManageError::Secret(e) | ManageError::Job(e) => ApiError::Internal(e),
        }
    }
}
