//! Retention: finished work leaves after `MITHRIL_RETENTION`, in batches, so a busy
//! deployment's Redis and tables do not grow with every rotation. What goes: finished
//! jobs (in Redis: payload, metadata, result and their place in the done and dead sets;
//! in the database queue: their rows), the metadata of workers that are gone, settled
//! outbox rows (a notice's with its sent-or-dead record) and dispatched invalidations.
//! What stays: anything still in flight, and the audit trail, which is never pruned.
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use apalis_redis::{Config as RedisConfig, ConnectionManager};
use chrono::{DateTime, Utc};
use entity::{idempotent_refresh, outbox, sent_notification};
use sea_orm::{
    ColumnTrait as _, Condition, ConnectionTrait as _, DatabaseBackend, DatabaseConnection,
    EntityTrait as _, QueryFilter as _, QuerySelect as _, Statement,
};
use uuid::Uuid;

use kernel::jobs;
use kernel::queue::{Backend, Queue};

/// Rows or jobs one statement or script removes at most.
const BATCH: u64 = 1000;

/// How often the pruner runs: a tenth of the retention, from once a second to once an
/// hour.
fn period(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// What one pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub outbox_rows: u64,
    pub notices: u64,
    pub jobs: u64,
    pub gone_workers: u64,
    /// Remembered refresh answers past their own TTL (`MITHRIL_IDEMPOTENCY_TTL`, not
    /// the retention).
    pub idempotency_keys: u64,
}

impl Pruned {
    fn any(&self) -> bool {
        *self != Self::default()
    }
}

pub struct Pruner {
    pub db: DatabaseConnection,
    pub retention: Duration,
}

impl Pruner {
    /// Prunes every `period(retention)` until `stop` turns true.
    pub async fn run(self: Arc<Self>, queue: Queue, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(period(self.retention));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            match self.prune(&queue).await {
                Ok(pruned) if pruned.any() => tracing::info!(?pruned, "pruned finished work"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = format!("{e:#}"), "pruning failed; will retry"),
            }
        }
    }

    /// One pass over everything the retention covers.
    pub async fn prune(&self, queue: &Queue) -> anyhow::Result<Pruned> {
        // A retention past chrono's range prunes nothing.
        let Some(cutoff) = chrono::Duration::from_std(self.retention)
            .ok()
            .and_then(|retention| Utc::now().checked_sub_signed(retention))
        else {
            return Ok(Pruned::default());
        };
        let (outbox_rows, notices) = self.outbox(cutoff).await?;
        let idempotency_keys = self.idempotency_keys(Utc::now()).await?;
        let (jobs, gone_workers) = match queue.backend() {
            Backend::Redis(conn) => {
                let mut jobs = 0;
                let mut gone = 0;
                for kind in Queue::ALL_KINDS {
                    let config = queue.redis_config(kind);
                    jobs += redis_jobs(conn.clone(), &config, cutoff).await?;
                    gone += redis_gone_workers(conn.clone(), &config).await?;
                }
                (jobs, gone)
            }
            Backend::Sqlite(_) | Backend::Postgres(_) => (self.database_jobs(cutoff).await?, 0),
        };
        Ok(Pruned {
            outbox_rows,
            notices,
            jobs,
            gone_workers,
            idempotency_keys,
        })
    }

    /// Remembered refresh answers past their own expiry, a batch at a time.
    async fn idempotency_keys(&self, now: DateTime<Utc>) -> anyhow::Result<u64> {
        let mut pruned = 0;
        loop {
            let expired: Vec<String> = idempotent_refresh::Entity::find()
                .select_only()
                .column(idempotent_refresh::Column::Lookup)
                .filter(idempotent_refresh::Column::ExpiresAt.lt(now))
                .limit(BATCH)
                .into_tuple()
                .all(&self.db)
                .await
                .context("prune: idempotency keys")?;
            let found = expired.len();
            if found > 0 {
                pruned += idempotent_refresh::Entity::delete_many()
                    .filter(idempotent_refresh::Column::Lookup.is_in(expired))
                    .filter(idempotent_refresh::Column::ExpiresAt.lt(now))
                    .exec(&self.db)
                    .await
                    .context("prune: idempotency keys")?
                    .rows_affected;
            }
            if (found as u64) < BATCH {
                return Ok(pruned);
            }
        }
    }

    /// Outbox rows done with before `cutoff`: notices the reconciler settled (with their
    /// sent-or-dead records), rows set aside as dead, dispatched invalidations.
    ///
    // CAUTION: a notice's record goes only with its settled outbox row. The reconciler
    // reads the record of every unsettled notice row to tell a lost notice from a sent
    // one; a record pruned before its row was settled would have the notice mailed again.
    async fn outbox(&self, cutoff: DateTime<Utc>) -> anyhow::Result<(u64, u64)> {
        let (mut rows, mut notices) = (0, 0);
        loop {
            let batch: Vec<outbox::Model> = outbox::Entity::find()
                .filter(
                    Condition::any()
                        .add(outbox::Column::SettledAt.lt(cutoff))
                        .add(outbox::Column::DeadAt.lt(cutoff))
                        .add(
                            Condition::all()
                                .add(outbox::Column::Kind.eq(jobs::INVALIDATE_CREDENTIALS))
                                .add(outbox::Column::DispatchedAt.lt(cutoff)),
                        ),
                )
                .limit(BATCH)
                .all(&self.db)
                .await
                .context("prune: outbox rows")?;
            let events: Vec<Uuid> = batch
                .iter()
                .filter(|row| row.settled_at.is_some())
                .filter_map(|row| row.payload.get("event_id")?.as_str()?.parse().ok())
                .collect();
            if !events.is_empty() {
                notices += sent_notification::Entity::delete_many()
                    .filter(sent_notification::Column::EventId.is_in(events))
                    .exec(&self.db)
                    .await
                    .context("prune: notice records")?
                    .rows_affected;
            }
            let found = batch.len();
            if found > 0 {
                rows += outbox::Entity::delete_many()
                    .filter(outbox::Column::Id.is_in(batch.into_iter().map(|row| row.id)))
                    .exec(&self.db)
                    .await
                    .context("prune: outbox")?
                    .rows_affected;
            }
            if (found as u64) < BATCH {
                return Ok((rows, notices));
            }
        }
    }

    /// Finished job rows of the database queue (apalis-sqlite, apalis-postgres): done,
    /// killed, or failed for good, before `cutoff`.
    async fn database_jobs(&self, cutoff: DateTime<Utc>) -> anyhow::Result<u64> {
        let backend = self.db.get_database_backend();
        let statement = match backend {
            DatabaseBackend::Postgres => Statement::from_sql_and_values(
                backend,
                "DELETE FROM apalis.jobs WHERE id IN (SELECT id FROM apalis.jobs \
                 WHERE (status IN ('Done', 'Killed') \
                        OR (status = 'Failed' AND attempts >= max_attempts)) \
                   AND done_at < $1 LIMIT $2)",
                [cutoff.into(), (BATCH as i64).into()],
            ),
            _ => Statement::from_sql_and_values(
                backend,
                "DELETE FROM Jobs WHERE id IN (SELECT id FROM Jobs \
                 WHERE (status IN ('Done', 'Killed') \
                        OR (status = 'Failed' AND attempts >= max_attempts)) \
                   AND done_at < ? LIMIT ?)",
                [cutoff.timestamp().into(), (BATCH as i64).into()],
            ),
        };
        let mut total = 0;
        loop {
            let removed = self
                .db
                .execute_raw(statement.clone())
                .await
                .context("prune: queue rows")?
                .rows_affected();
            total += removed;
            if removed < BATCH {
                return Ok(total);
            }
        }
    }
}

