use sea_orm::entity::prelude::*;

/// A retired or expired secret some system still presents: one row per connection,
/// day and reason. Never the secret, nor its digest.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "secret_sightings")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub connection_id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    /// The UTC day of the presentations.
    pub day: Date,
    /// One of `reason`.
    pub reason: String,
    pub count: i64,
    pub first_seen_at: DateTimeUtc,
    pub last_seen_at: DateTimeUtc,
    /// The caller's address of the last presentation (through the trusted-proxy rule).
    pub last_address: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Why the presented secret was refused.
pub mod reason {
    /// Replaced, its grace period over, or its connection deleted.
    pub const RETIRED: &str = "retired";
    /// Past its expiry under the lifetime policy.
    pub const EXPIRED: &str = "expired";
}
