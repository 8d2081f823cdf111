//! Running the job workers: the same code in `mithril serve` and `mithril-workers`.
use std::sync::Arc;
use std::time::Duration;

use apalis::layers::retry::backoff::{ExponentialBackoffMaker, MakeBackoff as _};
use apalis::layers::retry::{HasherRng, RetryPolicy};
use apalis::prelude::*;

use entity::connection;
use sea_orm::{DatabaseConnection, EntityTrait as _};

use crate::mail::{Mailer, Templates};
use crate::notify::{Notified, Notifier, NotifyError};
use crate::poll::EveryPeriod;
use crate::prune::Pruner;
use crate::remind::{Reminded, Reminders, Ticker};
use kernel::credentials::CredentialChange;
use kernel::credentials::redis_cache::RedisCredentials;
use kernel::jobs::{self, InvalidateCredentials, Job, NotifyOwner, NotifyStaleSecret, RemindOwner};
use kernel::metrics::ReminderMetrics;
use kernel::queue::{Backend, Queue};
use kernel::redis_connect::RedisKeys;
use kernel::settings::{RetrySettings, WorkerSettings};

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

#[derive(Clone)]
pub struct Workers {
    pub notifier: Arc<Notifier>,
    pub invalidator: Arc<Invalidator>,
    pub reminders: Arc<Reminders>,
    /// Pushes the reminders due, every `reminder_interval`.
    pub ticker: Arc<Ticker>,
    /// Removes finished work after `MITHRIL_RETENTION`.
    pub pruner: Arc<Pruner>,
    pub retry: RetrySettings,
    /// How many jobs of each kind one process runs at once.
    pub concurrency: usize,
    /// How often an idle worker asks the queue for work (apalis otherwise waits for its
    /// 30 s heartbeat).
    pub poll_interval: Duration,
}

impl Workers {
    /// The workers of `settings`, the same in `mithril serve` and `mithril-workers`;
    /// reminder metrics go to `metrics` (`mithril serve` passes its application's
    /// recorder, which its `/metrics` renders).
    pub fn build(
        settings: &WorkerSettings,
        db: &DatabaseConnection,
        redis: Option<&kernel::redis_connect::Redis>,
        smtp_url: Option<&str>,
        mail_from: &str,
        local: Option<LocalApply>,
        metrics: Arc<dyn ReminderMetrics>,
    ) -> anyhow::Result<Self> {
        let notifier = Arc::new(Notifier {
            db: db.clone(),
            mailer: Mailer::new(smtp_url, &settings.mail_dir)?,
            templates: Templates::load()
                .map_err(|e| anyhow::anyhow!("loading the notice templates: {e}"))?,
            mail_from: mail_from.to_owned(),
            lease: settings.notice_lease(),
        });
        Ok(Self {
            reminders: Arc::new(Reminders {
                notifier: notifier.clone(),
                thresholds: settings.reminder_thresholds.clone(),
                metrics: metrics.clone(),
            }),
            pruner: Arc::new(Pruner {
                db: db.clone(),
                retention: settings.retention,
            }),
            ticker: Arc::new(Ticker {
                db: db.clone(),
                thresholds: settings.reminder_thresholds.clone(),
                interval: settings.reminder_interval(),
                metrics,
            }),
            notifier,
            invalidator: Arc::new(Invalidator {
                db: db.clone(),
                redis: redis.map(|r| {
                    RedisCredentials::new(
                        r.manager.clone(),
                        RedisKeys::new(&settings.queue_namespace),
                        settings.credentials_cache_ttl(),
                    )
                }),
                local,
            }),
            retry: settings.retry(),
            concurrency: settings.concurrency(),
            poll_interval: settings.poll_interval(),
        })
    }
}

