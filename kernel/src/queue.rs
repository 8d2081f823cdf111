//! The job queue: apalis on Redis when `REDIS_URL` is set, else on the service's own
//! database (SQLite or PostgreSQL), sharing SeaORM's connection pool.
use anyhow::Context as _;
use apalis::prelude::TaskSink as _;
use apalis_postgres::PostgresStorage;
use apalis_redis::{Config as RedisConfig, ConnectionManager, RedisStorage};
use apalis_sqlite::SqliteStorage;
use sea_orm::sqlx::{PgPool, SqlitePool};
use sea_orm::{DatabaseBackend, DatabaseConnection};

use crate::jobs::{InvalidateCredentials, Job, NotifyOwner, NotifyStaleSecret, RemindOwner};
use crate::redis_connect::RedisKeys;

/// How often a worker tells the queue it lives, and how many beats it may miss before
/// the queue hands its jobs to another worker: 20 s, where apalis's defaults wait 60 s
/// (database) or 300 s (Redis) after a worker killed mid-job.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);
const MISSED_HEARTBEATS: usize = 4;

/// Where the queue lives: a handle, cheap to clone, from which each job type's storage
/// is made when needed.
#[derive(Clone)]
pub enum Backend {
    Redis(ConnectionManager),
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The queue of every job type, on one backend.
///
/// Each job type has its own queue (`RedisKeys::queue` of its kind); a job type's storage
/// on any backend is made by `redis`, `sqlite` or `postgres`, so a new job kind is a
/// `Job` impl and an entry in `OUTBOX_KINDS` (if the outbox carries it), nothing here.
#[derive(Clone)]
pub struct Queue {
    backend: Backend,
    keys: RedisKeys,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("unknown job kind {0:?}")]
    UnknownKind(String),
    #[error("the payload does not decode as its job type: {0}")]
    Payload(#[from] serde_json::Error),
    #[error("the queue refused the job: {0}")]
    Push(String),
}

/// Creates the queue's tables in the service's SQLite database: only those, as `setup`
/// would also turn `synchronous` off on it, trading durability of committed rotations.
///
/// CAUTION: sqlx locks PostgreSQL's migrations (an advisory lock) but not SQLite's, so
/// processes starting together on a new database (`serve` and `mithril-workers`) all run
/// them, and the slower fail on what the faster just did ("duplicate column name"). Each
/// migration is a transaction of its own, so a failed one leaves nothing behind, and a
/// retry finds the other's work recorded.
async fn create_sqlite_queue(pool: &SqlitePool) -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 10;
    let mut attempt = 1;
    loop {
        match SqliteStorage::<()>::migrations().run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= ATTEMPTS => {
                return Err(e).context("creating the queue tables");
            }
            Err(e) => {
                tracing::debug!(attempt, error = %e, "creating the queue tables raced another process; again");
                tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
        }
    }
}

/// Checks that an outbox payload decodes as the job type of its kind.
type Check = fn(&serde_json::Value) -> Result<(), serde_json::Error>;

fn decodes<J: Job>(payload: &serde_json::Value) -> Result<(), serde_json::Error> {
    J::deserialize(payload).map(drop)
}

