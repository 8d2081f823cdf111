//! The audit trail: one `connection_events` row per write to a connection, written inside
//! the write's own transaction, and read back newest first.
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entity::{connection_event, secret_sighting};
use sea_orm::sea_query::{Alias, Expr, Order, UnionType};
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, ConnectionTrait, DbErr, EntityTrait as _,
    PaginatorTrait as _, QueryFilter as _, QuerySelect as _, QueryTrait as _,
};
use uuid::Uuid;

use crate::paging::{Page, PageRequest};

/// Who made a change, and from where: what every audit event records about its caller.
#[derive(Clone, Debug)]
pub struct Initiator {
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
    pub actor: &'a Initiator,
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
    let (id, row) = row(event);
    connection_event::Entity::insert(row)
        .exec_without_returning(conn)
        .await?;
    Ok(id)
}

/// The row of one audit event, and its id, for a write that inserts it itself.
pub fn row(event: NewEvent<'_>) -> (Uuid, connection_event::ActiveModel) {
    // Version 7 ids sort by time, so "newest first" has a stable tie-breaker.
    let id = Uuid::now_v7();
    let row = connection_event::ActiveModel {
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
    };
    (id, row)
}

/// One entry of a connection's trail: an audit event, or one day's sightings of a
/// retired or expired secret still presented (`stale_secret_presented`).
#[derive(Clone, Debug)]
pub enum Entry {
    Event(connection_event::Model),
    Sighting(secret_sighting::Model),
}

/// One page of a connection's trail, newest first: its audit events and its days of
/// stale-secret sightings, merged.
///
/// CAUTION: the database pages the merge (one ordered `UNION ALL` of ids and times, with
/// `LIMIT`/`OFFSET`), and only the page's rows are loaded: a request costs the memory of
/// one page however long the trail (a caller with write scope can grow it at will).
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
    // The same selections as the counts, reduced to what orders them.
    let mut merged = events
        .select_only()
        .expr_as(Expr::val(EVENT), "source")
        .column(connection_event::Column::Id)
        .column_as(connection_event::Column::OccurredAt, "at")
        .into_query();
    merged
        .union(
            UnionType::All,
            sightings
                .select_only()
                .expr_as(Expr::val(SIGHTING), "source")
                .column(secret_sighting::Column::Id)
                .column_as(secret_sighting::Column::LastSeenAt, "at")
                .into_query(),
        )
        // Version 7 ids sort by time: a stable tie-breaker within one instant.
        .order_by(Alias::new("at"), Order::Desc)
        .order_by(Alias::new("id"), Order::Desc)
        .limit(page.page_size)
        .offset(offset);
    let mut order = Vec::new();
    for row in conn.query_all(&merged).await? {
        let source: String = row.try_get("", "source")?;
        let id: Uuid = row.try_get("", "id")?;
        order.push((source == SIGHTING, id));
    }
    let event_ids = order.iter().filter(|(s, _)| !s).map(|(_, id)| *id);
    let sighting_ids = order.iter().filter(|(s, _)| *s).map(|(_, id)| *id);
    let mut events: HashMap<Uuid, connection_event::Model> = connection_event::Entity::find()
        .filter(connection_event::Column::Id.is_in(event_ids))
        .all(conn)
        .await?
        .into_iter()
        .map(|event| (event.id, event))
        .collect();
    let mut sightings: HashMap<Uuid, secret_sighting::Model> = secret_sighting::Entity::find()
        .filter(secret_sighting::Column::Id.is_in(sighting_ids))
        .all(conn)
        .await?
        .into_iter()
        .map(|sighting| (sighting.id, sighting))
        .collect();
    // A row deleted between the two reads (a pruned sighting) is left out of the page.
    let entries = order
        .into_iter()
        .filter_map(|(is_sighting, id)| {
            if is_sighting {
                sightings.remove(&id).map(Entry::Sighting)
            } else {
                events.remove(&id).map(Entry::Event)
            }
        })
        .collect();
    Ok(Page { entries, total })
}

/// What a row of the merged trail is, in the query's `source` column.
const EVENT: &str = "event";
const SIGHTING: &str = "sighting";
