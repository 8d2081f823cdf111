//! `mithril secrets apply-policy`: switching the lifetime policy on safely. Secrets
//! issued while it was off have no expiry (they never expire); this gives each one its
//! last rotation + the lifetime, but never sooner than a floor from now, so that no
//! caller is cut off by the switch itself. Idempotent: a secret that has an expiry is
//! never touched again.
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Datelike as _, NaiveDate, SubsecRound as _, Utc, Weekday};
use entity::{connection, connection_event};
use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{
    ColumnTrait as _, DatabaseConnection, EntityTrait as _, PaginatorTrait as _, QueryFilter as _,
    QueryOrder as _, QuerySelect as _, TransactionTrait as _,
};
use uuid::Uuid;

use super::audit::{self, Initiator, NewEvent};
use super::{ConnectionError, kinds};

/// Rows read and updated per transaction.
const BATCH: u64 = 500;

/// What one run did, and the schedule it leaves.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PolicyReport {
    /// Secrets given an expiry by this run.
    pub given: u64,
    /// Of those, how many got the floor (their last rotation + lifetime was sooner).
    pub floored: u64,
    /// Secrets still without an expiry (issued meanwhile by an instance whose policy is
    /// still off).
    pub without_expiry: u64,
    /// Secrets whose expiry has passed, by any rule.
    pub expired: u64,
    /// Secrets that expire later, by ISO week (in UTC) of their expiry.
    pub per_week: BTreeMap<IsoWeek, u64>,
}

/// An ISO 8601 week, in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IsoWeek {
    pub year: i32,
    pub week: u32,
}

impl IsoWeek {
    pub fn of(at: DateTime<Utc>) -> Self {
        let week = at.iso_week();
        Self {
            year: week.year(),
            week: week.week(),
        }
    }

    /// The week's Monday.
    pub fn monday(self) -> Option<NaiveDate> {
        NaiveDate::from_isoywd_opt(self.year, self.week, Weekday::Mon)
    }
}

impl std::fmt::Display for IsoWeek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-W{:02}", self.year, self.week)
    }
}

/// When a secret issued at `issued_at`, before the policy, expires under it: the
/// lifetime after issue, but no sooner than `floor` (now + the minimum remaining).
pub fn expiry_for(
    issued_at: DateTime<Utc>,
    lifetime: chrono::Duration,
    floor: DateTime<Utc>,
) -> DateTime<Utc> {
    issued_at
        .checked_add_signed(lifetime)
        .map_or(floor, |by_lifetime| Ord::max(by_lifetime, floor))
        .trunc_subsecs(6)
}

/// Gives every secret without an expiry its last rotation + `lifetime`, never sooner
/// than `min_remaining` from `now`. Each row changes under a condition (still without
/// expiry, still the same secret), so a rotation committing meanwhile is never
/// overwritten and a second run changes nothing. Each change bumps the row's state
/// version (what verify answers changed) and is audited (`secret_expiry_set`); caches
/// pick the expiry up when their entries end (the credentials cache TTL).
pub async fn apply(
    db: &DatabaseConnection,
    lifetime: Duration,
    min_remaining: Duration,
    now: DateTime<Utc>,
) -> Result<PolicyReport, ConnectionError> {
    let out_of_range = || ConnectionError::Internal(anyhow::anyhow!("a duration out of range"));
    let lifetime = chrono::Duration::from_std(lifetime).map_err(|_| out_of_range())?;
    let floor = chrono::Duration::from_std(min_remaining)
        .ok()
        .and_then(|min| now.checked_add_signed(min))
        .ok_or_else(out_of_range)?;
    // The audit trail names the run: no user acts, an operator does.
    let actor = Initiator {
        user_id: Uuid::nil(),
        client_id: Uuid::nil(),
        request_id: format!("secrets-apply-policy-{}", Uuid::now_v7()),
        remote_address: None,
    };
    let mut report = PolicyReport::default();
    let mut after = Uuid::nil();
    loop {
        let rows = connection::Entity::find()
            .filter(connection::Column::SecretExpiresAt.is_null())
            .filter(connection::Column::Id.gt(after))
            .order_by_asc(connection::Column::Id)
            .limit(BATCH)
            .all(db)
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        let issued = issue_times(db, &rows).await?;
        let txn = db.begin().await?;
        for row in &rows {
            let issued_at = issued
                .get(&(row.id, row.secret_version))
                .copied()
                .unwrap_or_else(|| fallback_issue_time(row));
            let expiry = expiry_for(issued_at, lifetime, floor);
            let changed = connection::Entity::update_many()
                .col_expr(connection::Column::SecretExpiresAt, Expr::value(expiry))
                .col_expr(
                    connection::Column::StateVersion,
                    Expr::col(connection::Column::StateVersion).add(1),
                )
                .filter(connection::Column::Id.eq(row.id))
                .filter(connection::Column::SecretExpiresAt.is_null())
                .filter(connection::Column::SecretVersion.eq(row.secret_version))
                .exec(&txn)
                .await?
                .rows_affected;
            if changed == 0 {
                continue;
            }
            audit::record(
                &txn,
                NewEvent {
                    kind: kinds::SECRET_EXPIRY_SET,
                    connection_id: row.id,
                    client_id: row.client_id,
                    actor: &actor,
                    secret_version: Some(row.secret_version),
                    grace_period: None,
                    secret_expires_at: Some(expiry),
                    occurred_at: now,
                },
            )
            .await?;
            report.given += 1;
            if expiry == floor.trunc_subsecs(6) {
                report.floored += 1;
            }
        }
        txn.commit().await?;
    }

    report.without_expiry = connection::Entity::find()
        .filter(connection::Column::SecretExpiresAt.is_null())
        .count(db)
        .await?;
    let expiries: Vec<Option<DateTime<Utc>>> = connection::Entity::find()
        .select_only()
        .column(connection::Column::SecretExpiresAt)
        .filter(connection::Column::SecretExpiresAt.is_not_null())
        .into_tuple()
        .all(db)
        .await?;
    for expiry in expiries.into_iter().flatten() {
        if expiry <= now {
            report.expired += 1;
        } else {
            *report.per_week.entry(IsoWeek::of(expiry)).or_default() += 1;
        }
    }
    Ok(report)
}

