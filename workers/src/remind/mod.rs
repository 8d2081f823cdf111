//! Reminders before a secret expires, and once it has: a ticker in every worker process
//! finds the secrets due one and pushes an ordinary `RemindOwner` job (so retries and
//! dead-lettering are the queue's, as for notices); the job claims its reminder in
//! `secret_reminders` before it mails, so however many processes tick, each secret gets
//! one reminder per threshold. The ticker also refreshes the expiry gauges.
//!
//! A secret is keyed by its connection and secret version: rotating it starts a new
//! version, with no reminders sent, so the old one's reminders stop by themselves.
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::connection;
use entity::secret_reminder::{self, EXPIRED, state};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait as _, DbErr, EntityTrait as _, QueryFilter};
use uuid::Uuid;

use crate::claim::{Claim, Claimable, lease_until, open};
use crate::local_time::ShownTime;
use crate::mail::ReminderFields;
use crate::notify::{Notifier, NotifyError, since};
use kernel::jobs::RemindOwner;
use kernel::metrics::Registry;
use kernel::thresholds::Thresholds;

/// A queued reminder whose job has not started this long after it was pushed is pushed
/// again (a queue that lost it: Redis restarted without persistence).
mod ticker;

pub use ticker::Ticker;

pub const REQUEUE_AFTER: Duration = Duration::from_secs(600);

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
    pub metrics: Registry,
}

/// The primary key of one reminder.
#[derive(Clone, Copy)]
pub(crate) struct Key<'a> {
    pub(crate) connection_id: Uuid,
    pub(crate) secret_version: i64,
    pub(crate) threshold: &'a str,
}

impl<'a> Key<'a> {
    pub(crate) fn of(job: &'a RemindOwner) -> Self {
        Self {
            connection_id: job.connection_id,
            secret_version: job.secret_version,
            threshold: &job.threshold,
        }
    }
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
        let claims = self.notifier.claims();
        // CAUTION: no wait on a held claim here (notices wait): the checks above would be
        // stale by the time it ended. A held reminder goes back to the job's retry,
        // which runs them again.
        let lease = match claims.claim(&key).await? {
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
        claims.send(&key, lease, send).await?;
        self.metrics.reminder_sent(&job.threshold);
        if let Some(queued_at) = job.queued_at {
            self.metrics.notice_delivered("reminder", since(queued_at));
        }
        Ok(Reminded::Sent)
    }

    /// The reminder will not be sent: its retries ran out. Marked dead unless it was
    /// sent, or another worker holds a live claim on it (a duplicate job that may yet
    /// succeed).
    pub async fn give_up(&self, job: &RemindOwner) -> Result<(), NotifyError> {
        self.notifier.claims().give_up(&Key::of(job)).await
    }

    /// Records a reminder that will not be sent, unless it is settled or being sent.
    async fn skip(&self, key: Key<'_>, now: DateTime<Utc>) -> Result<(), DbErr> {
        let claims = self.notifier.claims();
        claims
            .take(&key, state::SKIPPED, None, open::<Key>(now))
            .await?;
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

impl Claimable for Key<'_> {
    type Entity = secret_reminder::Entity;
    const STATE: secret_reminder::Column = secret_reminder::Column::State;
    const LEASE_UNTIL: secret_reminder::Column = secret_reminder::Column::LeaseUntil;
    const SENT_AT: secret_reminder::Column = secret_reminder::Column::SentAt;
    const WHAT: &'static str = "reminder";

    fn conflict() -> OnConflict {
        OnConflict::columns([
            secret_reminder::Column::ConnectionId,
            secret_reminder::Column::SecretVersion,
            secret_reminder::Column::Threshold,
        ])
    }

    fn filter<Q: QueryFilter>(&self, query: Q) -> Q {
        query
            .filter(secret_reminder::Column::ConnectionId.eq(self.connection_id))
            .filter(secret_reminder::Column::SecretVersion.eq(self.secret_version))
            .filter(secret_reminder::Column::Threshold.eq(self.threshold))
    }

    fn row(
        &self,
        state: &str,
        lease_until: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> secret_reminder::ActiveModel {
        secret_reminder::ActiveModel {
            connection_id: Set(self.connection_id),
            secret_version: Set(self.secret_version),
            threshold: Set(self.threshold.to_owned()),
            state: Set(state.to_owned()),
            lease_until: Set(lease_until),
            sent_at: Set(at),
        }
    }

    fn standing(row: &secret_reminder::Model) -> (&str, Option<DateTime<Utc>>) {
        (&row.state, row.lease_until)
    }

    /// `queued` again, in the hands of the job's own retry (which may claim it at once),
    /// for as long as the ticker waits for a queued reminder's job.
    ///
    // CAUTION: not a lapsed lease. A lapsed `sending` row looks free to the ticker, which
    // would push another job on every pass while this one still retries (45 jobs in 50 s
    // for one reminder with the mail server down).
    fn released(now: DateTime<Utc>) -> (&'static str, DateTime<Utc>) {
        (state::QUEUED, lease_until(now, REQUEUE_AFTER))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_derive_from_the_reminder() {
        let job = RemindOwner {
            connection_id: Uuid::nil(),
            secret_version: 3,
            threshold: "1h 30m".into(),
            expires_at: Utc::now(),
            queued_at: None,
        };
        assert_eq!(
            Reminders::message_id(&job),
            "<reminder.00000000-0000-0000-0000-000000000000.3.1h-30m@mithril>"
        );
    }
}
