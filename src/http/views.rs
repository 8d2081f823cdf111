//! The shapes of requests and responses. The connection service hands the HTTP layer its
//! records (database models); they reach a caller only through these views, so no column
//! is answered unshaped.
use std::collections::BTreeMap;

use actix_web::HttpResponse;
use actix_web::http::header::{HeaderName, HeaderValue};
use chrono::{DateTime, SecondsFormat, Utc};
use entity::{connection, connection_event, secret_sighting};
use kernel::credentials::ConnectionIdentity;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::connections::audit;

/// RFC 3339, UTC, `Z` suffix.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// When the connection's current secret expires under the lifetime policy, RFC 3339 in
/// UTC; absent when it never expires. A header, since eHealth's response schemas allow
/// no extra field.
pub const SECRET_EXPIRES_AT: HeaderName = HeaderName::from_static("x-secret-expires-at");

/// `response` with `x-secret-expires-at` set to `expires_at` (nothing when `None`).
pub fn with_secret_expiry(
    mut response: HttpResponse,
    expires_at: Option<DateTime<Utc>>,
) -> HttpResponse {
    if let Some(value) = expires_at.and_then(|at| HeaderValue::from_str(&timestamp(at)).ok()) {
        response.headers_mut().insert(SECRET_EXPIRES_AT, value);
    }
    response
}

/// eHealth's connection with its new secret: exactly these seven fields.
#[derive(Serialize, ToSchema)]
pub struct ConnectionWithSecret<'a> {
    pub id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    pub redirect_uri: &'a str,
    /// Returned by this response only, never again.
    pub secret: &'a str,
    #[schema(value_type = String, format = DateTime)]
    pub inserted_at: String,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: String,
}

impl<'a> ConnectionWithSecret<'a> {
    pub fn new(connection: &'a connection::Model, secret: &'a str) -> Self {
        Self {
            id: connection.id,
            client_id: connection.client_id,
            consumer_id: connection.consumer_id,
            redirect_uri: &connection.redirect_uri,
            secret,
            inserted_at: timestamp(connection.inserted_at),
            updated_at: timestamp(connection.updated_at),
        }
    }
}

/// eHealth's connection without a secret: show, list, re-point, and an upsert that
/// updates.
#[derive(Serialize, ToSchema)]
pub struct ConnectionView<'a> {
    pub id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    pub redirect_uri: &'a str,
    #[schema(value_type = String, format = DateTime)]
    pub inserted_at: String,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: String,
}

impl<'a> From<&'a connection::Model> for ConnectionView<'a> {
    fn from(connection: &'a connection::Model) -> Self {
        Self {
            id: connection.id,
            client_id: connection.client_id,
            consumer_id: connection.consumer_id,
            redirect_uri: &connection.redirect_uri,
            inserted_at: timestamp(connection.inserted_at),
            updated_at: timestamp(connection.updated_at),
        }
    }
}

/// What verify answers: the connection a secret authenticates. Never the secret.
#[derive(Serialize, ToSchema)]
pub struct VerifiedView<'a> {
    pub id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    pub redirect_uri: &'a str,
}

impl<'a> From<&'a ConnectionIdentity> for VerifiedView<'a> {
    fn from(connection: &'a ConnectionIdentity) -> Self {
        Self {
            id: connection.id,
            client_id: connection.client_id,
            consumer_id: connection.consumer_id,
            redirect_uri: &connection.redirect_uri,
        }
    }
}

/// One audit event of a connection. Never holds a secret: only its version.
#[derive(Serialize, ToSchema)]
pub struct EventView<'a> {
    pub id: Uuid,
    /// `created`, `updated`, `secret_refreshed`, `deleted`, or `secret_expiry_set`
    /// (`mithril secrets apply-policy` gave an older secret its expiry).
    pub kind: &'a str,
    pub connection_id: Uuid,
    pub client_id: Uuid,
    pub actor_user_id: Uuid,
    pub actor_client_id: Uuid,
    pub request_id: &'a str,
    pub remote_address: Option<&'a str>,
    pub secret_version: Option<i64>,
    /// Seconds the previous secret stayed valid (rotations only).
    pub grace_period: Option<i64>,
    /// The expiry this event gave the secret under the lifetime policy (rotation,
    /// creation, `secret_expiry_set`); null when it gave none.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub secret_expires_at: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: String,
}

impl<'a> From<&'a connection_event::Model> for EventView<'a> {
    fn from(event: &'a connection_event::Model) -> Self {
        Self {
            id: event.id,
            kind: &event.kind,
            connection_id: event.connection_id,
            client_id: event.client_id,
            actor_user_id: event.actor_user_id,
            actor_client_id: event.actor_client_id,
            request_id: &event.request_id,
            remote_address: event.remote_address.as_deref(),
            secret_version: event.secret_version,
            grace_period: event.grace_period,
            secret_expires_at: event.secret_expires_at.map(timestamp),
            occurred_at: timestamp(event.occurred_at),
        }
    }
}

/// One day of a connection's trail where some system still presented a retired or
/// expired secret of it (`stale_secret_presented`). Never the secret.
#[derive(Serialize, ToSchema)]
pub struct SightingView<'a> {
    pub id: Uuid,
    /// Always `stale_secret_presented`.
    #[schema(value_type = String)]
    pub kind: &'static str,
    pub connection_id: Uuid,
    pub client_id: Uuid,
    /// The UTC day of the presentations, `YYYY-MM-DD`.
    #[schema(value_type = String, format = Date)]
    pub day: String,
    /// `retired` (replaced, its grace period over, or its connection deleted) or
    /// `expired` (past its expiry under the lifetime policy).
    pub reason: &'a str,
    /// Presentations that day.
    pub count: i64,
    #[schema(value_type = String, format = DateTime)]
    pub first_seen_at: String,
    #[schema(value_type = String, format = DateTime)]
    pub last_seen_at: String,
    /// The caller's address of the last presentation.
    pub last_address: Option<&'a str>,
}

/// The kind of a sighting entry in a connection's trail.
pub const STALE_SECRET_PRESENTED: &str = "stale_secret_presented";

impl<'a> From<&'a secret_sighting::Model> for SightingView<'a> {
    fn from(sighting: &'a secret_sighting::Model) -> Self {
        Self {
            id: sighting.id,
            kind: STALE_SECRET_PRESENTED,
            connection_id: sighting.connection_id,
            client_id: sighting.client_id,
            day: sighting.day.to_string(),
            reason: &sighting.reason,
            count: sighting.count,
            first_seen_at: timestamp(sighting.first_seen_at),
            last_seen_at: timestamp(sighting.last_seen_at),
            last_address: sighting.last_address.as_deref(),
        }
    }
}

/// One entry of a connection's trail: an audit event, or a day of sightings.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TrailEntry<'a> {
    Event(EventView<'a>),
    Sighting(SightingView<'a>),
}

impl<'a> From<&'a audit::Entry> for TrailEntry<'a> {
    fn from(entry: &'a audit::Entry) -> Self {
        match entry {
            audit::Entry::Event(event) => Self::Event(EventView::from(event)),
            audit::Entry::Sighting(sighting) => Self::Sighting(SightingView::from(sighting)),
        }
    }
}

/// The health endpoints' answer: `live`, or `ready` with each check's result.
#[derive(Serialize, ToSchema)]
pub struct HealthView {
    pub status: &'static str,
    /// Check name → `ok`.
    pub checks: BTreeMap<&'static str, &'static str>,
}