/// When each row's current secret was issued, from the audit trail: the newest
/// `secret_refreshed` or `created` event of that secret version.
async fn issue_times(
    db: &DatabaseConnection,
    rows: &[connection::Model],
) -> Result<HashMap<(Uuid, i64), DateTime<Utc>>, ConnectionError> {
    let events: Vec<(Uuid, Option<i64>, DateTime<Utc>)> = connection_event::Entity::find()
        .select_only()
        .column(connection_event::Column::ConnectionId)
        .column(connection_event::Column::SecretVersion)
        .column(connection_event::Column::OccurredAt)
        .filter(connection_event::Column::ConnectionId.is_in(rows.iter().map(|r| r.id)))
        .filter(connection_event::Column::Kind.is_in([kinds::SECRET_REFRESHED, kinds::CREATED]))
        .into_tuple()
        .all(db)
        .await?;
    let mut issued: HashMap<(Uuid, i64), DateTime<Utc>> = HashMap::new();
    for (connection_id, version, at) in events {
        let Some(version) = version else { continue };
        let entry = issued.entry((connection_id, version)).or_insert(at);
        *entry = Ord::max(*entry, at);
    }
    Ok(issued)
}

/// A secret the audit trail does not date (seeded, or from before the trail): a
/// connection's first secret was issued when the row was; a later one, at the latest
/// when the row last changed.
///
/// CAUTION: `updated_at` also moves on a re-point, so it can only be later than the
/// real issue time, which gives a later expiry, never an earlier one.
fn fallback_issue_time(row: &connection::Model) -> DateTime<Utc> {
    if row.secret_version == 0 {
        row.inserted_at
    } else {
        row.updated_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_is_the_lifetime_after_issue_but_never_before_the_floor() {
        let now = Utc::now();
        let days = chrono::Duration::days;
        let floor = now + days(30);
        let lifetime = days(180);
        assert_eq!(
            expiry_for(now - days(10), lifetime, floor),
            (now + days(170)).trunc_subsecs(6)
        );
        assert_eq!(
            expiry_for(now - days(170), lifetime, floor),
            floor.trunc_subsecs(6),
            "ten days left by the lifetime: the floor instead"
        );
        assert_eq!(
            expiry_for(now - days(400), lifetime, floor),
            floor.trunc_subsecs(6)
        );
    }

    #[test]
    fn weeks_are_iso_weeks() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let week = IsoWeek::of(at("2027-01-01T12:00:00Z"));
        assert_eq!(week.to_string(), "2026-W53");
        assert_eq!(week.monday().unwrap().to_string(), "2026-12-28");
        assert_eq!(
            IsoWeek::of(at("2026-12-07T00:00:00Z")).to_string(),
            "2026-W50"
        );
    }
}
