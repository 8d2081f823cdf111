//! The response and request shapes the OpenAPI document describes. Handlers build their
//! answers through `RequestMeta` and the error type, so there is one envelope in code;
//! these types exist for the document (and its tests) only.
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::views::{ConnectionView, ConnectionWithSecret, HealthView, TrailEntry, VerifiedView};
use super::{Invalid, Paging};

/// `meta` of every envelope.
#[derive(Serialize, ToSchema)]
pub struct Meta {
    /// The URL that was called.
    pub url: String,
    #[serde(rename = "type")]
    pub kind: MetaType,
    /// The HTTP status.
    pub code: u16,
    /// Equals the `x-request-id` response header.
    pub request_id: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetaType {
    Object,
    List,
}

/// `error` of an error envelope. `invalid` comes with 422 only.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// `access_denied`, `forbidden`, `not_found`, `method_not_allowed`,
    /// `validation_failed`, `too_many_requests`, `service_unavailable` or
    /// `internal_error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<Vec<Invalid>>,
}

/// Every error: `meta` and `error`, never `data`.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    pub meta: Meta,
    pub error: ErrorBody,
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionResponse {
    pub meta: Meta,
    #[schema(inline)]
    pub data: ConnectionView<'static>,
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionWithSecretResponse {
    pub meta: Meta,
    #[schema(inline)]
    pub data: ConnectionWithSecret<'static>,
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionListResponse {
    pub meta: Meta,
    pub data: Vec<ConnectionView<'static>>,
    pub paging: Paging,
}

#[derive(Serialize, ToSchema)]
pub struct EventListResponse {
    pub meta: Meta,
    pub data: Vec<TrailEntry<'static>>,
    pub paging: Paging,
}

#[derive(Serialize, ToSchema)]
pub struct VerifiedResponse {
    pub meta: Meta,
    #[schema(inline)]
    pub data: VerifiedView<'static>,
}

#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    pub meta: Meta,
    pub data: HealthView,
}

/// The upsert body.
#[derive(Serialize, ToSchema)]
pub struct UpsertRequest {
    /// An existing client: the MIS software the connection links to.
    pub consumer_id: Uuid,
    #[schema(pattern = "^https://[^/\\s]+(/\\S*)?$", max_length = 2048)]
    pub redirect_uri: String,
}

/// The re-point body.
#[derive(Serialize, ToSchema)]
pub struct RepointRequest {
    #[schema(pattern = "^https://[^/\\s]+(/\\S*)?$", max_length = 2048)]
    pub redirect_uri: String,
}

/// The refresh body; the body may also be empty.
#[derive(Serialize, ToSchema)]
pub struct RefreshRequest {
    /// Seconds the previous secret keeps working; 0 (the default) retires it at once.
    /// At most the configured maximum (default 7 days).
    #[schema(minimum = 0)]
    pub grace_period: Option<u64>,
}
