use sea_orm::entity::prelude::*;

/// The claim on an audit event's owner notice: one worker sends it, once.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sent_notifications")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub event_id: Uuid,
    /// When the row last changed state: claimed, sent, or dead.
    pub sent_at: DateTimeUtc,
    /// `sending` (claimed until `lease_until`), `sent`, or `dead`.
    pub state: String,
    /// A `sending` claim lapses then: a worker that died mid-send is replaced.
    pub lease_until: Option<DateTimeUtc>,
}

/// The states of a notice.
pub mod state {
    pub const SENDING: &str = "sending";
    pub const SENT: &str = "sent";
    pub const DEAD: &str = "dead";
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
