//! mithril: rotates OAuth connection secrets for Ukraine's eHealth system.
//!
//! The API (`mithril serve`) authorizes each call through the `auth::Authorizer` actor,
//! rotates through one `connections::ConnectionActor` per client, and writes each
//! rotation, its audit event and its outbox rows in one transaction.
pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod connections;
pub mod db;
pub mod http;
pub mod outbox;
pub mod paging;
pub mod ratelimit;
pub mod readiness;
pub mod secrets;
pub mod seed;
pub mod telemetry;

pub use app::Application;
pub use config::Config;
pub use http::AppState;
