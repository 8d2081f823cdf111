//! The credential-state rule of the verify path's caches, shared by the API and
//! `mithril-workers`: what an entry says, and the rule that keeps it moving forward.
//! Pure: its Redis side (keys, the compare-and-set script, the eviction channel) is
//! `redis_cache`.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod redis_cache;

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
        of: Option<ConnectionIds>,
    },
}

/// The ids of the connection a refused digest belonged to: a retired secret's, or an
/// expired one's (sightings tell both apart from a wrong guess by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionIds {
    pub connection_id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
}

impl From<&ConnectionIdentity> for ConnectionIds {
    fn from(connection: &ConnectionIdentity) -> Self {
        Self {
            connection_id: connection.id,
            client_id: connection.client_id,
            consumer_id: connection.consumer_id,
        }
    }
}

impl CachedCredential {
    pub fn retired(version: i64, of: Option<ConnectionIds>) -> Self {
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
                    Verdict::Retired(Some(ConnectionIds::from(connection)))
                } else if expires_at.is_some_and(|at| at <= now) {
                    Verdict::Expired(connection.clone())
                } else {
                    Verdict::Accepted(connection.clone())
                }
            }
            CredentialState::Retired { of } => Verdict::Retired(*of),
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
    Retired(Option<ConnectionIds>),
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
        let of = Some(ConnectionIds::from(&self.connection));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection of nil ids (`redis_cache`'s tests use it too).
    pub(super) fn identity() -> ConnectionIdentity {
        ConnectionIdentity {
            id: Uuid::nil(),
            client_id: Uuid::nil(),
            consumer_id: Uuid::nil(),
            redirect_uri: "https://x".into(),
        }
    }

    fn accepts(entry: &CachedCredential, now: DateTime<Utc>) -> bool {
        matches!(entry.verdict(now), Verdict::Accepted(_))
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
        assert!(!accepts(&expiring(now), now));
        // A grace period that ended refuses, whatever the lifetime says.
        let mut previous = expiring(now + second);
        if let CredentialState::Valid { valid_until, .. } = &mut previous.state {
            *valid_until = Some(now);
        }
        assert_eq!(
            previous.verdict(now),
            Verdict::Retired(Some(ConnectionIds::from(&identity())))
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
        assert!(accepts(&entry, Utc::now() + chrono::Duration::days(3650)));
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
        assert!(accepts(&valid(1, None), now));
        assert!(!accepts(&valid(1, Some(now)), now));
        assert!(accepts(
            &valid(1, Some(now)),
            now - chrono::Duration::seconds(1)
        ));
        assert!(!accepts(&CachedCredential::retired(1, None), now));
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
}