/// Removes, for the ids given, each job finished (per its metadata) at or before
/// ARGV[1] (seconds): its payload, result and metadata, and its place in the set.
/// KEYS[1]: the done or dead set; KEYS[2]: the payload hash; KEYS[3]: the metadata
/// prefix. ARGV[2..]: job ids. Returns how many it removed.
const PRUNE_JOBS: &str = r#"
local cutoff = tonumber(ARGV[1])
local removed = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local meta = KEYS[3] .. ':' .. id
  local done_at = tonumber(redis.call('HGET', meta, 'done_at'))
  if done_at == nil or done_at <= cutoff then
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3] .. ':result', id)
    redis.call('DEL', meta)
    redis.call('SREM', KEYS[1], id)
    removed = removed + 1
  end
end
return removed
"#;

/// Finished jobs of one queue, a batch of ids at a time from its done and dead sets.
async fn redis_jobs(
    mut conn: ConnectionManager,
    config: &RedisConfig,
    cutoff: DateTime<Utc>,
) -> anyhow::Result<u64> {
    let script = redis::Script::new(PRUNE_JOBS);
    let mut removed = 0;
    for set in [config.done_jobs_set(), config.dead_jobs_set()] {
        let mut cursor: u64 = 0;
        loop {
            let (next, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(&set)
                .arg(cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await
                .context("prune: scanning finished jobs")?;
            if !ids.is_empty() {
                let mut invocation = script.key(&set);
                invocation
                    .key(config.job_data_hash())
                    .key(config.job_meta_hash())
                    .arg(cutoff.timestamp());
                for id in &ids {
                    invocation.arg(id);
                }
                removed += invocation
                    .invoke_async::<u64>(&mut conn)
                    .await
                    .context("prune: finished jobs")?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(removed)
}

/// The metadata of workers that are gone (no longer in the queue's workers set, which
/// apalis leaves once it has handed their jobs back).
async fn redis_gone_workers(
    mut conn: ConnectionManager,
    config: &RedisConfig,
) -> anyhow::Result<u64> {
    let workers = config.workers_set();
    let prefix = format!("{workers}:metadata:");
    let pattern = format!("{}*", glob_escape(&prefix));
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut conn)
            .await
            .context("prune: scanning worker metadata")?;
        for key in keys {
            let Some(name) = key.strip_prefix(&prefix) else {
                continue;
            };
            let seen: Option<f64> = redis::cmd("ZSCORE")
                .arg(&workers)
                .arg(name)
                .query_async(&mut conn)
                .await
                .context("prune: worker")?;
            if seen.is_none() {
                let deleted: u64 = redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .context("prune: worker metadata")?;
                removed += deleted;
            }
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

/// `text` as a literal in a Redis glob pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pruner_runs_a_tenth_of_the_retention_within_a_second_and_an_hour() {
        assert_eq!(period(Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(period(Duration::from_secs(600)), Duration::from_secs(60));
        assert_eq!(
            period(Duration::from_secs(30 * 86_400)),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn glob_characters_are_taken_literally() {
        assert_eq!(glob_escape("ns:a*b?[c]"), r"ns:a\*b\?\[c\]");
    }
}