/// A worker name unique to this process: Redis refuses a name still marked active.
fn worker_name(job: &str) -> String {
    format!(
        "mithril-{job}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A job that sends one mail through the claim protocol: a notice, a stale-secret
/// notice or a reminder. One handler (`send_mail`) runs them all.
trait MailJob: Job + Clone {
    /// What sends it (the `Workers` field the handler gets).
    type Sender: Send + Sync + 'static;
    /// The id logs name it by.
    fn id(&self) -> uuid::Uuid;
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
async fn send_mail<J: MailJob>(
    job: J,
    sender: Data<Arc<J::Sender>>,
    retry: Data<RetrySettings>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    let id = job.id();
    let (sending, sent_job) = (Arc::clone(&sender), job.clone());
    let sent = unbroken(sent_job.send(sending)).await;
    let give_up = || job.give_up(&sender);
    conclude(J::KIND, &id, sent, &attempt, &retry, give_up).await
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
    job: &'static str,
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
            outcome(job, label);
            Ok(())
        }
        Err(NotifyError::Permanent(reason)) => Err(dead_letter(job, id, &reason)),
        Err(NotifyError::Transient(reason)) => {
            let result = retry_or_dead_letter(job, id, reason, attempt, retry);
            if is_final(&result)
                && let Err(e) = give_up().await
            {
                tracing::warn!(job, %id, error = %e, "marking it dead failed");
            }
            result
        }
    }
}

async fn invalidate_credentials(
    job: InvalidateCredentials,
    invalidator: Data<Arc<Invalidator>>,
    retry: Data<RetrySettings>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    match invalidator.apply(&job).await {
        Ok(()) => {
            outcome(jobs::INVALIDATE_CREDENTIALS, "ok");
            Ok(())
        }
        Err(e) => retry_or_dead_letter(
            jobs::INVALIDATE_CREDENTIALS,
            &job.event_id,
            e.to_string(),
            &attempt,
            &retry,
        ),
    }
}

/// Whether a handler's error ends the job (dead-lettered) rather than asking a retry.
fn is_final(result: &Result<(), BoxDynError>) -> bool {
    result
        .as_ref()
        .err()
        .is_some_and(|e| e.downcast_ref::<AbortError>().is_some())
}

fn outcome(job: &'static str, outcome: &'static str) {
    metrics::counter!("mithril_jobs_total", "job" => job, "outcome" => outcome).increment(1);
}

fn retry_or_dead_letter(
    job: &'static str,
    event_id: &uuid::Uuid,
    reason: String,
    attempt: &Attempt,
    retry: &RetrySettings,
) -> Result<(), BoxDynError> {
    if attempt.current() > retry.retries {
        return Err(dead_letter(
            job,
            event_id,
            &format!("gave up after {} attempts: {reason}", attempt.current()),
        ));
    }
    outcome(job, "retry");
    tracing::warn!(job, %event_id, attempt = attempt.current(), reason, "job failed; retrying with backoff");
    Err(reason.into())
}

/// CAUTION: a dead-lettered job is visible in the log and in
/// `mithril_jobs_total{outcome="dead"}`; apalis keeps it in its dead set.
fn dead_letter(job: &'static str, event_id: &uuid::Uuid, reason: &str) -> BoxDynError {
    outcome(job, "dead");
    tracing::error!(job, %event_id, reason, "job dead-lettered");
    AbortError::new(reason.to_owned()).into()
}

fn retry_policy(
    settings: &RetrySettings,
) -> anyhow::Result<
    apalis::layers::retry::BackoffRetryPolicy<apalis::layers::retry::backoff::ExponentialBackoff>,
> {
    let backoff =
        ExponentialBackoffMaker::new(settings.min, settings.max, 0.2, HasherRng::default())
            .map_err(|e| anyhow::anyhow!("invalid retry backoff: {e}"))?
            .make_backoff();
    Ok(RetryPolicy::retries(settings.retries).with_backoff(backoff))
}

/// What a worker's run stops on: `stop` turning true.
type Stopped = std::pin::Pin<Box<dyn Future<Output = Result<(), std::io::Error>> + Send>>;

/// Runs one worker (`run` builds it and runs it until the signal it is given) until
/// `stop` turns true, rebuilding it with backoff whenever its backend fails (Redis
/// restarting, say): apalis's own monitor restarts at once, which spins while the
/// backend is down.
fn supervise<F, Fut>(
    mut stop: tokio::sync::watch::Receiver<bool>,
    job: &'static str,
    run: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Stopped) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), WorkerError>> + Send,
{
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            if *stop.borrow() {
                return;
            }
            let mut signal = stop.clone();
            let signal: Stopped = Box::pin(async move {
                let _ = signal.wait_for(|s| *s).await;
                Ok(())
            });
            match run(signal).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(job, error = %e, "job worker failed; restarting after backoff");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    })
}

/// A supervised worker for every job type, on one backend: `$storage::<J>($conn)` is
/// `Queue`'s storage of job type `J` there. The job types and their handlers are listed
/// once, here.
///
// A macro, not a generic function, only because apalis's worker bounds (a dozen lines of
// nested associated types) would have to be restated for every backend.
macro_rules! spawn_workers {
    ($queue:expr, $storage:ident, $conn:expr, $workers:expr, $stop:expr) => {
        spawn_workers!(@each $queue, $storage, $conn, $workers, $stop,
            (NotifyOwner, notifier, send_mail::<NotifyOwner>),
            (InvalidateCredentials, invalidator, invalidate_credentials),
            (NotifyStaleSecret, notifier, send_mail::<NotifyStaleSecret>),
            (RemindOwner, reminders, send_mail::<RemindOwner>))
    };
    (@each $queue:expr, $storage:ident, $conn:expr, $workers:expr, $stop:expr,
        $(($job:ty, $means:ident, $handler:expr)),*) => {{
        let policy = retry_policy(&$workers.retry)?;
        [$({
            let (w, policy) = ($workers.clone(), policy.clone());
            let storage = $queue.$storage::<$job>($conn);
            supervise($stop.clone(), <$job as Job>::KIND, move |signal| {
                WorkerBuilder::new(worker_name(<$job as Job>::KIND))
                    .backend(
                        storage
                            .clone()
                            .poll_with_strategy(EveryPeriod::new(w.poll_interval)),
                    )
                    .data(w.$means.clone())
                    .data(w.retry.clone())
                    .concurrency(w.concurrency)
                    .retry(policy.clone())
                    .build($handler)
                    .run_until(signal)
            })
        }),*]
    }};
}

/// Runs the workers of every job type, and the reminder ticker, until `stop` turns true
/// (or its sender goes), then lets jobs in flight finish, up to `grace`.
pub async fn run(
    queue: Queue,
    workers: Workers,
    grace: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let handles = match queue.backend() {
        Backend::Redis(conn) => spawn_workers!(queue, redis, conn, workers, stop),
        Backend::Sqlite(pool) => spawn_workers!(queue, sqlite, pool, workers, stop),
        Backend::Postgres(pool) => spawn_workers!(queue, postgres, pool, workers, stop),
    };
    let ticker = tokio::spawn(workers.ticker.clone().run(queue.clone(), stop.clone()));
    let pruner = tokio::spawn(workers.pruner.clone().run(queue.clone(), stop.clone()));
    let mut stopped = stop.clone();
    let _ = stopped.wait_for(|s| *s).await;
    let all = futures_util::future::join_all(handles.into_iter().chain([ticker, pruner]));
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!("job workers did not finish within the shutdown timeout");
    }
    Ok(())
}
