//! The connection aggregate: rotation through per-client actors, verification, and the
//! persistence both rely on.
mod actor;
mod registry;
mod rotation;
mod verify;

pub use actor::ConnectionActor;
pub use registry::{ActiveActors, ConnectionRegistry};
pub use rotation::{Rotate, RotateError, Rotated, rotate};
pub use verify::{lookup_credential, view};

/// Kinds of audit events.
pub mod kinds {
    pub const SECRET_REFRESHED: &str = "secret_refreshed";
}
