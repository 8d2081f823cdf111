//! The HTTP boundary: routes, the envelope, and the one error type.
mod envelope;
mod error;
mod guard;
mod handlers;
mod headers;
mod input;
mod observe;
pub mod openapi;
mod peer;
pub mod schemas;
mod state;
mod views;

pub use envelope::{Paging, REQUEST_ID, RequestMeta, envelope};
pub use error::{ApiError, Invalid, InvalidRule};
pub use observe::observe;
pub use state::AppState;

use handlers::{ops, refresh, resource, verify};

use actix_web::web;
use utoipa_swagger_ui::{Config as SwaggerConfig, SwaggerUi};

/// Declares the route table once: `ROUTES` lists it for the OpenAPI test and `routes`
/// registers it with actix, one resource per path so a wrong method answers 405.
macro_rules! route_table {
    ($($path:literal => { $($method:ident => $handler:path),+ $(,)? }),+ $(,)?) => {
        /// Every route the app serves, as (lowercase method, path pattern). Path patterns
        /// use OpenAPI's `{name}` syntax, which is also actix's.
        pub const ROUTES: &[(&str, &str)] = &[$($((stringify!($method), $path),)+)+];

        pub fn routes(cfg: &mut web::ServiceConfig) {
            $(cfg.service(web::resource($path)$(.route(web::$method().to($handler)))+);)+
            // CAUTION: the one registration outside the table: the docs page's static
            // assets, built into the binary (`vendored`), under `/docs/`.
            cfg.service(
                SwaggerUi::new("/docs/{_:.*}")
                    .config(SwaggerConfig::new(["/api/openapi.json"]).try_it_out_enabled(true)),
            );
        }
    };
}

route_table! {
    "/api/clients/{id}/connections" => {
        get => resource::list,
        put => resource::upsert,
    },
    "/api/clients/{id}/connections/{connection_id}" => {
        get => resource::show,
        patch => resource::update,
        delete => resource::delete,
    },
    "/api/clients/{id}/connections/{connection_id}/events" => {
        get => resource::events,
    },
    "/api/clients/{id}/connections/{connection_id}/actions/refresh_secret" => {
        patch => refresh::refresh_secret,
    },
    "/api/connections/actions/verify" => {
        post => verify::verify,
    },
    "/health/live" => { get => ops::live },
    "/health/ready" => { get => ops::ready },
    "/metrics" => { get => ops::metrics },
    "/api/openapi.json" => { get => openapi::openapi_json },
    "/docs" => { get => ops::docs },
}
