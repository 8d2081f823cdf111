use sea_orm::entity::prelude::*;

/// One audit record per write to a connection. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "connection_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub connection_id: Uuid,
    pub client_id: Uuid,
    /// `secret_refreshed`, `created`, `updated`, `deleted`.
    pub kind: String,
    pub actor_user_id: Uuid,
    pub actor_client_id: Uuid,
    pub request_id: String,
    pub remote_address: Option<String>,
    pub secret_version: Option<i64>,
    /// Seconds the previous secret stays valid.
    pub grace_period: Option<i64>,
    /// The expiry this event gave the connection's secret (rotation, creation, the
    /// lifetime policy applied); `None` when it gave none.
    pub secret_expires_at: Option<DateTimeUtc>,
    pub occurred_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
