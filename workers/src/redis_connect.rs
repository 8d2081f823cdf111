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
