//! SeaORM entities of mithril's schema, and nothing else.
pub mod client;
pub mod client_type;
pub mod connection;
pub mod connection_event;
pub mod idempotent_refresh;
pub mod outbox;
pub mod retired_digest;
pub mod secret_reminder;
pub mod secret_sighting;
pub mod sent_notification;
pub mod token;
pub mod user;
