use sea_orm::entity::prelude::*;

/// A job written in the same transaction as the change that caused it, pushed to the
/// queue after commit. Payloads carry ids and digests, never a plaintext secret.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// `notify_owner` or `invalidate_credentials`.
    pub kind: String,
    pub payload: Json,
    pub created_at: DateTimeUtc,
    pub dispatched_at: Option<DateTimeUtc>,
    pub attempts: i32,
    /// Set aside: the row can never be pushed (its payload does not decode as its kind).
    pub dead_at: Option<DateTimeUtc>,
    /// A `notify_owner` row whose notice is sent or dead: the reconciler is done with it.
    pub settled_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
