//! The connection aggregate: one service owns each change's whole life (the
//! transaction, then every cache, then the queue); rotations run through per-client
//! actors; one function decides which digests authenticate; the audit trail.
mod actor;
pub mod audit;
mod compare_and_set;
mod effects;
mod error;
pub mod idempotency;
mod once;
mod outbox_rows;
mod plan;
pub mod policy;
mod registry;
pub mod retired;
mod rotation;
mod service;
mod sightings;
pub mod store;
pub mod validity;
pub(crate) mod writes;

pub use audit::Initiator;
pub use error::ConnectionError;
pub use rotation::{Remember, Rotate, Rotated};
pub use service::Service;
pub use store::ListFilter;
pub use writes::{Changed, Upsert, Upserted};

/// Kinds of audit events. (Outbox kinds are the job types' own, in `kernel::jobs`.)
pub mod kinds {
    pub const SECRET_REFRESHED: &str = "secret_refreshed";
    pub const CREATED: &str = "created";
    pub const UPDATED: &str = "updated";
    pub const DELETED: &str = "deleted";
    /// `mithril secrets apply-policy` gave a secret issued before the lifetime policy
    /// its expiry.
    pub const SECRET_EXPIRY_SET: &str = "secret_expiry_set";
}
