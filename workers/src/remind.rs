//! Reminders before a secret expires, and once it has: a ticker in every worker process
//! finds the secrets due one and pushes an ordinary `RemindOwner` job (so retries and
//! dead-lettering are the queue's, as for notices); the job claims its reminder in
//! `secret_reminders` before it mails, so however many processes tick, each secret gets
//! one reminder per threshold. The ticker also refreshes the expiry gauges.
//!
//! A secret is keyed by its connection and secret version: rotating it starts a new
//! version, with no reminders sent, so the old one's reminders stop by themselves.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::connection;
use entity::secret_reminder::{self, EXPIRED, state};
use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, DatabaseConnection, DbErr, EntityTrait as _,
    PaginatorTrait as _, QueryFilter as _,
};
use uuid::Uuid;

use crate::jobs::RemindOwner;
use crate::local_time::ShownTime;
use crate::mail::ReminderFields;
use crate::notify::{Claim, Notifier, NotifyError, Renewal, lease_until, renewing};
use crate::queue::Queue;

/// A queued reminder whose job has not started this long after it was pushed is pushed
/// again (a queue that lost it: Redis restarted without persistence).
pub const REQUEUE_AFTER: Duration = Duration::from_secs(600);

/// Candidate connections looked up per query of reminder rows.
const CHUNK: usize = 500;

/// One "expires within" threshold: its label as configured (`14d`) and its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Threshold {
    pub label: String,
    pub within: Duration,
}

/// `MITHRIL_REMINDER_THRESHOLDS`: when before expiry owners are reminded, nearest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thresholds(Vec<Threshold>);

impl Default for Thresholds {
    /// `14d,3d,1d`.
    fn default() -> Self {
        let day = 24 * 3600;
        Self(
            [("1d", 1), ("3d", 3), ("14d", 14)]
                .into_iter()
                .map(|(label, days)| Threshold {
                    label: label.to_owned(),
                    within: Duration::from_secs(days * day),
                })
                .collect(),
        )
    }
}

/// Which reminder a secret is due, now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due<'a> {
    /// Further from its expiry than every threshold.
    NotYet,
    /// Within this threshold, the nearest one it has reached.
    Within(&'a Threshold),
    Expired,
}

impl Due<'_> {
    /// The reminder's key in `secret_reminders`.
    pub fn label(&self) -> Option<&str> {
        match self {
            Self::NotYet => None,
            Self::Within(threshold) => Some(&threshold.label),
            Self::Expired => Some(EXPIRED),
        }
    }
}

impl Thresholds {
    /// A comma-separated list of durations humantime reads (`14d,3d,1d`, `8s,4s`), in any
    /// order; empty or `off` for none (owners then hear only once a secret has expired).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(Self(Vec::new()));
        }
        let mut thresholds = Vec::new();
        for label in text.split(',').map(str::trim) {
            let within = humantime::parse_duration(label)
                .map_err(|e| format!("reminder threshold {label:?}: {e}"))?;
            if within.is_zero() {
                return Err(format!(
                    "reminder threshold {label:?} is zero: the `expired` reminder covers that"
                ));
            }
            if label.len() > 32 || label.eq_ignore_ascii_case(EXPIRED) {
                return Err(format!(
                    "reminder threshold {label:?} is not a usable label"
                ));
            }
            if thresholds.iter().any(|t: &Threshold| t.within == within) {
                return Err(format!("reminder threshold {label:?} is given twice"));
            }
            thresholds.push(Threshold {
                label: label.to_owned(),
                within,
            });
        }
        thresholds.sort_by_key(|t| t.within);
        Ok(Self(thresholds))
    }

    /// Nearest first.
    pub fn iter(&self) -> impl Iterator<Item = &Threshold> {
        self.0.iter()
    }

    /// The furthest threshold from expiry.
    pub fn widest(&self) -> Duration {
        self.0.last().map_or(Duration::ZERO, |t| t.within)
    }

    /// The reminder a secret expiring at `expires_at` is due at `now`: the nearest
    /// threshold it has reached (a secret 2 days from expiry is due its `3d` reminder,
    /// not its `14d` one), or `Expired`.
    pub fn due(&self, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Due<'_> {
        let Ok(remaining) = (expires_at - now).to_std() else {
            return Due::Expired;
        };
        if remaining.is_zero() {
            return Due::Expired;
        }
        self.0
            .iter()
            .find(|t| remaining <= t.within)
            .map_or(Due::NotYet, Due::Within)
    }

    /// The labels of the reminders further from expiry than `label`: those a secret
    /// that is due `label` will never be sent (they are recorded as skipped).
    pub fn wider_than(&self, label: &str) -> Vec<&str> {
        let labels = self.0.iter().map(|t| t.label.as_str());
        if label == EXPIRED {
            return labels.collect();
        }
        match self.0.iter().position(|t| t.label == label) {
            Some(at) => labels.skip(at + 1).collect(),
            None => Vec::new(),
        }
    }
}

