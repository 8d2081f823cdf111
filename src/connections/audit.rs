//! The audit trail: one `connection_events` row per write to a connection, written inside
//! the write's own transaction, and read back newest first.
use chrono::{DateTime, Utc};
use entity::{connection_event, secret_sighting};
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

/// One entry of a connection's trail: an audit event, or one day's sightings of a
/// retired or expired secret still presented (`stale_secret_presented`).
#[derive(Clone, Debug)]
pub enum Entry {
    Event(connection_event::Model),
    Sighting(secret_sighting::Model),
}

impl Entry {
    /// When it happened: a sighting by its last presentation.
    fn at(&self) -> (DateTime<Utc>, Uuid) {
        match self {
            Self::Event(event) => (event.occurred_at, event.id),
            Self::Sighting(sighting) => (sighting.last_seen_at, sighting.id),
        }
    }
}

/// One page of a connection's trail, newest first: its audit events and its days of
/// stale-secret sightings, merged.
pub async fn events(
    conn: &impl ConnectionTrait,
    client_id: Uuid,
    connection_id: Uuid,
    page: PageRequest,
) -> Result<Page<Entry>, DbErr> {
    let events = connection_event::Entity::find()
        .filter(connection_event::Column::ConnectionId.eq(connection_id))
        .filter(connection_event::Column::ClientId.eq(client_id));
    let sightings = secret_sighting::Entity::find()
        .filter(secret_sighting::Column::ConnectionId.eq(connection_id))
        .filter(secret_sighting::Column::ClientId.eq(client_id));
    let total = events.clone().count(conn).await? + sightings.clone().count(conn).await?;
    let Some(offset) = page.offset_within(total) else {
        return Ok(Page::empty(total));
    };
    // The page's entries are among the first `offset + page_size` of each kind.
    let reach = offset.saturating_add(page.page_size);
    let events = events
        .order_by_desc(connection_event::Column::OccurredAt)
        .order_by_desc(connection_event::Column::Id)
        .limit(reach)
        .all(conn)
        .await?;
    let sightings = sightings
        .order_by_desc(secret_sighting::Column::LastSeenAt)
        .order_by_desc(secret_sighting::Column::Id)
        .limit(reach)
        .all(conn)
        .await?;
    let mut entries: Vec<Entry> = events
        .into_iter()
        .map(Entry::Event)
        .chain(sightings.into_iter().map(Entry::Sighting))
        .collect();
    entries.sort_by_key(|entry| std::cmp::Reverse(entry.at()));
    let entries = entries
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(page.page_size).unwrap_or(usize::MAX))
        .collect();
    Ok(Page { entries, total })
}
