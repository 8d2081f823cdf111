//! The shared Redis cache of credentials: the compare-and-set script that keeps the
//! forward-only rule of `CachedCredential::may_replace` in Redis, and the eviction
//! channel every API instance follows.
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::Deserialize;

use super::{CachedCredential, CredentialChange};
use crate::redis_connect::RedisKeys;

/// The message on the eviction channel (`RedisKeys::evictions`): a change, or (from releases before versions) a bare
/// list of digests to drop.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EvictionMessage {
    Change(CredentialChange),
    Digests(Vec<String>),
}

/// Writes each key's new entry under the forward-only rule of
/// `CachedCredential::may_replace`, then publishes the change, in one round trip.
///
/// KEYS: the credential keys. ARGV[1]: TTL of a valid entry (ms); ARGV[2]: TTL of a
/// retired one (ms); ARGV[3]: channel to publish on ("" for none); ARGV[4]: the message;
/// ARGV[5]: `fill` (a read: insert where absent) or `change` (a write's outcome: a valid
/// entry only updates one already cached, a retirement is always recorded);
/// ARGV[5 + i]: the entry for KEYS[i], as JSON. Returns how many keys were written.
const CAS_SCRIPT: &str = r#"
local written = 0
for i, key in ipairs(KEYS) do
  local new = cjson.decode(ARGV[5 + i])
  local new_version = tonumber(new.version) or 0
  local replace = true
  local current = redis.call('GET', key)
  if not current and ARGV[5] == 'change' and new.state ~= 'retired' then
    replace = false
  end
  if current then
    local ok, old = pcall(cjson.decode, current)
    if ok and type(old) == 'table' then
      local old_version = tonumber(old.version) or 0
      if old.state == 'retired' then
        replace = false
      elseif old_version > new_version then
        replace = false
      elseif old_version == new_version and new.state ~= 'retired' then
        replace = false
      end
    end
  end
  if replace then
    local ttl = ARGV[1]
    if new.state == 'retired' then ttl = ARGV[2] end
    redis.call('SET', key, ARGV[5 + i], 'PX', ttl)
    written = written + 1
  end
end
if ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return written
"#;

/// The shared Redis cache of credentials and its eviction channel.
#[derive(Clone)]
pub struct RedisCredentials {
    conn: ConnectionManager,
    /// The deployment's key and channel names.
    keys: RedisKeys,
    script: std::sync::Arc<redis::Script>,
    /// How long a valid entry lives: the worst-case bound if every invalidation failed.
    ttl: Duration,
    /// How long a retirement is remembered: longer, as it is what refuses a late write
    /// of an older state.
    retired_ttl: Duration,
}

impl RedisCredentials {
    pub fn new(conn: ConnectionManager, keys: RedisKeys, ttl: Duration) -> Self {
        let ttl = ttl.max(Duration::from_secs(1));
        Self {
            conn,
            keys,
            script: std::sync::Arc::new(redis::Script::new(CAS_SCRIPT)),
            ttl,
            retired_ttl: retired_ttl(ttl),
        }
    }

    /// The entry for `digest` and how long Redis keeps it yet, in one round trip.
    pub async fn get(
        &self,
        digest: &str,
    ) -> redis::RedisResult<Option<(CachedCredential, Duration)>> {
        let mut conn = self.conn.clone();
        let key = self.keys.credential(digest);
        // Atomic, so the TTL read is the entry's own, not a newer entry's.
        let (raw, remaining_ms): (Option<String>, i64) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(&key)
            .cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        Ok(raw.and_then(|raw| {
            let entry: CachedCredential = serde_json::from_str(&raw).ok()?;
            // -1 (no expiry) does not happen here; -2 means it expired in between.
            let remaining = u64::try_from(remaining_ms).ok()?;
            Some((entry, Duration::from_millis(remaining)))
        }))
    }

    /// Fills one digest from a database read, under the forward-only rule.
    pub async fn fill(&self, digest: &str, entry: &CachedCredential) -> redis::RedisResult<()> {
        let value = serde_json::to_string(entry).map_err(json_error)?;
        self.run(&[(self.keys.credential(digest), value)], "", "", "fill")
            .await
    }

    /// Writes every digest's new state under the forward-only rule and tells every
    /// instance, in one round trip. Idempotent, and safe in any order. A digest nobody
    /// has verified gets no valid entry (a read fills it when needed); a retirement is
    /// always recorded, as it is what refuses a late write of an older state.
    pub async fn apply(&self, change: &CredentialChange) -> redis::RedisResult<()> {
        let entries = change
            .entries()
            .map(|(digest, entry)| {
                serde_json::to_string(&entry).map(|value| (self.keys.credential(digest), value))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(json_error)?;
        let message = serde_json::to_string(change).map_err(json_error)?;
        self.run(&entries, &self.keys.evictions(), &message, "change")
            .await
    }

    async fn run(
        &self,
        entries: &[(String, String)],
        channel: &str,
        message: &str,
        mode: &str,
    ) -> redis::RedisResult<()> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(millis(self.ttl))
            .arg(millis(self.retired_ttl))
            .arg(channel)
            .arg(message)
            .arg(mode);
        for (key, value) in entries {
            invocation.key(key).arg(value);
        }
        let mut conn = self.conn.clone();
        invocation.invoke_async::<i64>(&mut conn).await.map(drop)
    }
}

/// A retirement outlives a valid entry tenfold (ten minutes by default): a write of an
/// older state that arrives late meets it and is refused.
fn retired_ttl(ttl: Duration) -> Duration {
    ttl.saturating_mul(10)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
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
    use crate::credentials::tests::identity;

    #[test]
    fn old_eviction_messages_still_decode() {
        let old: EvictionMessage = serde_json::from_str(r#"["ab","cd"]"#).unwrap();
        assert!(matches!(old, EvictionMessage::Digests(d) if d.len() == 2));
        let change = CredentialChange {
            version: 3,
            connection: identity(),
            retire: vec!["ab".into()],
            still_valid: vec![],
        };
        let new: EvictionMessage =
            serde_json::from_str(&serde_json::to_string(&change).unwrap()).unwrap();
        assert!(matches!(new, EvictionMessage::Change(c) if c == change));
    }
}
