//! The credential state of the verify path's caches, shared by the API and
//! `mithril-workers`: what an entry says, the rule that keeps it moving forward, and its
//! Redis side (keys, the compare-and-set script, the eviction channel).
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::redis_connect::RedisKeys;

/// The connection a credential authenticates: what verify answers about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionIdentity {
    pub id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    pub redirect_uri: String,
}

/// What a cache knows of one digest, as of one version of its connection's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedCredential {
    /// The connection's `state_version` this entry was computed from.
    #[serde(default)]
    pub version: i64,
    #[serde(flatten)]
    pub state: CredentialState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CredentialState {
    /// Accepted, until `valid_until` when it is a previous secret in its grace period;
    /// from `expires_at` on (a current secret past its lifetime) refused as expired.
    Valid {
        connection: ConnectionIdentity,
        valid_until: Option<DateTime<Utc>>,
        /// Absent in entries written by releases before the lifetime policy: never.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<DateTime<Utc>>,
    },
    /// Refused, for good: digests are unique and never reused.
    Retired {
        /// The connection it belonged to, where known (absent in entries of releases
        /// before stale-secret sightings): so a system still presenting it is told apart
        /// from a wrong guess.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        of: Option<RetiredFrom>,
    },
}

/// The connection a retired digest belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredFrom {
    pub connection_id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
}

impl From<&ConnectionIdentity> for RetiredFrom {
    fn from(connection: &ConnectionIdentity) -> Self {
        Self {
            connection_id: connection.id,
            client_id: connection.client_id,
            consumer_id: connection.consumer_id,
        }
    }
}

impl CachedCredential {
    pub fn retired(version: i64, of: Option<RetiredFrom>) -> Self {
        Self {
            version,
            state: CredentialState::Retired { of },
        }
    }

    pub fn is_retired(&self) -> bool {
        matches!(self.state, CredentialState::Retired { .. })
    }

    /// What verify answers for this entry at `now`.
    ///
    /// CAUTION: a grace period and a lifetime both end by the clock, whatever a cache's
    /// own TTL says. A grace that ended refuses (the secret was replaced); a lifetime that
    /// ended answers `Expired`, so gateways can tell an expired secret from a wrong one.
    pub fn verdict(&self, now: DateTime<Utc>) -> Verdict {
        match &self.state {
            CredentialState::Valid {
                connection,
                valid_until,
                expires_at,
            } => {
                if valid_until.is_some_and(|until| until <= now) {
                    Verdict::Retired(Some(RetiredFrom::from(connection)))
                } else if expires_at.is_some_and(|at| at <= now) {
                    Verdict::Expired(connection.clone())
                } else {
                    Verdict::Accepted(connection.clone())
                }
            }
            CredentialState::Retired { of } => Verdict::Retired(*of),
        }
    }

    /// The connection this entry authenticates at `now`, if it is accepted.
    pub fn accepted(&self, now: DateTime<Utc>) -> Option<ConnectionIdentity> {
        match self.verdict(now) {
            Verdict::Accepted(connection) => Some(connection),
            Verdict::Expired(_) | Verdict::Retired(_) | Verdict::Unknown => None,
        }
    }

    /// The forward-only rule, the same in every cache (and in `CAS_SCRIPT` for Redis):
    /// an entry replaces what a cache holds only if that is absent, or is not retired and
    /// describes an older state. At equal versions only a retirement replaces (both were
    /// computed from the same committed row, so they agree anyway).
    ///
    /// CAUTION: this is what lets invalidations, job retries, sweeper re-pushes and
    /// re-point rewrites land in any order, any number of times, with one final state.
    pub fn may_replace(&self, existing: Option<&CachedCredential>) -> bool {
        match existing {
            None => true,
            Some(existing) if existing.is_retired() => false,
            Some(existing) => {
                self.version > existing.version
                    || (self.version == existing.version && self.is_retired())
            }
        }
    }
}

/// What verify answers for a presented secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It authenticates this connection.
    Accepted(ConnectionIdentity),
    /// It is this connection's current secret, past its expiry under the lifetime
    /// policy.
    Expired(ConnectionIdentity),
    /// It was a connection's secret: replaced, its grace period over, or the connection
    /// deleted (the connection, where known).
    Retired(Option<RetiredFrom>),
    /// No connection has had it (within the sighting window).
    Unknown,
}

impl Verdict {
    /// The metric label of this outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Accepted(_) => "ok",
            Self::Expired(_) => "expired",
            Self::Retired(_) => "retired",
            Self::Unknown => "unknown",
        }
    }
}

/// A digest that stays accepted after a change, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StillValid {
    pub digest: String,
    pub valid_until: Option<DateTime<Utc>>,
    /// The lifetime policy's expiry of a current secret (see `CredentialState::Valid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl StillValid {
    /// This digest's cache entry at state `version`, authenticating `connection`.
    pub fn entry(&self, version: i64, connection: ConnectionIdentity) -> CachedCredential {
        CachedCredential {
            version,
            state: CredentialState::Valid {
                connection,
                valid_until: self.valid_until,
                expires_at: self.expires_at,
            },
        }
    }
}

/// What one committed write (rotation, re-point, delete) makes of every digest of one
/// connection, at the connection's new state version. Digests only, never secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialChange {
    /// The connection's `state_version` after the write (absent in jobs written by
    /// releases before versions: 0, which outranks nothing).
    #[serde(default)]
    pub version: i64,
    pub connection: ConnectionIdentity,
    /// Refused from now on.
    pub retire: Vec<String>,
    /// Still accepted, with the connection as it now is, until `valid_until`.
    pub still_valid: Vec<StillValid>,
}

