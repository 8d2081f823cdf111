//! The job queue: apalis on Redis when `REDIS_URL` is set, else on the service's own
//! database (SQLite or PostgreSQL), sharing SeaORM's connection pool.
use anyhow::Context as _;
use apalis::prelude::TaskSink as _;
use apalis_postgres::PostgresStorage;
use apalis_redis::{Config as RedisConfig, ConnectionManager, RedisStorage};
use apalis_sqlite::SqliteStorage;
use sea_orm::{DatabaseBackend, DatabaseConnection};
use serde::de::DeserializeOwned;

use crate::jobs::{self, InvalidateCredentials, NotifyOwner, NotifyStaleSecret, RemindOwner};

/// How often a worker tells the queue it lives, and how many beats it may miss before
/// the queue hands its jobs to another worker: 20 s, where apalis's defaults wait 60 s
/// (database) or 300 s (Redis) after a worker killed mid-job.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);
const MISSED_HEARTBEATS: usize = 4;

/// One storage per job type.
#[derive(Clone)]
pub struct Storages<N, I, R, S> {
    pub notify: N,
    pub invalidate: I,
    pub remind: R,
    pub stale: S,
}

#[derive(Clone)]
pub struct RedisQueue {
    pub storages: Storages<
        RedisStorage<NotifyOwner>,
        RedisStorage<InvalidateCredentials>,
        RedisStorage<RemindOwner>,
        RedisStorage<NotifyStaleSecret>,
    >,
}

#[derive(Clone)]
pub enum Queue {
    Redis(Box<RedisQueue>),
    Sqlite(
        Storages<
            SqliteStorage<NotifyOwner>,
            SqliteStorage<InvalidateCredentials>,
            SqliteStorage<RemindOwner>,
            SqliteStorage<NotifyStaleSecret>,
        >,
    ),
    Postgres(
        Storages<
            PostgresStorage<NotifyOwner>,
            PostgresStorage<InvalidateCredentials>,
            PostgresStorage<RemindOwner>,
            PostgresStorage<NotifyStaleSecret>,
        >,
    ),
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

impl Queue {
    /// The outbox kinds this release pushes.
    pub const KINDS: [&'static str; 3] = [
        jobs::NOTIFY_OWNER,
        jobs::INVALIDATE_CREDENTIALS,
        jobs::NOTIFY_STALE_SECRET,
    ];

