//! The job handlers: one for every mail job (notices, stale-secret notices, reminders:
//! `MailJob`), one for invalidations; and what an attempt comes to (done, retried, or
//! dead-lettered).
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument as _;

use apalis::prelude::*;
use entity::connection;
use kernel::credentials::CredentialChange;
use kernel::credentials::redis_cache::RedisCredentials;
use kernel::jobs::{self, InvalidateCredentials, Job, NotifyOwner, NotifyStaleSecret, RemindOwner};
use kernel::metrics::Registry;
use kernel::settings::RetrySettings;
use sea_orm::{DatabaseConnection, EntityTrait as _};

use crate::notify::{Notified, Notifier, NotifyError};
use crate::remind::{Reminded, Reminders};

/// Applies a change to an in-process cache (only `mithril serve` has one).
pub type LocalApply = Arc<dyn Fn(&CredentialChange) + Send + Sync>;

/// The `InvalidateCredentials` handler's means: the shared Redis cache and its channel,
/// this process's own cache where there is one, and the database to tell a stale job.
pub struct Invalidator {
    pub db: DatabaseConnection,
    pub redis: Option<RedisCredentials>,
    pub local: Option<LocalApply>,
}

#[derive(Debug, thiserror::Error)]
pub enum InvalidateError {
    #[error("database: {0}")]
    Store(#[from] sea_orm::DbErr),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl Invalidator {
    /// Brings every cache up to `job`'s change.
    ///
    /// CAUTION: a job can land long after its change (retries, sweeper re-pushes), when
    /// the retirement that would refuse its older "still valid" entries has left the
    /// caches by TTL. So when the connection has since moved on (or is gone), only the
    /// job's retirements are applied: they are never out of date.
    pub async fn apply(&self, job: &InvalidateCredentials) -> Result<(), InvalidateError> {
        let current = connection::Entity::find_by_id(job.change.connection.id)
            .one(&self.db)
            .await?
            .map(|row| row.state_version);
        let stale = current.is_none_or(|version| version > job.change.version);
        let change = if stale {
            job.change.retirements_only()
        } else {
            job.change.clone()
        };
        if let Some(local) = &self.local {
            local(&change);
        }
        if let Some(redis) = &self.redis {
            redis.apply(&change).await?;
        }
        Ok(())
    }
}

/// A job that sends one mail through the claim protocol: a notice, a stale-secret
/// notice or a reminder. One handler (`send_mail`) runs them all.
pub(crate) trait MailJob: Job + Clone {
    /// What sends it (the `Workers` field the handler gets).
    type Sender: Send + Sync + 'static;
    /// The id logs name it by.
    fn id(&self) -> uuid::Uuid;
    /// The trace it continues (`kernel::trace`), if its writer had one.
    fn traceparent(&self) -> Option<&str> {
        None
    }
    /// Sends it; the outcome as `mithril_jobs_total` counts it.
    fn send(
        self,
        sender: Arc<Self::Sender>,
    ) -> impl Future<Output = Result<&'static str, NotifyError>> + Send;
    /// Marks it dead once its retries ran out.
    fn give_up(&self, sender: &Self::Sender) -> impl Future<Output = Result<(), NotifyError>>;
}

impl MailJob for NotifyOwner {
    type Sender = Notifier;
    fn id(&self) -> uuid::Uuid {
        self.event_id
    }
    fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }
    async fn send(self, notifier: Arc<Notifier>) -> Result<&'static str, NotifyError> {
        notifier.notify(&self).await.map(notified)
    }
    async fn give_up(&self, notifier: &Notifier) -> Result<(), NotifyError> {
        notifier.give_up(self.event_id).await
    }
}

impl MailJob for NotifyStaleSecret {
    type Sender = Notifier;
    fn id(&self) -> uuid::Uuid {
        self.event_id
    }
    fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }
    async fn send(self, notifier: Arc<Notifier>) -> Result<&'static str, NotifyError> {
        notifier.notify_stale(&self).await.map(notified)
    }
    async fn give_up(&self, notifier: &Notifier) -> Result<(), NotifyError> {
        notifier.give_up(self.event_id).await
    }
}

impl MailJob for RemindOwner {
    type Sender = Reminders;
    fn id(&self) -> uuid::Uuid {
        self.connection_id
    }
    async fn send(self, reminders: Arc<Reminders>) -> Result<&'static str, NotifyError> {
        reminders
            .remind(&self)
            .await
            .map(|reminded| match reminded {
                Reminded::Sent => "ok",
                Reminded::AlreadyDone => "duplicate",
                Reminded::Moot => "moot",
            })
    }
    async fn give_up(&self, reminders: &Reminders) -> Result<(), NotifyError> {
        reminders.give_up(self).await
    }
}

/// The handler of every `MailJob`.
pub(crate) async fn send_mail<J: MailJob>(
    job: J,
    sender: Data<Arc<J::Sender>>,
    retry: Data<RetrySettings>,
    metrics: Data<Registry>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let tally = Tally::start(J::KIND, &metrics);
    let id = job.id();
    let span = job_span(J::KIND, &id, job.traceparent());
    let (sending, sent_job) = (Arc::clone(&sender), job.clone());
    let sent = unbroken(sent_job.send(sending).instrument(span)).await;
    let give_up = || job.give_up(&sender);
    conclude(&tally, &id, sent, &attempt, &retry, give_up).await
}

