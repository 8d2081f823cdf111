use sea_orm::entity::prelude::*;

/// A retired secret's digest: which connection it belonged to, when it stopped
/// verifying and why. Kept for the sighting window; digests only.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "retired_digests")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub digest: String,
    pub connection_id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    /// When it stopped (or stops, for a grace period still running) verifying.
    pub retired_at: DateTimeUtc,
    /// See `reason`.
    pub reason: String,
}

/// Why a digest retired.
pub mod reason {
    /// A rotation without a grace period, or one that displaced it.
    pub const ROTATED: &str = "rotated";
    /// The grace period a rotation gave it ended.
    pub const GRACE_ENDED: &str = "grace_ended";
    /// Its connection was deleted.
    pub const DELETED: &str = "deleted";
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
