use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "connections")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    pub redirect_uri: String,
    /// Hex SHA-256 digest of the current secret.
    #[sea_orm(unique)]
    pub secret_hash: String,
    /// Digest of the secret replaced by the last rotation, accepted until
    /// `previous_secret_expires_at`.
    pub previous_secret_hash: Option<String>,
    pub previous_secret_expires_at: Option<DateTimeUtc>,
    /// Increases by exactly one per committed rotation.
    pub secret_version: i64,
    /// Increases with every write that changes what verify answers for this connection's
    /// secrets (rotation, re-point); cache entries carry it so they only move forward.
    pub state_version: i64,
    /// When the current secret stops verifying under the lifetime policy; `None`: never
    /// (secrets issued while the policy was off, until `secrets apply-policy`).
    pub secret_expires_at: Option<DateTimeUtc>,
    pub inserted_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::client::Entity",
        from = "Column::ClientId",
        to = "super::client::Column::Id",
        on_delete = "Cascade"
    )]
    Client,
}

impl Related<super::client::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Client.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