impl CredentialChange {
    /// Every digest the change names, with its new cache entry.
    pub fn entries(&self) -> impl Iterator<Item = (&str, CachedCredential)> + '_ {
        let of = Some(RetiredFrom::from(&self.connection));
        let retired = self
            .retire
            .iter()
            .map(move |digest| (digest.as_str(), CachedCredential::retired(self.version, of)));
        let valid = self.still_valid.iter().map(|still| {
            let entry = still.entry(self.version, self.connection.clone());
            (still.digest.as_str(), entry)
        });
        retired.chain(valid)
    }

    /// Only the retirements: what a change still says once its connection has moved on
    /// to a newer state (its "still valid" entries may be out of date by then, its
    /// retirements never are).
    pub fn retirements_only(&self) -> Self {
        Self {
            still_valid: Vec::new(),
            ..self.clone()
        }
    }
}

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

    fn identity() -> ConnectionIdentity {
        ConnectionIdentity {
            id: Uuid::nil(),
            client_id: Uuid::nil(),
            consumer_id: Uuid::nil(),
            redirect_uri: "https://x".into(),
        }
    }

    fn valid(version: i64, valid_until: Option<DateTime<Utc>>) -> CachedCredential {
        CachedCredential {
            version,
            state: CredentialState::Valid {
                connection: identity(),
                valid_until,
                expires_at: None,
            },
        }
    }

    fn expiring(expires_at: DateTime<Utc>) -> CachedCredential {
        CachedCredential {
            version: 1,
            state: CredentialState::Valid {
                connection: identity(),
                valid_until: None,
                expires_at: Some(expires_at),
            },
        }
    }

    #[test]
    fn a_lifetime_ends_by_the_clock_as_expired_not_refused() {
        let now = Utc::now();
        let second = chrono::Duration::seconds(1);
        assert_eq!(
            expiring(now).verdict(now - second),
            Verdict::Accepted(identity())
        );
        assert_eq!(expiring(now).verdict(now), Verdict::Expired(identity()));
        assert_eq!(
            expiring(now).verdict(now + second),
            Verdict::Expired(identity())
        );
        assert!(expiring(now).accepted(now).is_none());
        // A grace period that ended refuses, whatever the lifetime says.
        let mut previous = expiring(now + second);
        if let CredentialState::Valid { valid_until, .. } = &mut previous.state {
            *valid_until = Some(now);
        }
        assert_eq!(
            previous.verdict(now),
            Verdict::Retired(Some(RetiredFrom::from(&identity())))
        );
        assert_eq!(
            CachedCredential::retired(2, None).verdict(now),
            Verdict::Retired(None)
        );
    }

    #[test]
    fn entries_of_the_previous_release_still_decode_and_never_expire() {
        let old = json_of_previous_release();
        let entry: CachedCredential = serde_json::from_str(&old).unwrap();
        assert!(
            entry
                .accepted(Utc::now() + chrono::Duration::days(3650))
                .is_some()
        );
        let written = serde_json::to_string(&entry).unwrap();
        assert!(!written.contains("expires_at"), "{written}");
        let change: CredentialChange = serde_json::from_str(
            r#"{"version":2,"connection":{"id":"00000000-0000-0000-0000-000000000000","client_id":"00000000-0000-0000-0000-000000000000","consumer_id":"00000000-0000-0000-0000-000000000000","redirect_uri":"https://x"},"retire":[],"still_valid":[{"digest":"ab","valid_until":null}]}"#,
        )
        .unwrap();
        assert_eq!(change.still_valid[0].expires_at, None);
    }

    fn json_of_previous_release() -> String {
        r#"{"version":3,"state":"valid","connection":{"id":"00000000-0000-0000-0000-000000000000","client_id":"00000000-0000-0000-0000-000000000000","consumer_id":"00000000-0000-0000-0000-000000000000","redirect_uri":"https://x"},"valid_until":null}"#.to_owned()
    }

    #[test]
    fn grace_entries_end_by_the_clock() {
        let now = Utc::now();
        assert!(valid(1, None).accepted(now).is_some());
        assert!(valid(1, Some(now)).accepted(now).is_none());
        assert!(
            valid(1, Some(now))
                .accepted(now - chrono::Duration::seconds(1))
                .is_some()
        );
        assert!(CachedCredential::retired(1, None).accepted(now).is_none());
    }

    #[test]
    fn entries_only_move_forward_and_retirement_is_final() {
        let retired = CachedCredential::retired(3, None);
        assert!(valid(1, None).may_replace(None));
        assert!(valid(2, None).may_replace(Some(&valid(1, None))));
        assert!(!valid(1, None).may_replace(Some(&valid(2, None))));
        assert!(!valid(2, None).may_replace(Some(&valid(2, None))));
        assert!(retired.may_replace(Some(&valid(3, None))));
        for later in [
            valid(4, None),
            valid(99, None),
            CachedCredential::retired(4, None),
        ] {
            assert!(!later.may_replace(Some(&retired)), "{later:?}");
        }
    }

    #[test]
    fn entries_encode_as_the_script_reads_them() {
        let json = serde_json::to_value(CachedCredential::retired(7, None)).unwrap();
        assert_eq!(json, serde_json::json!({"version": 7, "state": "retired"}));
        let json = serde_json::to_value(valid(2, None)).unwrap();
        assert_eq!(json["state"], "valid");
        assert_eq!(json["version"], 2);
    }

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