impl std::fmt::Display for Thresholds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self.0.iter().rev().map(|t| t.label.as_str()).collect();
        f.write_str(&labels.join(","))
    }
}

/// Where reminder metrics go: the application's recorder in `mithril serve`, the
/// process-global one (`metrics` macros) elsewhere.
pub trait ReminderMetrics: Send + Sync {
    /// Secrets that expire within `within` (a threshold's label) from now.
    fn secrets_expiring(&self, within: &str, count: u64);
    /// Secrets past their expiry.
    fn secrets_expired(&self, count: u64);
    /// One reminder sent, of `threshold` (a label, or `expired`).
    fn reminder_sent(&self, threshold: &str);
}

pub const SECRETS_EXPIRING: &str = "mithril_secrets_expiring";
pub const SECRETS_EXPIRED: &str = "mithril_secrets_expired";
pub const REMINDERS: &str = "mithril_reminders_total";

/// Through the `metrics` macros, to whatever recorder the process installed (none in
/// `mithril-workers`, which serves no `/metrics`).
pub struct GlobalMetrics;

impl ReminderMetrics for GlobalMetrics {
    fn secrets_expiring(&self, within: &str, count: u64) {
        // Exact below 2^53 secrets.
        metrics::gauge!(SECRETS_EXPIRING, "within" => within.to_owned()).set(count as f64);
    }

    fn secrets_expired(&self, count: u64) {
        metrics::gauge!(SECRETS_EXPIRED).set(count as f64);
    }

    fn reminder_sent(&self, threshold: &str) {
        metrics::counter!(REMINDERS, "threshold" => threshold.to_owned()).increment(1);
    }
}

/// What handling one reminder job did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reminded {
    Sent,
    /// Sent, skipped or dead already (a redelivered or duplicate job).
    AlreadyDone,
    /// Not sent, and never will be: the secret was rotated or the connection deleted,
    /// or a nearer threshold is due by now (that one is sent instead).
    Moot,
}

/// Sends reminders: the notices' mailer, templates and lease, and the thresholds.
pub struct Reminders {
    pub notifier: Arc<Notifier>,
    pub thresholds: Thresholds,
    pub metrics: Arc<dyn ReminderMetrics>,
}

/// The primary key of one reminder.
#[derive(Clone, Copy)]
struct Key<'a> {
    connection_id: Uuid,
    secret_version: i64,
    threshold: &'a str,
}

impl<'a> Key<'a> {
    fn of(job: &'a RemindOwner) -> Self {
        Self {
            connection_id: job.connection_id,
            secret_version: job.secret_version,
            threshold: &job.threshold,
        }
    }

    fn filter<Q: sea_orm::QueryFilter>(self, query: Q) -> Q {
        query
            .filter(secret_reminder::Column::ConnectionId.eq(self.connection_id))
            .filter(secret_reminder::Column::SecretVersion.eq(self.secret_version))
            .filter(secret_reminder::Column::Threshold.eq(self.threshold))
    }

    fn row(self, state: &str, lease_until: Option<DateTime<Utc>>) -> secret_reminder::ActiveModel {
        secret_reminder::ActiveModel {
            connection_id: Set(self.connection_id),
            secret_version: Set(self.secret_version),
            threshold: Set(self.threshold.to_owned()),
            state: Set(state.to_owned()),
            lease_until: Set(lease_until),
            sent_at: Set(Utc::now()),
        }
    }
}

fn on_key() -> OnConflict {
    OnConflict::columns([
        secret_reminder::Column::ConnectionId,
        secret_reminder::Column::SecretVersion,
        secret_reminder::Column::Threshold,
    ])
}

/// The row's own column, as an `ON CONFLICT ... WHERE` needs it named.
fn existing(column: secret_reminder::Column) -> Expr {
    Expr::col((secret_reminder::Entity, column))
}

