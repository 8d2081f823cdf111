//! Stale-secret sightings: a retired or expired secret that some system still presents.
//! Verify only counts them in memory, per connection, day and reason (a lock and a
//! hash-map update); a flush every few seconds writes one row per key, so a flood of
//! one stale secret costs one row update per flush. The first sighting of a retired
//! secret on a day queues the owner's notice, in the same transaction.
use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, NaiveDate, Utc};
use entity::{outbox, secret_sighting};
use kernel::credentials::ConnectionIds;
use kernel::jobs::NotifyStaleSecret;
use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait as _, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, DatabaseConnection, DbErr, EntityTrait as _,
    QueryFilter as _, TransactionTrait as _,
};
use uuid::Uuid;

use crate::outbox::OutboxRelay;

/// Why a presented secret was refused, for a sighting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Replaced, its grace period over, or its connection deleted.
    Retired,
    /// Past its expiry under the lifetime policy.
    Expired,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retired => secret_sighting::reason::RETIRED,
            Self::Expired => secret_sighting::reason::EXPIRED,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    connection_id: Uuid,
    day: NaiveDate,
    reason: Reason,
}

#[derive(Clone, Debug)]
struct Tally {
    client_id: Uuid,
    consumer_id: Uuid,
    count: i64,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    last_address: Option<String>,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.count += other.count;
        self.first_seen = Ord::min(self.first_seen, other.first_seen);
        if other.last_seen >= self.last_seen {
            self.last_seen = other.last_seen;
            self.last_address.clone_from(&other.last_address);
        }
    }
}

pub struct Sightings {
    pending: Mutex<HashMap<Key, Tally>>,
    db: DatabaseConnection,
    relay: OutboxRelay,
}

