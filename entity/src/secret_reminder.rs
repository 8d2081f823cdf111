use sea_orm::entity::prelude::*;

/// One reminder of one secret (a connection's secret version) for one threshold: queued,
/// claimed and sent once, however many worker processes run.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "secret_reminders")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub connection_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub secret_version: i64,
    /// A threshold as configured (`14d`, `3d`, `1d`, ...) or `expired`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub threshold: String,
    /// See `state`.
    pub state: String,
    /// `queued`: pushed again after it if still queued; `sending`: the claim lapses then.
    pub lease_until: Option<DateTimeUtc>,
    /// When the row last changed state.
    pub sent_at: DateTimeUtc,
}

/// The states of a reminder.
pub mod state {
    /// A job is on the queue; pushed again once `lease_until` passes (a lost job).
    pub const QUEUED: &str = "queued";
    /// A worker is sending it until `lease_until`.
    pub const SENDING: &str = "sending";
    pub const SENT: &str = "sent";
    /// It can never be sent (no owner, an address refused for good, retries ran out).
    pub const DEAD: &str = "dead";
    /// Not sent: a nearer threshold had already been reached when it came due (a secret
    /// first seen 2 days before it expires gets the `3d` reminder, not the `14d` one).
    pub const SKIPPED: &str = "skipped";
}

/// The threshold of the reminder sent once a secret has expired.
pub const EXPIRED: &str = "expired";

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
