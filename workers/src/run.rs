//! Running the job workers: the same code in `mithril serve` and `mithril-workers`.
use std::sync::Arc;
use std::time::Duration;

use apalis::layers::retry::backoff::{ExponentialBackoffMaker, MakeBackoff as _};
use apalis::layers::retry::{HasherRng, RetryPolicy};
use apalis::prelude::*;

use crate::credentials::{Invalidation, RedisCredentials};
use crate::jobs::{self, InvalidateCredentials, NotifyOwner};
use crate::notify::{Notified, Notifier, NotifyError};
use crate::poll::EveryPeriod;
use crate::queue::Queue;

/// Evicts digests from an in-process cache (only `mithril serve` has one).
pub type LocalEviction = Arc<dyn Fn(&[String]) + Send + Sync>;

/// The `InvalidateCredentials` handler's means: the shared Redis cache and its channel,
/// and this process's own cache where there is one.
pub struct Invalidator {
    pub redis: Option<RedisCredentials>,
    pub local: Option<LocalEviction>,
}

impl Invalidator {
    pub async fn apply(&self, invalidation: &Invalidation) -> redis::RedisResult<()> {
        if let Some(local) = &self.local {
            local(&invalidation.digests());
        }
        if let Some(redis) = &self.redis {
            redis.invalidate(invalidation).await?;
        }
        Ok(())
    }
}

/// How transient failures are retried: exponential backoff from `min` to `max`, then
/// the job is dead-lettered.
#[derive(Clone, Debug)]
pub struct RetrySettings {
    pub retries: usize,
    pub min: Duration,
    pub max: Duration,
}

impl Default for RetrySettings {
    /// About two hours of retries: an SMTP or Redis outage of that length still delivers.
    fn default() -> Self {
        Self {
            retries: 30,
            min: Duration::from_millis(500),
            max: Duration::from_secs(300),
        }
    }
}

#[derive(Clone)]
pub struct Workers {
    pub notifier: Arc<Notifier>,
    pub invalidator: Arc<Invalidator>,
    pub retry: RetrySettings,
    /// How many jobs of each kind one process runs at once.
    pub concurrency: usize,
    /// How often an idle worker asks the queue for work (apalis otherwise waits for its
    /// 30 s heartbeat).
    pub poll_interval: Duration,
}

/// A worker name unique to this process: Redis refuses a name still marked active.
fn worker_name(job: &str) -> String {
    format!(
        "mithril-{job}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

async fn notify_owner(
    job: NotifyOwner,
    notifier: Data<Arc<Notifier>>,
    retry: Data<RetrySettings>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    match notifier.notify(&job).await {
        Ok(Notified::Sent) => {
            outcome(jobs::NOTIFY_OWNER, "ok");
            Ok(())
        }
        Ok(Notified::AlreadySent) => {
            outcome(jobs::NOTIFY_OWNER, "duplicate");
            Ok(())
        }
        Err(NotifyError::Permanent(reason)) => {
            Err(dead_letter(jobs::NOTIFY_OWNER, &job.event_id, &reason))
        }
        Err(NotifyError::Transient(reason)) => {
            retry_or_dead_letter(jobs::NOTIFY_OWNER, &job.event_id, reason, &attempt, &retry)
        }
    }
}

async fn invalidate_credentials(
    job: InvalidateCredentials,
    invalidator: Data<Arc<Invalidator>>,
    retry: Data<RetrySettings>,
    attempt: Attempt,
) -> Result<(), BoxDynError> {
    match invalidator.apply(&job.invalidation).await {
        Ok(()) => {
            outcome(jobs::INVALIDATE_CREDENTIALS, "ok");
            Ok(())
        }
        Err(e) => retry_or_dead_letter(
            jobs::INVALIDATE_CREDENTIALS,
            &job.event_id,
            format!("redis: {e}"),
            &attempt,
            &retry,
        ),
    }
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

/// Runs one worker until `stop` turns true, rebuilding it with backoff whenever its
/// backend fails (Redis restarting, say): apalis's own monitor restarts at once, which
/// spins while the backend is down.
macro_rules! supervise {
    ($stop:expr, $job:expr, $build:expr) => {{
        let mut stop = $stop.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                if *stop.borrow() {
                    return;
                }
                let signal = {
                    let mut stop = stop.clone();
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                        Ok::<(), std::io::Error>(())
                    }
                };
                match $build.run_until(signal).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(job = $job, error = %e, "job worker failed; restarting after backoff");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.wait_for(|s| *s) => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        })
    }};
}

macro_rules! spawn_workers {
    ($storages:expr, $workers:expr, $stop:expr) => {{
        let policy = retry_policy(&$workers.retry)?;
        let (w, p, notify) = ($workers.clone(), policy.clone(), $storages.notify.clone());
        let notifier = supervise!($stop, jobs::NOTIFY_OWNER, {
            WorkerBuilder::new(worker_name(jobs::NOTIFY_OWNER))
                .backend(
                    notify
                        .clone()
                        .poll_with_strategy(EveryPeriod::new(w.poll_interval)),
                )
                .data(w.notifier.clone())
                .data(w.retry.clone())
                .concurrency(w.concurrency)
                .retry(p.clone())
                .build(notify_owner)
        });
        let (w, p, invalidate) = ($workers.clone(), policy, $storages.invalidate.clone());
        let invalidator = supervise!($stop, jobs::INVALIDATE_CREDENTIALS, {
            WorkerBuilder::new(worker_name(jobs::INVALIDATE_CREDENTIALS))
                .backend(
                    invalidate
                        .clone()
                        .poll_with_strategy(EveryPeriod::new(w.poll_interval)),
                )
                .data(w.invalidator.clone())
                .data(w.retry.clone())
                .concurrency(w.concurrency)
                .retry(p.clone())
                .build(invalidate_credentials)
        });
        [notifier, invalidator]
    }};
}

/// Runs the workers of every job type until `stop` turns true (or its sender goes),
/// then lets jobs in flight finish, up to `grace`.
pub async fn run(
    queue: Queue,
    workers: Workers,
    grace: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let handles = match &queue {
        Queue::Redis(q) => spawn_workers!(q.storages, workers, stop),
        Queue::Sqlite(storages) => spawn_workers!(storages, workers, stop),
        Queue::Postgres(storages) => spawn_workers!(storages, workers, stop),
    };
    let mut stopped = stop.clone();
    let _ = stopped.wait_for(|s| *s).await;
    let all = futures_util::future::join_all(handles);
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!("job workers did not finish within the shutdown timeout");
    }
    Ok(())
}
