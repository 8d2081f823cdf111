//! Verify a connection secret: the gateways' path.
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use kernel::credentials::Verdict;

use crate::http::schemas::{ErrorResponse, VerifiedResponse};
use crate::http::state::AppState;
use crate::http::views::VerifiedView;
use crate::http::{ApiError, RequestMeta};
use crate::secrets::SecretDigest;

/// `POST /api/connections/actions/verify` with header `api-key`. No bearer token and no
/// scope: this is the gateways' path.
#[utoipa::path(
    post,
    path = "/api/connections/actions/verify",
    summary = "Verify a connection secret (header api-key; no token)",
    tag = "connections",
    responses(
        (status = 200, description = "The connection this secret authenticates; never the secret", body = VerifiedResponse),
        (status = 401, description = "api-key header not set, no connection has that secret (`invalid api-key header`), or the secret is past its expiry under the lifetime policy (`api-key expired`)", body = ErrorResponse),
        (status = 503, description = "The database is unreachable", body = ErrorResponse),
    ),
    security(("api_key" = []))
)]
pub async fn verify(
    req: HttpRequest,
    state: web::Data<AppState>,
    meta: RequestMeta,
) -> Result<HttpResponse, ApiError> {
    let Some(presented) = req.headers().get("api-key") else {
        return Err(ApiError::InvalidApiKey("api-key header not set"));
    };
    let digest = SecretDigest::of(presented.to_str().unwrap_or_default());
    let (verdict, layer) = state
        .connections
        .verify(&digest, meta.remote_address.as_deref())
        .await?;
    state.metrics.credential_lookup(layer.name());
    state.metrics.verified(verdict.outcome());
    // CAUTION: a retired secret and a wrong guess get the same answer: a caller learns
    // nothing from it; the owner learns of the retired one (a sighting).
    match verdict {
        Verdict::Accepted(connection) => {
            Ok(meta.object(StatusCode::OK, VerifiedView::from(&connection)))
        }
        Verdict::Expired(_) => Err(ApiError::InvalidApiKey("api-key expired")),
        Verdict::Retired(_) | Verdict::Unknown => {
            Err(ApiError::InvalidApiKey("invalid api-key header"))
        }
    }
}