    /// `namespace` prefixes the queue names, so deployments (or tests) can share a Redis.
    pub async fn connect(
        db: &DatabaseConnection,
        redis: Option<ConnectionManager>,
        namespace: &str,
    ) -> anyhow::Result<Self> {
        let keys = crate::redis_connect::RedisKeys::new(namespace);
        let notify_queue = keys.queue(jobs::NOTIFY_OWNER);
        let invalidate_queue = keys.queue(jobs::INVALIDATE_CREDENTIALS);
        let remind_queue = keys.queue(jobs::REMIND_OWNER);
        let stale_queue = keys.queue(jobs::NOTIFY_STALE_SECRET);
        if let Some(conn) = redis {
            let config = |queue: &str| {
                RedisConfig::default()
                    .queue(queue)
                    .heartbeat_interval(HEARTBEAT)
                    .missed_heartbeats(MISSED_HEARTBEATS)
            };
            let storages = Storages {
                notify: RedisStorage::new(conn.clone()).with_config(config(&notify_queue)),
                invalidate: RedisStorage::new(conn.clone()).with_config(config(&invalidate_queue)),
                remind: RedisStorage::new(conn.clone()).with_config(config(&remind_queue)),
                stale: RedisStorage::new(conn).with_config(config(&stale_queue)),
            };
            return Ok(Self::Redis(Box::new(RedisQueue { storages })));
        }
        match db.get_database_backend() {
            DatabaseBackend::Postgres => {
                let pool = db.get_postgres_connection_pool();
                // Only the queue's tables: `setup` would also change session settings.
                PostgresStorage::<()>::migrations()
                    .run(pool)
                    .await
                    .context("creating the queue tables")?;
                let config = |queue: &str| {
                    apalis_postgres::Config::default()
                        .queue(queue)
                        .heartbeat_interval(HEARTBEAT)
                        .missed_heartbeats(MISSED_HEARTBEATS)
                };
                Ok(Self::Postgres(Storages {
                    notify: PostgresStorage::new(pool).with_config(config(&notify_queue)),
                    invalidate: PostgresStorage::new(pool).with_config(config(&invalidate_queue)),
                    remind: PostgresStorage::new(pool).with_config(config(&remind_queue)),
                    stale: PostgresStorage::new(pool).with_config(config(&stale_queue)),
                }))
            }
            _ => {
                let pool = db.get_sqlite_connection_pool();
                // Only the queue's tables: `setup` would also turn `synchronous` off on
                // the service's own database, trading durability of committed rotations.
                SqliteStorage::<()>::migrations()
                    .run(pool)
                    .await
                    .context("creating the queue tables")?;
                let config = |queue: &str| {
                    apalis_sqlite::Config::default()
                        .queue(queue)
                        .heartbeat_interval(HEARTBEAT)
                        .missed_heartbeats(MISSED_HEARTBEATS)
                };
                Ok(Self::Sqlite(Storages {
                    notify: SqliteStorage::new(pool).with_config(config(&notify_queue)),
                    invalidate: SqliteStorage::new(pool).with_config(config(&invalidate_queue)),
                    remind: SqliteStorage::new(pool).with_config(config(&remind_queue)),
                    stale: SqliteStorage::new(pool).with_config(config(&stale_queue)),
                }))
            }
        }
    }

    /// Pushes an outbox row's payload as the job its `kind` names.
    pub async fn push(&self, kind: &str, payload: serde_json::Value) -> Result<(), QueueError> {
        match kind {
            jobs::NOTIFY_OWNER => {
                let job: NotifyOwner = decode(payload)?;
                match self {
                    Self::Redis(q) => q.storages.notify.clone().push(job).await.map_err(refused),
                    Self::Sqlite(s) => s.notify.clone().push(job).await.map_err(refused),
                    Self::Postgres(s) => s.notify.clone().push(job).await.map_err(refused),
                }
            }
            jobs::INVALIDATE_CREDENTIALS => {
                let job: InvalidateCredentials = decode(payload)?;
                match self {
                    Self::Redis(q) => q
                        .storages
                        .invalidate
                        .clone()
                        .push(job)
                        .await
                        .map_err(refused),
                    Self::Sqlite(s) => s.invalidate.clone().push(job).await.map_err(refused),
                    Self::Postgres(s) => s.invalidate.clone().push(job).await.map_err(refused),
                }
            }
            jobs::NOTIFY_STALE_SECRET => {
                let job: NotifyStaleSecret = decode(payload)?;
                match self {
                    Self::Redis(q) => q.storages.stale.clone().push(job).await.map_err(refused),
                    Self::Sqlite(s) => s.stale.clone().push(job).await.map_err(refused),
                    Self::Postgres(s) => s.stale.clone().push(job).await.map_err(refused),
                }
            }
            other => Err(QueueError::UnknownKind(other.to_owned())),
        }
    }

    /// Pushes a reminder job (the ticker's; reminders have no outbox row).
    pub async fn push_reminder(&self, job: RemindOwner) -> Result<(), QueueError> {
        match self {
            Self::Redis(q) => q.storages.remind.clone().push(job).await.map_err(refused),
            Self::Sqlite(s) => s.remind.clone().push(job).await.map_err(refused),
            Self::Postgres(s) => s.remind.clone().push(job).await.map_err(refused),
        }
    }
}

fn decode<T: DeserializeOwned>(payload: serde_json::Value) -> Result<T, QueueError> {
    Ok(serde_json::from_value(payload)?)
}

fn refused(e: impl std::fmt::Display) -> QueueError {
    QueueError::Push(e.to_string())
}