/// A notice's outcome, as `mithril_jobs_total` counts it.
fn notified(sent: Notified) -> &'static str {
    match sent {
        Notified::Sent => "ok",
        Notified::AlreadyDone => "duplicate",
    }
}

/// Runs a notice's or reminder's claim, send and settle on a task of its own and waits
/// for it.
///
/// CAUTION: apalis drops a job's future when its worker stops mid-job (its queue went
/// away: Redis restarting). A notice dropped between the mail server's acceptance and
/// `sent` would keep its claim until the lease ends and then go out twice (seen in the
/// redis-restart drill). On a task of its own it finishes whatever the worker does.
async fn unbroken<T: Send + 'static>(
    send: impl Future<Output = Result<T, NotifyError>> + Send + 'static,
) -> Result<T, NotifyError> {
    tokio::spawn(send)
        .await
        .map_err(|e| NotifyError::Transient(format!("the notice's task failed: {e}")))?
}

/// What a notice or reminder job's attempt comes to: done (counted as `done`'s
/// outcome), retried, or dead-lettered, and then marked dead by `give_up` so that
/// neither the reconciler nor the ticker sends it again.
async fn conclude<Fut>(
    tally: &Tally<'_>,
    id: &uuid::Uuid,
    done: Result<&'static str, NotifyError>,
    attempt: &Attempt,
    retry: &RetrySettings,
    give_up: impl FnOnce() -> Fut,
) -> Result<(), BoxDynError>
where
    Fut: Future<Output = Result<(), NotifyError>>,
{
    match done {
        Ok(label) => {
            tally.outcome(label);
            Ok(())
        }
        Err(NotifyError::Permanent(reason)) => Err(dead_letter(tally, id, &reason)),
        Err(NotifyError::Transient(reason)) => {
            let result = retry_or_dead_letter(tally, id, reason, attempt, retry);
            if is_final(&result)
                && let Err(e) = give_up().await
            {
                tracing::warn!(job = tally.job, %id, error = %e, "marking it dead failed");
            }
            result
        }
    }
}

pub(crate) async fn invalidate_credentials(
    job: InvalidateCredentials,
    invalidator: Data<Arc<Invalidator>>,
    retry: Data<RetrySettings>,
    metrics: Data<Registry>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let tally = Tally::start(jobs::INVALIDATE_CREDENTIALS, &metrics);
    let span = job_span(
        jobs::INVALIDATE_CREDENTIALS,
        &job.event_id,
        job.traceparent.as_deref(),
    );
    match invalidator.apply(&job).instrument(span).await {
        Ok(()) => {
            tally.outcome("ok");
            Ok(())
        }
        Err(e) => retry_or_dead_letter(&tally, &job.event_id, e.to_string(), &attempt, &retry),
    }
}

/// A job attempt's span, in the trace of the change that queued it; `Span::none()` when
/// traces are not exported.
fn job_span(job: &'static str, id: &uuid::Uuid, traceparent: Option<&str>) -> tracing::Span {
    if !kernel::trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("job", job, id = %id);
    kernel::trace::follow(&span, traceparent);
    span
}

/// Whether a handler's error ends the job (dead-lettered) rather than asking a retry.
fn is_final(result: &Result<(), BoxDynError>) -> bool {
    result
        .as_ref()
        .err()
        .is_some_and(|e| e.downcast_ref::<AbortError>().is_some())
}

/// One job attempt, counted once it comes to an outcome: `mithril_jobs_total` and
/// `mithril_job_duration_seconds` by kind and outcome.
struct Tally<'a> {
    job: &'static str,
    started: Instant,
    metrics: &'a Registry,
}

impl<'a> Tally<'a> {
    fn start(job: &'static str, metrics: &'a Registry) -> Self {
        Self {
            job,
            started: Instant::now(),
            metrics,
        }
    }

    fn outcome(&self, outcome: &'static str) {
        self.metrics
            .job_done(self.job, outcome, self.started.elapsed());
    }
}

fn retry_or_dead_letter(
    tally: &Tally<'_>,
    event_id: &uuid::Uuid,
    reason: String,
    attempt: &Attempt,
    retry: &RetrySettings,
) -> Result<(), BoxDynError> {
    let job = tally.job;
    if attempt.current() > retry.retries {
        return Err(dead_letter(
            tally,
            event_id,
            &format!("gave up after {} attempts: {reason}", attempt.current()),
        ));
    }
    tally.outcome("retry");
    tracing::warn!(job, %event_id, attempt = attempt.current(), reason, "job failed; retrying with backoff");
    Err(reason.into())
}

/// CAUTION: a dead-lettered job is visible in the log and in
/// `mithril_jobs_total{outcome="dead"}`; apalis keeps it in its dead set.
fn dead_letter(tally: &Tally<'_>, event_id: &uuid::Uuid, reason: &str) -> BoxDynError {
    tally.outcome("dead");
    tracing::error!(job = tally.job, %event_id, reason, "job dead-lettered");
    AbortError::new(reason.to_owned()).into()
}
