//! Which digests of a connection authenticate it, until when, and what a committed write
//! changes about that: the one place that decides, for every kind of change.
use chrono::{DateTime, Utc};
use entity::connection;
use kernel::credentials::{CachedCredential, ConnectionIdentity, CredentialChange, StillValid};

use crate::secrets::SecretDigest;

/// What verify answers about `row`.
pub fn identity(row: &connection::Model) -> ConnectionIdentity {
    ConnectionIdentity {
        id: row.id,
        client_id: row.client_id,
        consumer_id: row.consumer_id,
        redirect_uri: row.redirect_uri.clone(),
    }
}

/// The digests that verify answers for at `now`, and until when: the current secret
/// (refused as expired once its lifetime ends, `secret_expires_at`), and the previous one
/// while its grace period lasts.
///
/// The current secret stays listed after its expiry, so that every cache, and the
/// database read behind them, answers "expired" for it rather than "unknown".
pub fn valid_digests(row: &connection::Model, now: DateTime<Utc>) -> Vec<StillValid> {
    let mut valid = vec![StillValid {
        digest: row.secret_hash.clone(),
        valid_until: None,
        expires_at: row.secret_expires_at,
    }];
    if let (Some(previous), Some(until)) =
        (&row.previous_secret_hash, row.previous_secret_expires_at)
        && until > now
    {
        valid.push(StillValid {
            digest: previous.clone(),
            valid_until: Some(until),
            expires_at: None,
        });
    }
    valid
}

/// Until when the secret a rotation replaces keeps verifying: the end of the grace
/// period asked for (`None`: none, it retires now), but never past that secret's own
/// expiry under the lifetime policy. An end already past retires it at once.
///
/// CAUTION: a grace period must not lengthen a secret's life: rotating a secret that
/// expires in an hour with a week's grace keeps it for the hour only.
pub fn previous_valid_until(
    grace_ends: Option<DateTime<Utc>>,
    old_expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let until = match (grace_ends, old_expires_at) {
        (Some(grace), Some(expiry)) => Some(grace.min(expiry)),
        (grace, _) => grace,
    }?;
    (until > now).then_some(until)
}

/// What a committed write did to every digest of one connection: `before` is the row
/// read under the write's lock, `after` the committed row (`None` for a delete). Every
/// digest of `before` that no longer authenticates retires; every digest of `after`
/// carries the connection as it now is.
///
/// CAUTION: rotation, re-point and delete all come through here, so the rule is written
/// once: a retired digest is never reused, and retirement is final in every cache.
pub fn change(
    before: &connection::Model,
    after: Option<&connection::Model>,
    now: DateTime<Utc>,
) -> CredentialChange {
    let still_valid = after.map(|a| valid_digests(a, now)).unwrap_or_default();
    let stays = |digest: &String| still_valid.iter().any(|s| &s.digest == digest);
    let retire = std::iter::once(&before.secret_hash)
        .chain(before.previous_secret_hash.as_ref())
        .filter(|digest| !stays(digest))
        .cloned()
        .collect();
    CredentialChange {
        // A delete has no row to read a version from: one past the last one.
        version: after.map_or(before.state_version + 1, |a| a.state_version),
        connection: identity(after.unwrap_or(before)),
        retire,
        still_valid,
    }
}

