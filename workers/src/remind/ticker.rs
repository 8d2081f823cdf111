//! The reminder ticker: in every worker process, every `MITHRIL_REMINDER_INTERVAL`, it
//! finds the secrets due a reminder, marks each `queued` (one ticker wins) and pushes its
//! job; and it refreshes the expiry gauges.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::connection;
use entity::secret_reminder::{self, EXPIRED, state};
use kernel::jobs::RemindOwner;
use kernel::metrics::Registry;
use kernel::queue::Queue;
use kernel::thresholds::Thresholds;
use sea_orm::sea_query::{Expr, ExprTrait as _, Query};
use sea_orm::{
    ColumnTrait as _, DatabaseConnection, DbErr, EntityTrait as _, PaginatorTrait as _, QueryFilter,
};
use uuid::Uuid;

use super::{Key, REQUEUE_AFTER};
use crate::claim::{Claimable as _, Claims, lapsed, lease_until};

/// Candidate connections looked up per query of reminder rows.
const CHUNK: usize = 500;

/// Finds the secrets due a reminder and pushes one job for each, and refreshes the
/// expiry gauges: every `interval`, in every worker process.
pub struct Ticker {
    pub db: DatabaseConnection,
    pub thresholds: Thresholds,
    pub interval: Duration,
    pub metrics: Registry,
}

impl Ticker {
    /// Ticks until `stop` turns true; the first tick is at once.
    pub async fn run(self: Arc<Self>, queue: Queue, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(self.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.tick(&queue, Utc::now()).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "reminder tick failed; the next one retries"
                );
            }
            self.metrics.ticked();
        }
    }

    /// One tick at `now`: the gauges, then a job for every reminder due and neither
    /// settled nor in hand. Returns how many jobs it pushed.
    pub async fn tick(&self, queue: &Queue, now: DateTime<Utc>) -> anyhow::Result<usize> {
        self.refresh_gauges(now).await?;
        let due = self.due(now).await?;
        let mut pushed = 0;
        for job in due {
            let key = Key::of(&job);
            if !self.take_for_queue(key, now).await? {
                continue;
            }
            if let Err(e) = queue.push_reminder(job.clone()).await {
                // Free it for the next tick, and stop: the queue is down.
                key.filter(secret_reminder::Entity::update_many())
                    .col_expr(secret_reminder::Column::LeaseUntil, Expr::value(now))
                    .filter(secret_reminder::Column::State.eq(state::QUEUED))
                    .exec(&self.db)
                    .await?;
                return Err(anyhow::anyhow!("pushing a reminder: {e}"));
            }
            pushed += 1;
        }
        Ok(pushed)
    }

    async fn refresh_gauges(&self, now: DateTime<Utc>) -> Result<(), DbErr> {
        let expired = connection::Entity::find()
            .filter(connection::Column::SecretExpiresAt.lte(now))
            .count(&self.db)
            .await?;
        self.metrics.secrets_expired(expired);
        for threshold in self.thresholds.iter() {
            let expiring = connection::Entity::find()
                .filter(connection::Column::SecretExpiresAt.gt(now))
                .filter(connection::Column::SecretExpiresAt.lte(lease_until(now, threshold.within)))
                .count(&self.db)
                .await?;
            self.metrics.secrets_expiring(&threshold.label, expiring);
        }
        Ok(())
    }

    /// The reminders due at `now` with no row that settles them or holds them.
    async fn due(&self, now: DateTime<Utc>) -> Result<Vec<RemindOwner>, DbErr> {
        // Secrets whose `expired` reminder is settled are done with for good.
        let finished = Query::select()
            .expr(Expr::val(1))
            .from(secret_reminder::Entity)
            .and_where(
                Expr::col((
                    secret_reminder::Entity,
                    secret_reminder::Column::ConnectionId,
                ))
                .equals((connection::Entity, connection::Column::Id)),
            )
            .and_where(
                Expr::col((
                    secret_reminder::Entity,
                    secret_reminder::Column::SecretVersion,
                ))
                .equals((connection::Entity, connection::Column::SecretVersion)),
            )
            .and_where(
                Expr::col((secret_reminder::Entity, secret_reminder::Column::Threshold))
                    .eq(EXPIRED),
            )
            .and_where(
                Expr::col((secret_reminder::Entity, secret_reminder::Column::State)).is_in([
                    state::SENT,
                    state::DEAD,
                    state::SKIPPED,
                ]),
            )
            .to_owned();
        let candidates = connection::Entity::find()
            .filter(
                connection::Column::SecretExpiresAt.lte(lease_until(now, self.thresholds.widest())),
            )
            .filter(Expr::exists(finished).not())
            .all(&self.db)
            .await?;
        let mut due = Vec::new();
        for chunk in candidates.chunks(CHUNK) {
            let rows: HashMap<(Uuid, i64, String), secret_reminder::Model> =
                secret_reminder::Entity::find()
                    .filter(secret_reminder::Column::ConnectionId.is_in(chunk.iter().map(|c| c.id)))
                    .all(&self.db)
                    .await?
                    .into_iter()
                    .map(|r| ((r.connection_id, r.secret_version, r.threshold.clone()), r))
                    .collect();
            for candidate in chunk {
                let Some(expires_at) = candidate.secret_expires_at else {
                    continue;
                };
                let Some(label) = self
                    .thresholds
                    .due(expires_at, now)
                    .label()
                    .map(str::to_owned)
                else {
                    continue;
                };
                let in_hand = rows
                    .get(&(candidate.id, candidate.secret_version, label.clone()))
                    .is_some_and(|row| {
                        !(row.state == state::QUEUED || row.state == state::SENDING)
                            || row.lease_until.is_some_and(|until| until > now)
                    });
                if !in_hand {
                    due.push(RemindOwner {
                        connection_id: candidate.id,
                        secret_version: candidate.secret_version,
                        threshold: label,
                        expires_at,
                        queued_at: Some(now),
                    });
                }
            }
        }
        Ok(due)
    }

    /// Marks the reminder queued, unless another ticker did first (or it is settled or
    /// being sent); true when this ticker is to push its job.
    async fn take_for_queue(&self, key: Key<'_>, now: DateTime<Utc>) -> Result<bool, DbErr> {
        let until = Some(lease_until(now, REQUEUE_AFTER));
        let claims = Claims {
            db: &self.db,
            lease: REQUEUE_AFTER,
        };
        claims
            .take(&key, state::QUEUED, until, lapsed::<Key>(now))
            .await
    }
}
