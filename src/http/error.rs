//! The one error type of the HTTP boundary, mapped once to API.md's statuses and bodies.
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::json;

use crate::auth::AuthError;
use crate::connections::ConnectionError;

/// One broken rule of a request body or query, in eHealth's `invalid` shape.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Invalid {
    /// `json_data_property` (a body field), `query_parameter` or `header`.
    #[schema(value_type = String)]
    pub entry_type: &'static str,
    /// JSONPath of the field, such as `$.redirect_uri`.
    pub entry: String,
    pub rules: Vec<InvalidRule>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InvalidRule {
    #[schema(value_type = String)]
    pub rule: &'static str,
    pub description: String,
    pub params: Vec<serde_json::Value>,
}

impl Invalid {
    pub fn json_property(
        entry: impl Into<String>,
        rule: &'static str,
        description: impl Into<String>,
        params: Vec<serde_json::Value>,
    ) -> Self {
        Self {
            entry_type: "json_data_property",
            entry: entry.into(),
            rules: vec![InvalidRule {
                rule,
                description: description.into(),
                params,
            }],
        }
    }

    pub fn header(
        entry: impl Into<String>,
        rule: &'static str,
        description: impl Into<String>,
    ) -> Self {
        Self {
            entry_type: "header",
            ..Self::json_property(entry, rule, description, Vec::new())
        }
    }

    pub fn query_parameter(
        entry: impl Into<String>,
        rule: &'static str,
        description: impl Into<String>,
        params: Vec<serde_json::Value>,
    ) -> Self {
        Self {
            entry_type: "query_parameter",
            ..Self::json_property(entry, rule, description, params)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No bearer header, unknown, expired or blocked token: always "Access denied".
    #[error("access denied")]
    AccessDenied,
    /// The verify endpoint's 401s, whose messages API.md fixes.
    #[error("invalid api key: {0}")]
    InvalidApiKey(&'static str),
    #[error("invalid scopes")]
    InvalidScopes,
    #[error("forbidden by the context rule")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("validation failed")]
    Validation(Vec<Invalid>),
    /// A body over the route's limit.
    #[error("request entity too large")]
    PayloadTooLarge,
    /// A refresh with an `Idempotency-Key` whose first request is still running.
    #[error("conflict")]
    Conflict,
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("a backing service is unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A body that is not readable at all (cut short, or refused by actix's extractor).
    pub fn unreadable_body() -> Self {
        Self::Validation(vec![Invalid::json_property(
            "$",
            "invalid",
            "the request body could not be read",
            vec![],
        )])
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            Self::AccessDenied | Self::InvalidApiKey(_) => "access_denied",
            Self::InvalidScopes | Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Validation(_) => "validation_failed",
            Self::PayloadTooLarge => "request_entity_too_large",
            Self::Conflict => "conflict",
            Self::TooManyRequests { .. } => "too_many_requests",
            Self::Unavailable(_) => "service_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Self::AccessDenied => "Access denied",
            Self::InvalidApiKey(message) => message,
            Self::InvalidScopes => "Invalid scopes",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Resource not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Validation(_) => {
                "Validation failed. You can find validators description at our API Manifest: http://docs.uaehealthapi.apiary.io/#introduction/interacting-with-api/errors."
            }
            Self::PayloadTooLarge => "Request entity too large",
            Self::Conflict => "A request with this Idempotency-Key is in progress; retry later",
            Self::TooManyRequests { .. } => "Too many requests",
            Self::Unavailable(_) => "Service unavailable",
            Self::Internal(_) => "Internal server error",
        }
    }

    /// The `error` object of the envelope. Never carries a cause chain.
    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({"type": self.error_type(), "message": self.message()});
        if let Self::Validation(invalid) = self {
            error["invalid"] = json!(invalid);
        }
        error
    }

    pub fn from_status(status: StatusCode) -> Self {
        match status.as_u16() {
            401 => Self::AccessDenied,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            413 => Self::PayloadTooLarge,
            415 | 400 | 422 => Self::unreadable_body(),
            503 => Self::Unavailable(anyhow::anyhow!("upstream answered 503")),
            _ => Self::Internal(anyhow::anyhow!("unmapped status {status}")),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::AccessDenied | Self::InvalidApiKey(_) => StatusCode::UNAUTHORIZED,
            Self::InvalidScopes | Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict => StatusCode::CONFLICT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Status and headers only: the envelope middleware, which wraps every route, writes
    /// the body (`error` and `meta`, which needs the request) once.
    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Internal(cause) | Self::Unavailable(cause) => {
                // The cause goes to the log only; the body stays generic.
                tracing::error!(
                    error = format!("{cause:#}"),
                    kind = self.error_type(),
                    "request failed"
                );
            }
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        if let Self::TooManyRequests { retry_after_secs } = self {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(*retry_after_secs)));
        }
        response.finish()
    }
}

/// A request's broken rules, every one of them: 422.
impl From<Vec<Invalid>> for ApiError {
    fn from(invalid: Vec<Invalid>) -> Self {
        Self::Validation(invalid)
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::AccessDenied => Self::AccessDenied,
            AuthError::InvalidScopes => Self::InvalidScopes,
            AuthError::Forbidden => Self::Forbidden,
            AuthError::Store(db) => db.into(),
            AuthError::Stopped => Self::Internal(anyhow::anyhow!("authorizer mailbox closed")),
        }
    }
}

impl From<ConnectionError> for ApiError {
    fn from(err: ConnectionError) -> Self {
        match err {
            ConnectionError::NotFound => Self::NotFound,
            ConnectionError::KeyTakenOver => Self::Conflict,
            ConnectionError::RateLimited { retry_after } => Self::TooManyRequests {
                retry_after_secs: crate::ratelimit::retry_after_secs(retry_after),
            },
            ConnectionError::Store(db) => db.into(),
            // Both pass: a retry reaches another instance, or this one's new actor.
            ConnectionError::ShuttingDown | ConnectionError::ActorStopped => {
                Self::Unavailable(err.into())
            }
            ConnectionError::Internal(e) => Self::Internal(e),
        }
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        if is_unavailable(&err) {
            Self::Unavailable(err.into())
        } else {
            Self::Internal(err.into())
        }
    }
}

/// Errors that mean "the database is not there right now", as opposed to a query that
/// failed: no connection to be had, a connection that broke mid-query (PostgreSQL
/// restarting or failing over), a server refusing work while it shuts down or starts,
/// SQLite still locked after its busy timeout. All are 503, never 500.
pub fn is_unavailable(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr, sqlx};
    let runtime = match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(runtime) | DbErr::Query(runtime) => runtime,
        _ => return false,
    };
    let RuntimeErr::SqlxError(sqlx) = runtime else {
        return false;
    };
    match sqlx.as_ref() {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else {
                return false;
            };
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                // Connection exceptions (08…), shutting down or starting (57P0…), too
                // many connections (53300).
                code.starts_with("08") || code.starts_with("57P0") || code == "53300"
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // Busy (5) and locked (6), extended codes included.
                matches!(code.parse::<u32>().map(|c| c & 0xff), Ok(5 | 6))
            } else {
                false
            }
        }
        _ => false,
    }
}
