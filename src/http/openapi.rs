//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` attributes
//! and the view types, served at `/api/openapi.json` and rendered at `/docs/`.
//!
//! The response shapes it names are in `schemas`.
use std::sync::OnceLock;

use actix_web::HttpResponse;
use actix_web::http::header::ContentType;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::schemas::{ErrorBody, Meta, MetaType};
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
        super::handlers::resource::list,
        super::handlers::resource::upsert,
        super::handlers::resource::show,
        super::handlers::resource::update,
        super::handlers::resource::delete,
        super::handlers::resource::events,
        super::handlers::refresh::refresh_secret,
        super::handlers::verify::verify,
        super::handlers::ops::live,
        super::handlers::ops::ready,
        super::handlers::ops::metrics,
        openapi_json,
        super::handlers::ops::docs,
    ),
    components(schemas(Meta, MetaType, ErrorBody, Invalid, InvalidRule, Paging)),
    modifiers(&SecuritySchemes, &RequestIds),
    tags(
        (name = "connections", description = "Connections, their secrets and their audit trail"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// `GET /api/openapi.json`: this API's OpenAPI 3.1 document. No scope.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    summary = "This OpenAPI document",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object, content_type = "application/json"))
)]
pub async fn openapi_json() -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok()
        .insert_header(ContentType::json())
        .body(document()?))
}

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