/// `sending` or `queued` whose lease has lapsed: free to take.
fn lapsed(now: DateTime<Utc>) -> Expr {
    existing(secret_reminder::Column::State)
        .is_in([state::QUEUED, state::SENDING])
        .and(existing(secret_reminder::Column::LeaseUntil).lt(now))
}

/// Writes `key`'s row as `state` (until `lease_until`): inserted if absent, else only
/// where `replaces` holds of the row there; one statement, so of two writers racing for
/// the same reminder only one wins. Returns whether this one did.
async fn take(
    db: &DatabaseConnection,
    key: Key<'_>,
    state: &str,
    lease_until: Option<DateTime<Utc>>,
    replaces: Expr,
) -> Result<bool, DbErr> {
    let written = secret_reminder::Entity::insert(key.row(state, lease_until))
        .on_conflict(
            on_key()
                .update_columns([
                    secret_reminder::Column::State,
                    secret_reminder::Column::LeaseUntil,
                    secret_reminder::Column::SentAt,
                ])
                .action_and_where(replaces)
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(written == 1)
}

/// `queued` (the ticker's, not yet taken by a worker), or a lapsed lease.
fn open(now: DateTime<Utc>) -> Expr {
    existing(secret_reminder::Column::State)
        .eq(state::QUEUED)
        .or(lapsed(now))
}

impl Reminders {
    /// Derived from the reminder's key, so a redelivered job that does send again (its
    /// worker died after the server accepted) carries the same id.
    pub fn message_id(job: &RemindOwner) -> String {
        let threshold: String = job
            .threshold
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!(
            "<reminder.{}.{}.{threshold}@mithril>",
            job.connection_id, job.secret_version
        )
    }

    /// Sends `job`'s reminder unless it is moot, done, or being sent by another worker.
    ///
    /// CAUTION: as for notices, the claim comes before the mail and `sent` after the
    /// server accepted it, so two workers handed the same job never both send.
    #[tracing::instrument(skip_all, fields(connection_id = %job.connection_id, secret_version = job.secret_version, threshold = %job.threshold, expires_at = %job.expires_at))]
    pub async fn remind(&self, job: &RemindOwner) -> Result<Reminded, NotifyError> {
        let db = &self.notifier.db;
        let key = Key::of(job);
        let row = connection::Entity::find_by_id(job.connection_id)
            .one(db)
            .await?;
        let Some(row) = row.filter(|r| r.secret_version == job.secret_version) else {
            // Deleted (its reminder rows went with it) or rotated: nobody to remind.
            return Ok(Reminded::Moot);
        };
        let Some(expires_at) = row.secret_expires_at else {
            return Ok(Reminded::Moot);
        };
        let now = Utc::now();
        if self.thresholds.due(expires_at, now).label() != Some(job.threshold.as_str()) {
            // A nearer threshold (or expiry) came meanwhile: this one is skipped, and the
            // ticker pushes the one due now.
            self.skip(key, now).await?;
            return Ok(Reminded::Moot);
        }
        let lease = match self.claim(key, now).await? {
            Claim::Ours(lease) => lease,
            Claim::Done => return Ok(Reminded::AlreadyDone),
            Claim::Held => {
                return Err(NotifyError::Transient(
                    "another worker is sending this reminder".to_owned(),
                ));
            }
        };
        // Only the nearest reminder goes: the wider ones not yet sent never will be.
        self.skip_wider(&row, &job.threshold).await?;
        let send = self.compose_and_send(&row, expires_at, job);
        let (sent, lease) = renewing(self.notifier.lease, lease, self.renewer(job), send).await;
        match sent {
            Ok(()) => {
                self.settle(key, &lease, state::SENT).await?;
                self.metrics.reminder_sent(&job.threshold);
                Ok(Reminded::Sent)
            }
            Err(NotifyError::Permanent(reason)) => {
                self.settle(key, &lease, state::DEAD).await?;
                Err(NotifyError::Permanent(reason))
            }
            Err(NotifyError::Transient(reason)) => {
                self.release(key, &lease).await?;
                Err(NotifyError::Transient(reason))
            }
        }
    }

    /// The reminder will not be sent: its retries ran out. Marked dead unless it was
    /// sent, or another worker holds a live claim on it (a duplicate job that may yet
    /// succeed).
    pub async fn give_up(&self, job: &RemindOwner) -> Result<(), NotifyError> {
        let live_claim = existing(secret_reminder::Column::State)
            .eq(state::SENDING)
            .and(existing(secret_reminder::Column::LeaseUntil).gt(Utc::now()));
        let givable = existing(secret_reminder::Column::State)
            .ne(state::SENT)
            .and(live_claim.not());
        take(&self.notifier.db, Key::of(job), state::DEAD, None, givable).await?;
        Ok(())
    }

    /// Takes the reminder: a new `sending` claim, or one over a `queued` row (the
    /// ticker's) or a lapsed claim.
    async fn claim(&self, key: Key<'_>, now: DateTime<Utc>) -> Result<Claim, NotifyError> {
        let db = &self.notifier.db;
        let until = lease_until(now, self.notifier.lease);
        if take(db, key, state::SENDING, Some(until), open(now)).await? {
            return Ok(Claim::Ours(until));
        }
        let current = key.filter(secret_reminder::Entity::find()).one(db).await?;
        Ok(match current.map(|row| row.state) {
            Some(s) if s == state::SENDING => Claim::Held,
            Some(_) => Claim::Done,
            None => Claim::Held,
        })
    }

    /// Records a reminder that will not be sent, unless it is settled or being sent.
    async fn skip(&self, key: Key<'_>, now: DateTime<Utc>) -> Result<(), DbErr> {
        take(&self.notifier.db, key, state::SKIPPED, None, open(now)).await?;
        Ok(())
    }

    /// The wider reminders of this secret that were never sent are skipped for good.
    async fn skip_wider(&self, row: &connection::Model, threshold: &str) -> Result<(), DbErr> {
        let now = Utc::now();
        for wider in self.thresholds.wider_than(threshold) {
            let key = Key {
                connection_id: row.id,
                secret_version: row.secret_version,
                threshold: wider,
            };
            self.skip(key, now).await?;
        }
        Ok(())
    }

    /// Ends this worker's claim with `sent` or `dead`. Only its own claim: the lease it
    /// wrote tells it from another worker's after a takeover.
    async fn settle(
        &self,
        key: Key<'_>,
        lease: &[DateTime<Utc>],
        outcome: &str,
    ) -> Result<(), NotifyError> {
        key.filter(secret_reminder::Entity::update_many())
            .filter(secret_reminder::Column::LeaseUntil.is_in(lease.iter().copied()))
            .col_expr(secret_reminder::Column::State, Expr::value(outcome))
            .col_expr(secret_reminder::Column::SentAt, Expr::value(Utc::now()))
            .col_expr(
                secret_reminder::Column::LeaseUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .exec(&self.notifier.db)
            .await?;
        Ok(())
    }

    /// Hands this worker's claim back after a failure worth retrying: `queued` again, in
    /// the hands of the job's own retry (which may claim it at once), for as long as the
    /// ticker waits for a queued reminder's job.
    ///
    // CAUTION: not a lapsed lease. A lapsed `sending` row looks free to the ticker, which
    // would push another job on every pass while this one still retries (45 jobs in 50 s
    // for one reminder with the mail server down).
    async fn release(&self, key: Key<'_>, lease: &[DateTime<Utc>]) -> Result<(), NotifyError> {
        key.filter(secret_reminder::Entity::update_many())
            .filter(secret_reminder::Column::LeaseUntil.is_in(lease.iter().copied()))
            .col_expr(secret_reminder::Column::State, Expr::value(state::QUEUED))
            .col_expr(
                secret_reminder::Column::LeaseUntil,
                Expr::value(lease_until(Utc::now(), REQUEUE_AFTER)),
            )
            .filter(secret_reminder::Column::State.eq(state::SENDING))
            .exec(&self.notifier.db)
            .await?;
        Ok(())
    }

    /// Moves this worker's live claim on `job`'s reminder (holding one of `leases`) to
    /// end at `next`, as a send goes on.
    fn renewer(&self, job: &RemindOwner) -> impl Fn(Vec<DateTime<Utc>>, DateTime<Utc>) -> Renewal {
        let db = self.notifier.db.clone();
        let (connection_id, secret_version, threshold) =
            (job.connection_id, job.secret_version, job.threshold.clone());
        move |leases, next| {
            let db = db.clone();
            let threshold = threshold.clone();
            Box::pin(async move {
                let key = Key {
                    connection_id,
                    secret_version,
                    threshold: &threshold,
                };
                let renewed = key
                    .filter(secret_reminder::Entity::update_many())
                    .filter(secret_reminder::Column::State.eq(state::SENDING))
                    .filter(secret_reminder::Column::LeaseUntil.is_in(leases))
                    .col_expr(secret_reminder::Column::LeaseUntil, Expr::value(next))
                    .exec(&db)
                    .await?
                    .rows_affected;
                Ok(renewed == 1)
            })
        }
    }

    async fn compose_and_send(
        &self,
        row: &connection::Model,
        expires_at: DateTime<Utc>,
        job: &RemindOwner,
    ) -> Result<(), NotifyError> {
        let (client, owner, consumer_name) = self
            .notifier
            .parties(row.client_id, row.consumer_id)
            .await?;
        let fields = ReminderFields {
            client_name: client.name,
            consumer_name,
            connection_id: row.id.to_string(),
            consumer_id: row.consumer_id.to_string(),
            secret_version: row.secret_version,
            expires_at: ShownTime::of(expires_at),
            expired: job.threshold == EXPIRED,
            rotate_method: "PATCH".to_owned(),
            rotate_path: format!(
                "/api/clients/{}/connections/{}/actions/refresh_secret",
                row.client_id, row.id
            ),
        };
        let message_id = Self::message_id(job);
        let message =
            self.notifier
                .message(&owner, &message_id, "reminder", |templates, locale| {
                    templates.render_reminder(locale, &fields)
                })?;
        Ok(self.notifier.mailer.send(message).await?)
    }
}

/// Finds the secrets due a reminder and pushes one job for each, and refreshes the
/// expiry gauges: every `interval`, in every worker process.
pub struct Ticker {
    pub db: DatabaseConnection,
    pub thresholds: Thresholds,
    pub interval: Duration,
    pub metrics: Arc<dyn ReminderMetrics>,
}

impl Ticker {
    /// Ticks until `stop` turns true; the first tick is at once.
    pub async fn run(self: Arc<Self>, queue: Queue, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(self.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.tick(&queue, Utc::now()).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "reminder tick failed; the next one retries"
                );
            }
        }
    }

    /// One tick at `now`: the gauges, then a job for every reminder due and neither
    /// settled nor in hand. Returns how many jobs it pushed.
    pub async fn tick(&self, queue: &Queue, now: DateTime<Utc>) -> anyhow::Result<usize> {
        self.refresh_gauges(now).await?;
        let due = self.due(now).await?;
        let mut pushed = 0;
        for job in due {
            let key = Key::of(&job);
            if !self.take_for_queue(key, now).await? {
                continue;
            }
            if let Err(e) = queue.push_reminder(job.clone()).await {
                // Free it for the next tick, and stop: the queue is down.
                key.filter(secret_reminder::Entity::update_many())
                    .col_expr(secret_reminder::Column::LeaseUntil, Expr::value(now))
                    .filter(secret_reminder::Column::State.eq(state::QUEUED))
                    .exec(&self.db)
                    .await?;
                return Err(anyhow::anyhow!("pushing a reminder: {e}"));
            }
            pushed += 1;
        }
        Ok(pushed)
    }

    async fn refresh_gauges(&self, now: DateTime<Utc>) -> Result<(), DbErr> {
        let expired = connection::Entity::find()
            .filter(connection::Column::SecretExpiresAt.lte(now))
            .count(&self.db)
            .await?;
        self.metrics.secrets_expired(expired);
        for threshold in self.thresholds.iter() {
            let expiring = connection::Entity::find()
                .filter(connection::Column::SecretExpiresAt.gt(now))
                .filter(connection::Column::SecretExpiresAt.lte(lease_until(now, threshold.within)))
                .count(&self.db)
                .await?;
            self.metrics.secrets_expiring(&threshold.label, expiring);
        }
        Ok(())
    }

    /// The reminders due at `now` with no row that settles them or holds them.
    async fn due(&self, now: DateTime<Utc>) -> Result<Vec<RemindOwner>, DbErr> {
        // Secrets whose `expired` reminder is settled are done with for good.
        let finished = Query::select()
            .expr(Expr::val(1))
            .from(secret_reminder::Entity)
            .and_where(
                Expr::col((
                    secret_reminder::Entity,
                    secret_reminder::Column::ConnectionId,
                ))
                .equals((connection::Entity, connection::Column::Id)),
            )
            .and_where(
                Expr::col((
                    secret_reminder::Entity,
                    secret_reminder::Column::SecretVersion,
                ))
                .equals((connection::Entity, connection::Column::SecretVersion)),
            )
            .and_where(
                Expr::col((secret_reminder::Entity, secret_reminder::Column::Threshold))
                    .eq(EXPIRED),
            )
            .and_where(
                Expr::col((secret_reminder::Entity, secret_reminder::Column::State)).is_in([
                    state::SENT,
                    state::DEAD,
                    state::SKIPPED,
                ]),
            )
            .to_owned();
        let candidates = connection::Entity::find()
            .filter(
                connection::Column::SecretExpiresAt.lte(lease_until(now, self.thresholds.widest())),
            )
            .filter(Expr::exists(finished).not())
            .all(&self.db)
            .await?;
        let mut due = Vec::new();
        for chunk in candidates.chunks(CHUNK) {
            let rows: HashMap<(Uuid, i64, String), secret_reminder::Model> =
                secret_reminder::Entity::find()
                    .filter(secret_reminder::Column::ConnectionId.is_in(chunk.iter().map(|c| c.id)))
                    .all(&self.db)
                    .await?
                    .into_iter()
                    .map(|r| ((r.connection_id, r.secret_version, r.threshold.clone()), r))
                    .collect();
            for candidate in chunk {
                let Some(expires_at) = candidate.secret_expires_at else {
                    continue;
                };
                let Some(label) = self
                    .thresholds
                    .due(expires_at, now)
                    .label()
                    .map(str::to_owned)
                else {
                    continue;
                };
                let in_hand = rows
                    .get(&(candidate.id, candidate.secret_version, label.clone()))
                    .is_some_and(|row| {
                        !(row.state == state::QUEUED || row.state == state::SENDING)
                            || row.lease_until.is_some_and(|until| until > now)
                    });
                if !in_hand {
                    due.push(RemindOwner {
                        connection_id: candidate.id,
                        secret_version: candidate.secret_version,
                        threshold: label,
                        expires_at,
                    });
                }
            }
        }
        Ok(due)
    }

    /// Marks the reminder queued, unless another ticker did first (or it is settled or
    /// being sent); true when this ticker is to push its job.
    async fn take_for_queue(&self, key: Key<'_>, now: DateTime<Utc>) -> Result<bool, DbErr> {
        let until = Some(lease_until(now, REQUEUE_AFTER));
        take(&self.db, key, state::QUEUED, until, lapsed(now)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_in_any_order_and_refuse_nonsense() {
        let parsed = Thresholds::parse("3d, 14d,1d").unwrap();
        assert_eq!(parsed, Thresholds::default());
        assert_eq!(parsed.to_string(), "14d,3d,1d");
        assert_eq!(parsed.widest(), Duration::from_secs(14 * 86_400));
        assert_eq!(Thresholds::parse("off").unwrap().widest(), Duration::ZERO);
        assert_eq!(Thresholds::parse("").unwrap().iter().count(), 0);
        for refused in ["0s", "soon", "1d,24h", "3d,,1d"] {
            assert!(Thresholds::parse(refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn a_secret_is_due_the_nearest_threshold_it_has_reached() {
        let thresholds = Thresholds::default();
        let now = Utc::now();
        let in_days = |days: i64| now + chrono::Duration::days(days);
        let label = |at| thresholds.due(at, now).label().map(str::to_owned);
        assert_eq!(label(in_days(30)), None);
        assert_eq!(label(in_days(14)).as_deref(), Some("14d"));
        assert_eq!(label(in_days(10)).as_deref(), Some("14d"));
        assert_eq!(label(in_days(2)).as_deref(), Some("3d"));
        assert_eq!(
            label(now + chrono::Duration::hours(5)).as_deref(),
            Some("1d")
        );
        assert_eq!(label(now).as_deref(), Some(EXPIRED));
        assert_eq!(label(in_days(-300)).as_deref(), Some(EXPIRED));
        assert_eq!(thresholds.wider_than("3d"), ["14d"]);
        assert_eq!(thresholds.wider_than("14d"), Vec::<&str>::new());
        assert_eq!(thresholds.wider_than(EXPIRED), ["1d", "3d", "14d"]);
    }

    #[test]
    fn message_ids_derive_from_the_reminder() {
        let job = RemindOwner {
            connection_id: Uuid::nil(),
            secret_version: 3,
            threshold: "1h 30m".into(),
            expires_at: Utc::now(),
        };
        assert_eq!(
            Reminders::message_id(&job),
            "<reminder.00000000-0000-0000-0000-000000000000.3.1h-30m@mithril>"
        );
    }
}
