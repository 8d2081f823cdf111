//! Running the job workers: the same code in `mithril serve` and `mithril-workers`.
use std::sync::Arc;
use std::time::Duration;

use apalis::layers::retry::backoff::{ExponentialBackoffMaker, MakeBackoff as _};
use apalis::layers::retry::{HasherRng, RetryPolicy};
use apalis::prelude::*;
use kernel::credentials::redis_cache::RedisCredentials;
use kernel::jobs::{InvalidateCredentials, Job, NotifyOwner, NotifyStaleSecret, RemindOwner};
use kernel::metrics::Registry;
use kernel::queue::{Backend, Queue};
use kernel::redis_connect::RedisKeys;
use kernel::settings::{MailSettings, RetrySettings, WorkerSettings};
use sea_orm::DatabaseConnection;

pub use crate::handle::{InvalidateError, Invalidator, LocalApply};
use crate::handle::{invalidate_credentials, send_mail};
use crate::mail::{Mailer, Outgoing, Templates};
use crate::notify::Notifier;
use crate::poll::EveryPeriod;
use crate::prune::Pruner;
use crate::remind::{Reminders, Ticker};

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
    /// Where the jobs' metrics go.
    pub metrics: Registry,
}

impl Workers {
    /// The workers of `settings`, the same in `mithril serve` and `mithril-workers`;
    /// their metrics go to `metrics` (`mithril serve` passes its application's registry,
    /// `mithril-workers` its own: each renders it at its `/metrics`).
    pub fn build(
        settings: &WorkerSettings,
        db: &DatabaseConnection,
        redis: Option<&kernel::redis_connect::Redis>,
        smtp_url: Option<&str>,
        mail: &MailSettings,
        local: Option<LocalApply>,
        metrics: Registry,
    ) -> anyhow::Result<Self> {
        metrics.jobs_from_zero(&Queue::ALL_KINDS);
        let outgoing = Outgoing::from_settings(mail)?;
        if let Some(record) = outgoing.dkim_record_name() {
            tracing::info!(
                dns_txt = record,
                "notices are DKIM-signed: receivers look the public key up at this name"
            );
        }
        let notifier = Arc::new(Notifier {
            db: db.clone(),
            metrics: metrics.clone(),
            mailer: Mailer::new(smtp_url, &settings.mail_dir)?,
            templates: Templates::load(mail)?,
            outgoing,
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
                metrics: metrics.clone(),
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
            metrics,
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
                    .data(w.metrics.clone())
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