/// The cache entry for `digest`, read from the row that holds it: what verify answers
/// for it at `now` (accepted, or expired by the clock), or `None` when the row no longer
/// lists it.
pub fn entry_for(
    row: &connection::Model,
    digest: &SecretDigest,
    now: DateTime<Utc>,
) -> Option<CachedCredential> {
    // Compared in constant time: the query matched on an index, this decides.
    valid_digests(row, now)
        .into_iter()
        .find(|valid| digest.matches(&valid.digest))
        .map(|valid| valid.entry(row.state_version, identity(row)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn row(
        current: &str,
        previous: Option<(&str, DateTime<Utc>)>,
        version: i64,
    ) -> connection::Model {
        let now = Utc::now();
        connection::Model {
            id: Uuid::nil(),
            client_id: Uuid::nil(),
            consumer_id: Uuid::nil(),
            redirect_uri: "https://x".into(),
            secret_hash: current.into(),
            previous_secret_hash: previous.map(|(d, _)| d.to_owned()),
            previous_secret_expires_at: previous.map(|(_, at)| at),
            secret_version: version,
            state_version: version,
            secret_expires_at: None,
            inserted_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_rotation_without_grace_retires_both_old_digests() {
        let now = Utc::now();
        let soon = now + chrono::Duration::hours(1);
        let before = row("s1", Some(("s0", soon)), 1);
        let after = row("s2", None, 2);
        let change = change(&before, Some(&after), now);
        assert_eq!(change.version, 2);
        assert_eq!(change.retire, vec!["s1".to_owned(), "s0".to_owned()]);
        assert_eq!(change.still_valid.len(), 1);
        assert_eq!(change.still_valid[0].digest, "s2");
    }

    #[test]
    fn a_rotation_with_grace_keeps_the_old_digest_until_then() {
        let now = Utc::now();
        let until = now + chrono::Duration::hours(1);
        let before = row("s1", Some(("s0", until)), 1);
        let after = row("s2", Some(("s1", until)), 2);
        let change = change(&before, Some(&after), now);
        assert_eq!(change.retire, vec!["s0".to_owned()]);
        let s1 = change
            .still_valid
            .iter()
            .find(|s| s.digest == "s1")
            .unwrap();
        assert_eq!(s1.valid_until, Some(until));
    }

    #[test]
    fn a_re_point_retires_nothing_but_an_expired_previous_and_a_delete_everything() {
        let now = Utc::now();
        let before = row("s1", Some(("s0", now - chrono::Duration::seconds(1))), 4);
        let mut after = row("s1", Some(("s0", now - chrono::Duration::seconds(1))), 5);
        after.redirect_uri = "https://y".into();
        let repoint = change(&before, Some(&after), now);
        assert_eq!(repoint.retire, vec!["s0".to_owned()]);
        assert_eq!(repoint.connection.redirect_uri, "https://y");
        let delete = change(&after, None, now);
        assert_eq!(delete.version, 6);
        assert!(delete.still_valid.is_empty());
        assert_eq!(delete.retire, vec!["s1".to_owned(), "s0".to_owned()]);
    }

    #[test]
    fn a_lookup_answers_for_current_and_grace_digests_only() {
        let now = Utc::now();
        let until = now + chrono::Duration::minutes(5);
        let row = row(
            SecretDigest::of("new").as_str(),
            Some((SecretDigest::of("old").as_str(), until)),
            3,
        );
        let current = entry_for(&row, &SecretDigest::of("new"), now).unwrap();
        assert_eq!(current.version, 3);
        assert!(matches!(
            current.verdict(now),
            kernel::credentials::Verdict::Accepted(_)
        ));
        let previous = entry_for(&row, &SecretDigest::of("old"), now).unwrap();
        assert!(!matches!(
            previous.verdict(until),
            kernel::credentials::Verdict::Accepted(_)
        ));
        assert!(entry_for(&row, &SecretDigest::of("old"), until).is_none());
        assert!(entry_for(&row, &SecretDigest::of("other"), now).is_none());
    }

    #[test]
    fn a_current_secret_past_its_lifetime_answers_expired_from_the_row() {
        let now = Utc::now();
        let mut row = row(SecretDigest::of("new").as_str(), None, 3);
        row.secret_expires_at = Some(now);
        let entry = entry_for(&row, &SecretDigest::of("new"), now).unwrap();
        assert_eq!(
            entry.verdict(now - chrono::Duration::seconds(1)),
            kernel::credentials::Verdict::Accepted(identity(&row))
        );
        assert_eq!(
            entry.verdict(now),
            kernel::credentials::Verdict::Expired(identity(&row))
        );
        // A change carries the expiry to every cache it updates.
        let change = change(&row, Some(&row), now);
        assert_eq!(change.still_valid[0].expires_at, Some(now));
    }

    #[test]
    fn a_grace_period_never_outlives_the_replaced_secrets_lifetime() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        let week = chrono::Duration::days(7);
        assert_eq!(previous_valid_until(None, Some(now + hour), now), None);
        assert_eq!(
            previous_valid_until(Some(now + week), None, now),
            Some(now + week)
        );
        assert_eq!(
            previous_valid_until(Some(now + week), Some(now + hour), now),
            Some(now + hour)
        );
        assert_eq!(
            previous_valid_until(Some(now + hour), Some(now + week), now),
            Some(now + hour)
        );
        assert_eq!(
            previous_valid_until(Some(now + week), Some(now - hour), now),
            None,
            "an already expired secret retires at once"
        );
    }
}
