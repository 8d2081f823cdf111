//! The eHealth envelope: `meta` beside `data` (or `error`), and the request id.
use std::future::{Ready, ready};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;

use super::error::ApiError;
use super::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of one request: the caller's `x-request-id` when it is 1 to 200 printable
/// ASCII characters, else a new UUID.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    fn for_request(req: &ServiceRequest) -> Self {
        req.headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                (1..=200).contains(&v.len()) && v.bytes().all(|b| (0x20..=0x7e).contains(&b))
            })
            .map(|v| Self(v.to_owned()))
            .unwrap_or_else(|| Self(new_request_id()))
    }
}

/// A random (version 4) UUID from this thread's generator: no system call per request.
/// Request ids need to be unique, not secret; secrets come from the OS generator.
fn new_request_id() -> String {
    use rand::RngExt as _;
    let bytes: [u8; 16] = rand::rng().random();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// What `meta` needs of the request, taken by handlers as an extractor.
#[derive(Clone, Debug)]
pub struct RequestMeta {
    pub url: String,
    pub request_id: String,
    /// The caller's address, for the audit trail: the TCP peer, or what a trusted
    /// proxy's forwarding header says (see `peer::remote_address`).
    pub remote_address: Option<String>,
}

impl RequestMeta {
    pub fn of(req: &HttpRequest) -> Self {
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default();
        let (trusted, header) = req
            .app_data::<actix_web::web::Data<AppState>>()
            .map(|state| {
                (
                    state.config.http.trusted_proxies.as_slice(),
                    state.config.http.forwarded_header,
                )
            })
            .unwrap_or_default();
        // The request as this instance received it: its scheme, its `Host`, its path and
        // query (not `connection_info()`, which parses forwarding headers per request).
        let config = req.app_config();
        let scheme = if config.secure() { "https" } else { "http" };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_else(|| config.host());
        Self {
            url: format!("{scheme}://{host}{}", req.uri()),
            request_id,
            remote_address: super::peer::remote_address(req, trusted, header)
                .map(|ip| ip.to_string()),
        }
    }

    fn meta(&self, kind: &'static str, status: StatusCode) -> Meta<'_> {
        Meta {
            url: &self.url,
            kind,
            code: status.as_u16(),
            request_id: &self.request_id,
        }
    }

    /// `{"meta": …, "data": …}`, serialized straight from `data` (no JSON tree between).
    pub fn object(&self, status: StatusCode, data: impl Serialize) -> HttpResponse {
        HttpResponse::build(status).json(Object {
            meta: self.meta("object", status),
            data,
        })
    }

    /// An object that holds a credential: never to be stored by a cache or a browser
    /// (RFC 6749 §5.1).
    pub fn object_with_secret(&self, status: StatusCode, data: impl Serialize) -> HttpResponse {
        let mut response = self.object(status, data);
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        response
    }

    pub fn list(&self, data: impl Serialize, paging: &Paging) -> HttpResponse {
        let status = StatusCode::OK;
        HttpResponse::build(status).json(List {
            meta: self.meta("list", status),
            data,
            paging,
        })
    }
}

/// `meta` of every envelope.
#[derive(Serialize)]
struct Meta<'a> {
    url: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    code: u16,
    request_id: &'a str,
}

#[derive(Serialize)]
struct Object<'a, T> {
    meta: Meta<'a>,
    data: T,
}

#[derive(Serialize)]
struct List<'a, T> {
    meta: Meta<'a>,
    data: T,
    paging: &'a Paging,
}

#[derive(Serialize)]
struct Failure<'a> {
    meta: Meta<'a>,
    error: serde_json::Value,
}

impl FromRequest for RequestMeta {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(Ok(Self::of(req)))
    }
}

/// The `paging` object beside `meta` in a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Paging {
    /// The page asked for, from 1 (it may lie past the last page: then `data` is empty).
    pub page_number: u64,
    pub page_size: u64,
    /// At least 1, as in eHealth's paginated lists, even when there are no entries.
    pub total_pages: u64,
    pub total_entries: u64,
}

impl Paging {
    pub fn of(page: crate::paging::PageRequest, total_entries: u64) -> Self {
        let total_pages = total_entries.div_ceil(page.page_size.max(1)).max(1);
        Self {
            page_number: page.page,
            page_size: page.page_size,
            total_pages,
            total_entries,
        }
    }
}

/// Middleware: assigns the request id, echoes it as `x-request-id`, and wraps every
/// error, including actix's own 404 and 405, in the envelope with `meta`.
pub async fn envelope(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let request_id = RequestId::for_request(&req);
    req.extensions_mut().insert(request_id.clone());
    let mut res = next.call(req).await?.map_into_boxed_body();

    let status = res.status();
    let error = match res.response().error() {
        Some(err) => Some(match err.as_error::<ApiError>() {
            Some(api) => (api.status_code(), api.body()),
            None => mapped(status),
        }),
        // Actix answers unmatched routes and methods itself, without an error value.
        None if (status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED)
            && !is_json(&res) =>
        {
            Some(mapped(status))
        }
        None => None,
    };
    if let Some((status, body)) = error {
        let meta = RequestMeta::of(res.request());
        let mut builder = HttpResponse::build(status);
        for (name, value) in res.headers() {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                builder.append_header((name.clone(), value.clone()));
            }
        }
        res = res.into_response(builder.json(Failure {
            meta: meta.meta("object", status),
            error: body,
        }));
    }
    if let Ok(value) = HeaderValue::from_str(&request_id.0) {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(res)
}

fn is_json(res: &ServiceResponse<BoxBody>) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// An error actix raised itself (an unmatched route, an unreadable payload), as the
/// API.md error it stands for.
fn mapped(status: StatusCode) -> (StatusCode, serde_json::Value) {
    let api = ApiError::from_status(status);
    (api.status_code(), api.body())
}