impl Queue {
    /// The job types the outbox carries (reminders are pushed by the ticker, with no
    /// outbox row), and the check of each one's payload.
    const OUTBOX_KINDS: [(&'static str, Check); 3] = [
        (NotifyOwner::KIND, decodes::<NotifyOwner>),
        (
            InvalidateCredentials::KIND,
            decodes::<InvalidateCredentials>,
        ),
        (NotifyStaleSecret::KIND, decodes::<NotifyStaleSecret>),
    ];

    /// The outbox kinds this release pushes.
    pub const KINDS: [&'static str; 3] = [
        NotifyOwner::KIND,
        InvalidateCredentials::KIND,
        NotifyStaleSecret::KIND,
    ];

    /// Every job type's kind, the ticker's included: the queues there are.
    pub const ALL_KINDS: [&'static str; 4] = [
        NotifyOwner::KIND,
        InvalidateCredentials::KIND,
        NotifyStaleSecret::KIND,
        RemindOwner::KIND,
    ];

    /// `namespace` prefixes the queue names, so deployments (or tests) can share a Redis.
    pub async fn connect(
        db: &DatabaseConnection,
        redis: Option<ConnectionManager>,
        namespace: &str,
    ) -> anyhow::Result<Self> {
        let keys = RedisKeys::new(namespace);
        let backend = match (redis, db.get_database_backend()) {
            (Some(conn), _) => Backend::Redis(conn),
            (None, DatabaseBackend::Postgres) => {
                let pool = db.get_postgres_connection_pool();
                // Only the queue's tables: `setup` would also change session settings.
                PostgresStorage::<()>::migrations()
                    .run(pool)
                    .await
                    .context("creating the queue tables")?;
                Backend::Postgres(pool.clone())
            }
            (None, _) => {
                let pool = db.get_sqlite_connection_pool();
                create_sqlite_queue(pool).await?;
                Backend::Sqlite(pool.clone())
            }
        };
        Ok(Self { backend, keys })
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The Redis queue of `kind`: its name, and how workers beat on it.
    pub fn redis_config(&self, kind: &str) -> RedisConfig {
        RedisConfig::default()
            .queue(self.keys.queue(kind))
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(MISSED_HEARTBEATS)
    }

    /// `J`'s storage on Redis.
    pub fn redis<J: Job>(&self, conn: &ConnectionManager) -> RedisStorage<J> {
        self.redis_of(conn, J::KIND)
    }

    /// `J`'s storage on SQLite.
    pub fn sqlite<J: Job>(&self, pool: &SqlitePool) -> SqliteStorage<J> {
        self.sqlite_of(pool, J::KIND)
    }

    /// `J`'s storage on PostgreSQL.
    pub fn postgres<J: Job>(&self, pool: &PgPool) -> PostgresStorage<J> {
        self.postgres_of(pool, J::KIND)
    }

    /// The storage of `kind`'s queue on Redis, holding `T`s: a job type for its workers,
    /// JSON for the push of a checked payload.
    fn redis_of<T>(&self, conn: &ConnectionManager, kind: &str) -> RedisStorage<T> {
        RedisStorage::new(conn.clone()).with_config(self.redis_config(kind))
    }

    fn sqlite_of<T>(&self, pool: &SqlitePool, kind: &str) -> SqliteStorage<T> {
        let config = apalis_sqlite::Config::default()
            .queue(self.keys.queue(kind))
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(MISSED_HEARTBEATS);
        SqliteStorage::new(pool).with_config(config)
    }

    fn postgres_of<T>(&self, pool: &PgPool, kind: &str) -> PostgresStorage<T> {
        let config = apalis_postgres::Config::default()
            .queue(self.keys.queue(kind))
            .heartbeat_interval(HEARTBEAT)
            .missed_heartbeats(MISSED_HEARTBEATS);
        PostgresStorage::new(pool).with_config(config)
    }

    /// Jobs of `kind` waiting to be taken (neither running, done nor dead).
    pub async fn depth(&self, kind: &str) -> anyhow::Result<u64> {
        let queue = self.keys.queue(kind);
        let waiting: i64 =
            match &self.backend {
                // apalis keeps a Redis queue's waiting jobs in the list `<queue>:active`.
                Backend::Redis(conn) => {
                    redis::cmd("LLEN")
                        .arg(format!("{queue}:active"))
                        .query_async(&mut conn.clone())
                        .await?
                }
                Backend::Sqlite(pool) => {
                    sea_orm::sqlx::query_scalar(
                        "SELECT count(*) FROM Jobs WHERE job_type = ?1 AND status = 'Pending'",
                    )
                    .bind(queue)
                    .fetch_one(pool)
                    .await?
                }
                Backend::Postgres(pool) => sea_orm::sqlx::query_scalar(
                    "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Pending'",
                )
                .bind(queue)
                .fetch_one(pool)
                .await?,
            };
        Ok(u64::try_from(waiting).unwrap_or(0))
    }

    /// Succeeds when the queue's backend answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Redis(conn) => redis::cmd("PING").query_async(&mut conn.clone()).await?,
            Backend::Sqlite(pool) => sea_orm::sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(drop)?,
            Backend::Postgres(pool) => sea_orm::sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(drop)?,
        }
        Ok(())
    }

    /// Pushes an outbox row's payload as the job its `kind` names.
    pub async fn push(&self, kind: &str, payload: serde_json::Value) -> Result<(), QueueError> {
        let (kind, check) = Self::OUTBOX_KINDS
            .iter()
            .find(|(known, _)| *known == kind)
            .ok_or_else(|| QueueError::UnknownKind(kind.to_owned()))?;
        check(&payload)?;
        self.push_payload(kind, payload).await
    }

    /// Pushes a reminder job (the ticker's; reminders have no outbox row).
    pub async fn push_reminder(&self, job: RemindOwner) -> Result<(), QueueError> {
        self.push_payload(RemindOwner::KIND, serde_json::to_value(job)?)
            .await
    }

    /// Pushes a checked payload onto `kind`'s queue, as it is: a job is JSON on every
    /// backend, so the worker of `kind` reads it as its own type.
    async fn push_payload(&self, kind: &str, payload: serde_json::Value) -> Result<(), QueueError> {
        use serde_json::Value;
        match &self.backend {
            Backend::Redis(conn) => self
                .redis_of::<Value>(conn, kind)
                .push(payload)
                .await
                .map_err(refused),
            Backend::Sqlite(pool) => self
                .sqlite_of::<Value>(pool, kind)
                .push(payload)
                .await
                .map_err(refused),
            Backend::Postgres(pool) => self
                .postgres_of::<Value>(pool, kind)
                .push(payload)
                .await
                .map_err(refused),
        }
    }
}

fn refused(e: impl std::fmt::Display) -> QueueError {
    QueueError::Push(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `mithril serve` and `mithril-workers` started together on a new SQLite database
    /// both create the queue's tables (seen in scripts/metrics-check: "duplicate column
    /// name" and a worker that never started).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn processes_connecting_at_once_to_a_new_sqlite_database_all_get_the_queue() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/q.db?mode=rwc", dir.path().display());
            let mut dbs = Vec::new();
            for _ in 0..4 {
                dbs.push(crate::db::connect(&url, 2).await.unwrap());
            }
            let connected = futures_util::future::join_all(
                dbs.iter().map(|db| Queue::connect(db, None, "mithril")),
            )
            .await;
            for outcome in connected {
                if let Err(e) = outcome {
                    panic!("{e:#}");
                }
            }
        }
    }
}
