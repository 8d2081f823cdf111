//! The audit trail: one `connection_events` row per write to a connection, written inside
//! the write's own transaction, and read back newest first.
use chrono::{DateTime, Utc};
use entity::connection_event;
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, ConnectionTrait, DbErr, EntityTrait as _,
    PaginatorTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _,
};
use uuid::Uuid;

use crate::paging::{Page, PageRequest};

/// Who made a change, and from where: what every audit event records about its caller.
#[derive(Clone, Debug)]
pub struct Actor {
    pub user_id: Uuid,
    pub client_id: Uuid,
    pub request_id: String,
    /// The TCP peer's address, when known.
    pub remote_address: Option<String>,
}

/// One audit event to record. Never holds a secret: only its version.
#[derive(Clone, Debug)]
pub struct NewEvent<'a> {
    pub kind: &'static str,
    pub connection_id: Uuid,
    pub client_id: Uuid,
    pub actor: &'a Actor,
    pub secret_version: Option<i64>,
    /// Seconds the previous secret stays valid (rotations only).
    pub grace_period: Option<i64>,
    /// The expiry this change gave the secret (rotation and creation under the lifetime
    /// policy, and the policy applied to an older secret).
    pub secret_expires_at: Option<DateTime<Utc>>,
    pub occurred_at: DateTime<Utc>,
}

/// Writes one audit event through `conn`, which should be the transaction of the change
/// it records, so the event commits or rolls back with it. Returns the event's id.
pub async fn record(conn: &impl ConnectionTrait, event: NewEvent<'_>) -> Result<Uuid, DbErr> {
    // Version 7 ids sort by time, so "newest first" has a stable tie-breaker.
    let id = Uuid::now_v7();
    connection_event::Entity::insert(connection_event::ActiveModel {
        id: Set(id),
        connection_id: Set(event.connection_id),
        client_id: Set(event.client_id),
        kind: Set(event.kind.to_owned()),
        actor_user_id: Set(event.actor.user_id),
        actor_client_id: Set(event.actor.client_id),
        request_id: Set(event.actor.request_id.clone()),
        remote_address: Set(event.actor.remote_address.clone()),
        secret_version: Set(event.secret_version),
        grace_period: Set(event.grace_period),
        secret_expires_at: Set(event.secret_expires_at),
        occurred_at: Set(event.occurred_at),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(id)
}

/// One page of a connection's events, newest first.
pub async fn events(
    conn: &impl ConnectionTrait,
    client_id: Uuid,
    connection_id: Uuid,
    page: PageRequest,
) -> Result<Page<connection_event::Model>, DbErr> {
    let query = connection_event::Entity::find()
        .filter(connection_event::Column::ConnectionId.eq(connection_id))
        .filter(connection_event::Column::ClientId.eq(client_id));
    let total = query.clone().count(conn).await?;
    let Some(offset) = page.offset_within(total) else {
        return Ok(Page::empty(total));
    };
    let entries = query
        .order_by_desc(connection_event::Column::OccurredAt)
        .order_by_desc(connection_event::Column::Id)
        .offset(offset)
        .limit(page.page_size)
        .all(conn)
        .await?;
    Ok(Page { entries, total })
}
