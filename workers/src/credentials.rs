//! Cached credentials on the verify path and their invalidation. The key scheme and the
//! invalidation message live here so that the API and `mithril-workers` share one copy.
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Redis key of one cached credential, by the SHA-256 digest of the secret.
pub fn credential_key(digest: &str) -> String {
    format!("mithril:credential:{digest}")
}

/// Every API instance subscribes and drops these digests from its in-process cache.
pub const EVICT_CHANNEL: &str = "mithril:credentials:evict";

/// The public face of a connection, as the verify endpoint returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionView {
    pub id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    pub redirect_uri: String,
}

/// What a cache holds for one digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CachedCredential {
    /// Accepted, until `valid_until` when it is a previous secret in its grace period.
    Valid {
        connection: ConnectionView,
        valid_until: Option<DateTime<Utc>>,
    },
    /// Retired: refused without asking the database.
    Retired,
}

impl CachedCredential {
    /// CAUTION: a grace period ends by the clock, whatever the cache's own TTL says.
    pub fn accepted(&self, now: DateTime<Utc>) -> Option<&ConnectionView> {
        match self {
            Self::Valid {
                connection,
                valid_until,
            } if valid_until.is_none_or(|until| until > now) => Some(connection),
            _ => None,
        }
    }
}

/// A digest that stays accepted, with what verify now answers for it: a previous secret
/// until the end of its grace period, or a current one (no expiry) whose connection was
/// re-pointed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StillValid {
    pub digest: String,
    pub valid_until: Option<DateTime<Utc>>,
}

/// What one rotation or deletion changes in every cache. Digests only, never secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    pub connection: ConnectionView,
    /// Refused from now on.
    pub retire: Vec<String>,
    /// Still accepted, with a new expiry or a new view of the connection.
    pub still_valid: Vec<StillValid>,
}

impl Invalidation {
    pub fn digests(&self) -> Vec<String> {
        self.retire
            .iter()
            .cloned()
            .chain(self.still_valid.iter().map(|d| d.digest.clone()))
            .collect()
    }
}

/// Applies invalidations to the shared Redis cache and tells every instance.
#[derive(Clone)]
pub struct RedisCredentials {
    conn: ConnectionManager,
    ttl_secs: u64,
}

impl RedisCredentials {
    pub fn new(conn: ConnectionManager, ttl_secs: u64) -> Self {
        Self { conn, ttl_secs }
    }

    pub async fn get(&self, digest: &str) -> redis::RedisResult<Option<CachedCredential>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("GET")
            .arg(credential_key(digest))
            .query_async(&mut conn)
            .await?;
        Ok(raw.and_then(|raw| serde_json::from_str(&raw).ok()))
    }

    /// Fills the cache from a database read. `NX`: a fill never overwrites what an
    /// invalidation wrote, so a read that raced a rotation cannot bring a retired secret
    /// back.
    pub async fn fill(&self, digest: &str, entry: &CachedCredential) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let value = serde_json::to_string(entry).map_err(json_error)?;
        redis::cmd("SET")
            .arg(credential_key(digest))
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(self.ttl_secs)
            .query_async::<()>(&mut conn)
            .await
    }

    /// Writes the new state of every digest the invalidation names, then publishes them
    /// so every instance drops its in-process copy. Idempotent.
    pub async fn invalidate(&self, invalidation: &Invalidation) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let retired = serde_json::to_string(&CachedCredential::Retired).map_err(json_error)?;
        for digest in &invalidation.retire {
            pipe.cmd("SET")
                .arg(credential_key(digest))
                .arg(&retired)
                .arg("EX")
                .arg(self.ttl_secs)
                .ignore();
        }
        for still_valid in &invalidation.still_valid {
            let entry = CachedCredential::Valid {
                connection: invalidation.connection.clone(),
                valid_until: still_valid.valid_until,
            };
            pipe.cmd("SET")
                .arg(credential_key(&still_valid.digest))
                .arg(serde_json::to_string(&entry).map_err(json_error)?)
                .arg("EX")
                .arg(self.ttl_secs)
                .ignore();
        }
        let digests = serde_json::to_string(&invalidation.digests()).map_err(json_error)?;
        pipe.cmd("PUBLISH").arg(EVICT_CHANNEL).arg(digests).ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await
    }
}

fn json_error(e: serde_json::Error) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "encoding a cache entry",
        e.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_entries_end_by_the_clock() {
        let connection = ConnectionView {
            id: Uuid::nil(),
            client_id: Uuid::nil(),
            consumer_id: Uuid::nil(),
            redirect_uri: "https://x".into(),
        };
        let now = Utc::now();
        let current = CachedCredential::Valid {
            connection: connection.clone(),
            valid_until: None,
        };
        let previous = CachedCredential::Valid {
            connection,
            valid_until: Some(now),
        };
        assert!(current.accepted(now).is_some());
        assert!(previous.accepted(now).is_none());
        assert!(
            previous
                .accepted(now - chrono::Duration::seconds(1))
                .is_some()
        );
        assert!(CachedCredential::Retired.accepted(now).is_none());
    }
}
