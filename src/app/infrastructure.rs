//! What the application stands on: the database, Redis, the caches, the queue and the
//! recorder, and the tasks that keep them.
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use kernel::credentials::redis_cache::RedisCredentials;
use kernel::queue::Queue;
use kernel::redis_connect::{Redis, RedisKeys};
use sea_orm::DatabaseConnection;

use crate::cache::{CredentialsCache, follow_changes};
use crate::config::Config;
use crate::readiness::{DatabaseCheck, DrainCheck, ReadinessCheck, RedisCheck};
use crate::telemetry::Metrics;

/// What the application stands on: the database, Redis, the caches, the queue and the
/// recorder.
pub(super) struct Infrastructure {
    pub db: DatabaseConnection,
    pub redis: Option<Redis>,
    pub keys: RedisKeys,
    pub cache: Arc<CredentialsCache>,
    pub queue: Queue,
    pub metrics: Metrics,
}

impl Infrastructure {
    pub async fn connect(config: &Config, db: DatabaseConnection) -> anyhow::Result<Self> {
        let redis = match &config.redis_url {
            Some(url) => Some(kernel::redis_connect::connect(url).await?),
            None => None,
        };
        let cache_ttl = config.workers.credentials_cache_ttl();
        let keys = RedisKeys::new(&config.workers.queue_namespace);
        let cache = Arc::new(CredentialsCache::new(
            cache_ttl,
            config.verify.credentials_cache_capacity,
            redis
                .as_ref()
                .map(|r| RedisCredentials::new(r.manager.clone(), keys.clone(), cache_ttl)),
        ));
        let queue = Queue::connect(
            &db,
            redis.as_ref().map(|r| r.manager.clone()),
            &config.workers.queue_namespace,
        )
        .await?;
        Ok(Self {
            db,
            redis,
            keys,
            cache,
            queue,
            // The recorder of every metric this instance serves at `/metrics`.
            metrics: Metrics::new(),
        })
    }

    /// The tasks that live as long as the process: following other instances' changes,
    /// the cache's and the recorder's upkeep, the verify summary.
    ///
    /// Background tasks go on Tokio's scheduler rather than actix's thread-local set, so
    /// they are dropped inside the runtime when it shuts down (a pooled database
    /// connection cannot be dropped outside one).
    pub fn spawn_upkeep(&self) {
        if let Some(redis) = &self.redis {
            tokio::spawn(follow_changes(
                redis.client.clone(),
                self.keys.evictions(),
                self.cache.clone(),
                self.metrics.clone(),
            ));
        }
        tokio::spawn(CredentialsCache::maintain(Arc::downgrade(&self.cache)));
        tokio::spawn(self.metrics.summarize_verifies());
        tokio::spawn(self.metrics.keep_up());
    }

    /// What `/health/ready` asks: draining, the database, Redis where configured, then
    /// `checks`.
    pub fn readiness(
        &self,
        draining: &Arc<AtomicBool>,
        checks: Vec<Arc<dyn ReadinessCheck>>,
    ) -> Vec<Arc<dyn ReadinessCheck>> {
        let mut readiness: Vec<Arc<dyn ReadinessCheck>> = vec![
            Arc::new(DrainCheck(draining.clone())),
            Arc::new(DatabaseCheck(self.db.clone())),
        ];
        if let Some(redis) = &self.redis {
            readiness.push(Arc::new(RedisCheck(redis.manager.clone())));
        }
        readiness.extend(checks);
        readiness
    }
}
