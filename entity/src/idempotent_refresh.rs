use sea_orm::entity::prelude::*;

/// One `Idempotency-Key` of a refresh of one connection: found by `lookup`, a digest of
/// the key and the path's ids (never the key itself); `running` while its first request
/// runs, `done` with the answer sealed under a key derived from the caller's key.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotent_refreshes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub lookup: String,
    pub client_id: Uuid,
    pub connection_id: Uuid,
    /// A digest of the request's canonical body (the grace period asked for).
    pub fingerprint: String,
    /// See `state`.
    pub state: String,
    /// The request that holds (or held) it: tells its marker from a later one's.
    pub attempt: Uuid,
    /// `done`: the answer, sealed (base64 of nonce and ciphertext); `running`: none.
    pub sealed: Option<String>,
    /// `running`: another request may take it over after this (its first died).
    pub lease_until: Option<DateTimeUtc>,
    /// Forgotten after this: the key then rotates again.
    pub expires_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
}

/// The states of a key.
pub mod state {
    pub const RUNNING: &str = "running";
    pub const DONE: &str = "done";
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
