//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` attributes
//! and the view types, served at `/api/openapi.json` and rendered at `/docs/`.
//!
//! The envelope types here describe responses for the document only: handlers build
//! them through `RequestMeta` and the error type, so there is one envelope in code.
use std::sync::OnceLock;

use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

use super::views::{ConnectionView, ConnectionWithSecret, EventView, HealthView};
use super::{ApiError, Invalid, InvalidRule, Paging};
use crate::auth::scope;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mithril",
        description = "Rotates OAuth connection secrets for Ukraine's eHealth system. Every JSON \
            answer but this document uses the eHealth envelope: `meta` beside `data` (or \
            `error`); lists add `paging`. Each request's id comes back in the `x-request-id` \
            header and `meta.request_id`: the caller's own `x-request-id` if it sent 1 to 200 \
            printable ASCII characters, else a new UUID. Checks answer in this order: token \
            (401), scope (403), context (403), existence (404), body or query (422)."
    ),
    paths(
        super::manage::list,
        super::manage::upsert,
        super::manage::show,
        super::manage::update,
        super::manage::delete,
        super::manage::events,
        super::connections::refresh_secret,
        super::connections::verify,
        super::ops::live,
        super::ops::ready,
        super::ops::metrics,
        super::ops::openapi_json,
        super::ops::docs,
    ),
    components(schemas(Meta, MetaType, ErrorBody, Invalid, InvalidRule, Paging)),
    modifiers(&SecuritySchemes, &RequestIds),
    tags(
        (name = "connections", description = "Connections, their secrets and their audit trail"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The document as served, serialized once.
pub fn document() -> Result<&'static str, ApiError> {
    static DOCUMENT: OnceLock<Result<String, String>> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| ApiDoc::openapi().to_json().map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("serializing the OpenAPI document: {e}")))
}

/// `bearer`: the access token; each operation lists the scope it needs. `api_key`: a
/// connection secret, for the verify call only.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(format!(
                        "An access token issued to a user acting through a client. Each \
                         operation names the scope the token must carry: `{}`, `{}`, `{}` or \
                         `{}`. Context: MSP, PHARMACY, MSP_PHARMACY, MIS, MSP_LIMITED and any \
                         unknown client type act only on their own client id; NHS and CABINET \
                         on any.",
                        scope::READ,
                        scope::WRITE,
                        scope::DELETE,
                        scope::REFRESH_SECRET
                    )))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "api-key",
                "A connection secret, presented by a gateway to the verify call.",
            ))),
        );
    }
}

/// `x-request-id` on every operation: an optional request header, and a header of every
/// response (the envelope middleware sets it on all of them, errors included).
struct RequestIds;

impl Modify for RequestIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, RefOr, Required, Type};

        let string = || ObjectBuilder::new().schema_type(Type::String).build();
        let parameter = ParameterBuilder::new()
            .name(super::REQUEST_ID.as_str())
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "The caller's id for this request, echoed back: 1 to 200 printable ASCII \
                 characters. Absent or otherwise, the service makes a new UUID; it is never \
                 refused.",
            ))
            .schema(Some(string()))
            .build();
        let header = HeaderBuilder::new()
            .schema(Some(string()))
            .description(Some(
                "This request's id: the caller's own `x-request-id` when usable, else a new \
                 UUID. Equals `meta.request_id` in an envelope.",
            ))
            .build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                operation
                    .parameters
                    .get_or_insert_with(Vec::new)
                    .push(RefOr::T(parameter.clone()));
                for response in operation.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        response.headers.insert(
                            super::REQUEST_ID.as_str().to_owned(),
                            RefOr::T(header.clone()),
                        );
                    }
                }
            }
        }
    }
}

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
    pub data: Vec<EventView<'static>>,
    pub paging: Paging,
}

/// The verify call's `data`: the shape of `workers::credentials::ConnectionView`, which
/// the handler serializes (the workers crate does not depend on utoipa). The verify tests
/// pin its fields.
#[derive(Serialize, ToSchema)]
pub struct VerifiedView {
    pub id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    pub redirect_uri: String,
}

#[derive(Serialize, ToSchema)]
pub struct VerifiedResponse {
    pub meta: Meta,
    pub data: VerifiedView,
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
