//! The HTTP boundary: routes, the envelope, and the one error type.
mod connections;
mod envelope;
mod error;
mod views;

pub use envelope::{Paging, REQUEST_ID, RequestId, RequestMeta, envelope};
pub use error::{ApiError, Invalid, InvalidRule};

use actix_web::web;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/clients/{id}/connections/{connection_id}/actions/refresh_secret")
            .route(web::patch().to(connections::refresh_secret)),
    )
    .service(
        web::resource("/api/connections/actions/verify").route(web::post().to(connections::verify)),
    );
}
