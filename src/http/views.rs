//! What handlers put in `data`: request and response shapes, never database models.
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

/// RFC 3339, UTC, `Z` suffix.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// eHealth's connection with its new secret: exactly these seven fields.
#[derive(Serialize)]
pub struct ConnectionWithSecret<'a> {
    pub id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    pub redirect_uri: &'a str,
    pub secret: &'a str,
    pub inserted_at: String,
    pub updated_at: String,
}

impl<'a> ConnectionWithSecret<'a> {
    pub fn new(connection: &'a entity::connection::Model, secret: &'a str) -> Self {
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
