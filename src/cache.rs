//! The credentials cache of the verify path: in-process, in front of Redis (when
//! configured), in front of the database.
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use moka::sync::Cache;
use sea_orm::{DatabaseConnection, DbErr};
use workers::credentials::{CachedCredential, ConnectionView, Invalidation, RedisCredentials};

use crate::connections::lookup_credential;
use crate::secrets::SecretDigest;

/// How long a request waits on Redis before carrying on without it.
const REDIS_BUDGET: Duration = Duration::from_millis(250);

fn timed_out() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "Redis did not answer in time"))
}

pub struct CredentialsCache {
    local: Cache<String, CachedCredential>,
    redis: Option<RedisCredentials>,
    /// Bumped by every eviction. A database read fills the cache only if no eviction
    /// happened while it ran, so a read that raced a rotation cannot re-insert a secret
    /// the rotation retired.
    // CAUTION: check-and-insert and bump-and-evict hold this lock, or the race reopens.
    epoch: Mutex<u64>,
}

impl CredentialsCache {
    pub fn new(ttl: Duration, capacity: u64, redis: Option<RedisCredentials>) -> Self {
        Self {
            local: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            redis,
            epoch: Mutex::new(0),
        }
    }

    /// The connection that accepts this digest now, if any.
    pub async fn verify(
        &self,
        db: &DatabaseConnection,
        digest: &SecretDigest,
    ) -> Result<Option<ConnectionView>, DbErr> {
        if let Some(entry) = self.local.get(digest.as_str()) {
            metrics::counter!("mithril_credentials_cache_total", "layer" => "local", "result" => "hit").increment(1);
            return Ok(entry.accepted(Utc::now()).cloned());
        }
        let epoch = self.current_epoch();
        if let Some(redis) = &self.redis {
            match tokio::time::timeout(REDIS_BUDGET, redis.get(digest.as_str()))
                .await
                .unwrap_or_else(|_| Err(timed_out()))
            {
                Ok(Some(entry)) => {
                    metrics::counter!("mithril_credentials_cache_total", "layer" => "redis", "result" => "hit")
                        .increment(1);
                    self.fill_local(digest, &entry, epoch);
                    return Ok(entry.accepted(Utc::now()).cloned());
                }
                Ok(None) => {}
                // Redis is a cache here: without it the database still answers.
                Err(e) => tracing::warn!(error = %e, "credentials cache: Redis read failed"),
            }
        }
        metrics::counter!("mithril_credentials_cache_total", "layer" => "all", "result" => "miss")
            .increment(1);
        let Some(entry) = lookup_credential(db, digest).await? else {
            return Ok(None);
        };
        if self.fill_local(digest, &entry, epoch)
            && let Some(redis) = &self.redis
            && let Err(e) = tokio::time::timeout(REDIS_BUDGET, redis.fill(digest.as_str(), &entry))
                .await
                .unwrap_or_else(|_| Err(timed_out()))
        {
            tracing::warn!(error = %e, "credentials cache: Redis fill failed");
        }
        Ok(entry.accepted(Utc::now()).cloned())
    }

    fn current_epoch(&self) -> u64 {
        *self
            .epoch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fill_local(
        &self,
        digest: &SecretDigest,
        entry: &CachedCredential,
        read_at_epoch: u64,
    ) -> bool {
        let epoch = self
            .epoch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *epoch != read_at_epoch {
            return false;
        }
        self.local.insert(digest.as_str().to_owned(), entry.clone());
        true
    }

    /// Drops digests from this instance's cache (a local rotation, or a message from
    /// another instance).
    pub fn evict_local(&self, digests: &[String]) {
        let mut epoch = self
            .epoch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *epoch += 1;
        for digest in digests {
            self.local.invalidate(digest);
        }
    }

    /// After a missed message (a subscription that dropped), nothing local is trusted.
    pub fn clear_local(&self) {
        let mut epoch = self
            .epoch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *epoch += 1;
        self.local.invalidate_all();
    }

    /// Right after commit: evict here, then, best effort, in Redis and on every other
    /// instance. The `InvalidateCredentials` job repeats the shared part until it
    /// succeeds.
    pub async fn invalidate(&self, invalidation: &Invalidation) {
        self.evict_local(&invalidation.digests());
        if let Some(redis) = &self.redis
            && let Err(e) = tokio::time::timeout(REDIS_BUDGET, redis.invalidate(invalidation))
                .await
                .unwrap_or_else(|_| Err(timed_out()))
        {
            tracing::warn!(error = %e, "credentials cache: Redis invalidation failed; the job will retry it");
        }
    }
}

/// Follows the eviction channel for the life of the process, reconnecting with backoff.
/// Every (re)subscription clears the local cache, since messages may have been missed.
pub async fn follow_evictions(client: redis::Client, cache: std::sync::Arc<CredentialsCache>) {
    use futures_util::StreamExt as _;
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(workers::credentials::EVICT_CHANNEL).await {
                Ok(()) => {
                    cache.clear_local();
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let digests: Vec<String> = message
                            .get_payload::<String>()
                            .ok()
                            .and_then(|p| serde_json::from_str(&p).ok())
                            .unwrap_or_default();
                        cache.evict_local(&digests);
                    }
                    tracing::warn!("credentials cache: eviction subscription ended; reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, "credentials cache: subscribing failed"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "credentials cache: Redis unreachable for evictions")
            }
        }
        // Missed messages while disconnected: trust nothing local.
        cache.clear_local();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