impl Sightings {
    pub fn new(db: DatabaseConnection, relay: OutboxRelay) -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
            db,
            relay,
        }
    }

    /// Counts one presentation of a secret of `of` refused for `reason`.
    pub fn record(
        &self,
        of: ConnectionIds,
        reason: Reason,
        at: DateTime<Utc>,
        address: Option<&str>,
    ) {
        let key = Key {
            connection_id: of.connection_id,
            day: at.date_naive(),
            reason,
        };
        let seen = Tally {
            client_id: of.client_id,
            consumer_id: of.consumer_id,
            count: 1,
            first_seen: at,
            last_seen: at,
            last_address: address.map(str::to_owned),
        };
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pending
            .entry(key)
            .and_modify(|tally| tally.add(&seen))
            .or_insert(seen);
    }

    /// Writes what was counted since the last flush; returns how many rows it wrote.
    /// What cannot be written (the database is away) is kept for the next flush.
    pub async fn flush(&self) -> anyhow::Result<usize> {
        let drained: Vec<(Key, Tally)> = {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::take(&mut *pending).into_iter().collect()
        };
        let mut notices = Vec::new();
        for (done, (key, tally)) in drained.iter().enumerate() {
            match self.write(key, tally).await {
                Ok(notice) => notices.extend(notice),
                Err(e) => {
                    self.keep(&drained[done..]);
                    self.relay.dispatch_in_background(notices);
                    return Err(anyhow::Error::new(e).context("writing sightings"));
                }
            }
        }
        self.relay.dispatch_in_background(notices);
        Ok(drained.len())
    }

    /// Puts tallies back, to be written by the next flush.
    fn keep(&self, tallies: &[(Key, Tally)]) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (key, tally) in tallies {
            pending
                .entry(*key)
                .and_modify(|kept| kept.add(tally))
                .or_insert_with(|| tally.clone());
        }
    }

    /// One key's tally into its row (created, or added to); with a new row of retired
    /// sightings, the owner's notice of the day, through the outbox. Returns that
    /// notice's outbox row.
    async fn write(&self, key: &Key, tally: &Tally) -> Result<Option<Uuid>, DbErr> {
        let txn = self.db.begin().await?;
        let created = secret_sighting::Entity::insert(secret_sighting::ActiveModel {
            id: Set(Uuid::now_v7()),
            connection_id: Set(key.connection_id),
            client_id: Set(tally.client_id),
            consumer_id: Set(tally.consumer_id),
            day: Set(key.day),
            reason: Set(key.reason.as_str().to_owned()),
            count: Set(tally.count),
            first_seen_at: Set(tally.first_seen),
            last_seen_at: Set(tally.last_seen),
            last_address: Set(tally.last_address.clone()),
        })
        .on_conflict(
            OnConflict::columns([
                secret_sighting::Column::ConnectionId,
                secret_sighting::Column::Day,
                secret_sighting::Column::Reason,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?
            == 1;
        let mut notice = None;
        if created {
            // CAUTION: once a connection a day: only the flush that created the day's
            // row (on whichever instance) queues the notice, and the notice's claim is
            // keyed by connection and day as well.
            if key.reason == Reason::Retired {
                let now = Utc::now();
                let job = NotifyStaleSecret {
                    event_id: NotifyStaleSecret::event_id(key.connection_id, key.day),
                    connection_id: key.connection_id,
                    client_id: tally.client_id,
                    consumer_id: tally.consumer_id,
                    day: key.day,
                    occurred_at: Some(now),
                    traceparent: kernel::trace::traceparent(),
                };
                let (id, row) = super::outbox_rows::row(&job, now)
                    .map_err(|e| DbErr::Custom(format!("encoding a notice: {e}")))?;
                outbox::Entity::insert(row)
                    .exec_without_returning(&txn)
                    .await?;
                notice = Some(id);
            }
        } else {
            let last_seen = Expr::col(secret_sighting::Column::LastSeenAt);
            let first_seen = Expr::col(secret_sighting::Column::FirstSeenAt);
            let newer = last_seen.clone().lt(tally.last_seen);
            secret_sighting::Entity::update_many()
                .col_expr(
                    secret_sighting::Column::Count,
                    Expr::col(secret_sighting::Column::Count).add(tally.count),
                )
                .col_expr(
                    secret_sighting::Column::FirstSeenAt,
                    CaseStatement::new()
                        .case(
                            first_seen.clone().gt(tally.first_seen),
                            Expr::value(tally.first_seen),
                        )
                        .finally(first_seen)
                        .into(),
                )
                .col_expr(
                    secret_sighting::Column::LastAddress,
                    CaseStatement::new()
                        .case(newer.clone(), Expr::value(tally.last_address.clone()))
                        .finally(Expr::col(secret_sighting::Column::LastAddress))
                        .into(),
                )
                .col_expr(
                    secret_sighting::Column::LastSeenAt,
                    CaseStatement::new()
                        .case(newer, Expr::value(tally.last_seen))
                        .finally(last_seen)
                        .into(),
                )
                .filter(secret_sighting::Column::ConnectionId.eq(key.connection_id))
                .filter(secret_sighting::Column::Day.eq(key.day))
                .filter(secret_sighting::Column::Reason.eq(key.reason.as_str()))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(notice)
    }
}

/// Forgets sightings of days before `before`; returns how many rows.
pub async fn prune(db: &DatabaseConnection, before: DateTime<Utc>) -> Result<u64, DbErr> {
    Ok(secret_sighting::Entity::delete_many()
        .filter(secret_sighting::Column::Day.lt(before.date_naive()))
        .exec(db)
        .await?
        .rows_affected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_add_up_and_keep_the_latest_address() {
        let at = Utc::now();
        let mut tally = Tally {
            client_id: Uuid::nil(),
            consumer_id: Uuid::nil(),
            count: 2,
            first_seen: at,
            last_seen: at,
            last_address: Some("10.0.0.1".into()),
        };
        let later = Tally {
            count: 3,
            first_seen: at - chrono::Duration::seconds(5),
            last_seen: at + chrono::Duration::seconds(5),
            last_address: Some("10.0.0.2".into()),
            ..tally.clone()
        };
        tally.add(&later);
        assert_eq!(tally.count, 5);
        assert_eq!(tally.first_seen, later.first_seen);
        assert_eq!(tally.last_address.as_deref(), Some("10.0.0.2"));
    }
}
