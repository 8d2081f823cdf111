//! The Redis connection shared by the cache, the eviction channel and the queue.
use anyhow::Context as _;
use redis::aio::ConnectionManager;

#[derive(Clone)]
pub struct Redis {
    pub client: redis::Client,
    /// Reconnects by itself; cheap to clone.
    pub manager: ConnectionManager,
}

pub async fn connect(url: &str) -> anyhow::Result<Redis> {
    let client = redis::Client::open(url).context("REDIS_URL is not a Redis URL")?;
    let manager = client
        .get_connection_manager()
        .await
        .context("connecting to Redis")?;
    Ok(Redis { client, manager })
}
