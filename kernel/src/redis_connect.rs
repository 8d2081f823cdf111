//! One way to reach Redis for the cache, the eviction channel and the queue.
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

#[derive(Clone)]
pub struct Redis {
    pub client: redis::Client,
    /// Reconnects by itself; cheap to clone.
    pub manager: ConnectionManager,
}

/// Connects with short timeouts: Redis is a cache and a queue here, and a request must
/// not wait on it for long when it is down (the outbox and the database carry on).
pub async fn connect(url: &str) -> anyhow::Result<Redis> {
    let client = redis::Client::open(url).context("REDIS_URL is not a Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let manager = client
        .get_connection_manager_with_config(config)
        .await
        .context("connecting to Redis")?;
    Ok(Redis { client, manager })
}

/// The names of one deployment's keys and channels in Redis.
///
// CAUTION: every key and channel the service and the workers use is named here, under
// the deployment's namespace (`MITHRIL_QUEUE_NAMESPACE`), so that two deployments on one
// Redis (production and a staging copy with the same ids and secrets, say) see nothing of
// each other: not a retirement, not an eviction, not a spent budget. The default
// namespace, `mithril`, gives the names of the releases before namespacing.
#[derive(Clone, Debug)]
pub struct RedisKeys {
    namespace: std::sync::Arc<str>,
}

impl RedisKeys {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.into(),
        }
    }

    /// One cached credential, by the SHA-256 digest of the secret.
    pub fn credential(&self, digest: &str) -> String {
        format!("{}:credential:{digest}", self.namespace)
    }

    /// The channel every API instance follows for credential changes.
    pub fn evictions(&self) -> String {
        format!("{}:credentials:evict", self.namespace)
    }

    /// One client's refresh budget.
    pub fn refresh_budget(&self, client_id: uuid::Uuid) -> String {
        format!("{}:refresh-budget:{client_id}", self.namespace)
    }

    /// The queue of one job kind.
    pub fn queue(&self, kind: &str) -> String {
        format!("{}:{kind}", self.namespace)
    }
}
