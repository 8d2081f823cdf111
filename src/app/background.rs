//! The domain's background: the outbox relay's tasks, the sightings' writer and the job
//! workers `serve` runs in-process, and their orderly stop.
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use workers::run::{LocalApply, Workers};

use super::infrastructure::Infrastructure;
use crate::config::Config;
use crate::connections::Service;
use crate::outbox::OutboxRelay;
use crate::ratelimit::RefreshBudget;

/// What the application runs beside the server, and how it stops.
///
// CAUTION: two stages, in this order: the relay's tasks (sweeper, dispatcher, sightings)
// first, then, once the outbox is flushed, the in-process job workers, which may still
// take what the flush pushed. One signal for both would stop the workers before the
// flush.
pub(super) struct Background {
    /// Set on SIGTERM: `/health/ready` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    stop_relay: watch::Sender<bool>,
    relay: Vec<JoinHandle<()>>,
    stop_workers: watch::Sender<bool>,
    workers: Option<JoinHandle<()>>,
}

impl Background {
    /// Stops the relay's tasks and waits for them: each ends between its passes.
    pub async fn stop_relay(&mut self) {
        let _ = self.stop_relay.send(true);
        for task in self.relay.drain(..) {
            let _ = task.await;
        }
    }

    /// Stops the job workers and waits for them (they give jobs in flight the shutdown
    /// timeout).
    pub async fn stop_workers(&mut self) {
        let _ = self.stop_workers.send(true);
        if let Some(workers) = self.workers.take() {
            let _ = workers.await;
        }
    }
}

/// The domain on that infrastructure: the outbox relay and the connection service, with
/// their background tasks, and the job workers `serve` runs in-process.
pub(super) fn start_domain(
    config: &Config,
    infra: &Infrastructure,
) -> anyhow::Result<(OutboxRelay, Service, Background)> {
    let db = &infra.db;
    let (relay, committed) = OutboxRelay::new(
        db.clone(),
        infra.queue.clone(),
        config.rotation.reconcile_after,
    )
    .with_dispatcher();
    let (stop_relay, relay_stopped) = watch::channel(false);
    let connections = Service::start(
        db.clone(),
        infra.cache.clone(),
        relay.clone(),
        &config.rotation,
        config.rotation.refresh_limit.map(|limit| {
            RefreshBudget::new(
                limit,
                infra
                    .redis
                    .as_ref()
                    .map(|r| (r.manager.clone(), infra.keys.clone())),
            )
        }),
    );
    let relay_tasks = vec![
        tokio::spawn(relay.clone().run_sweeper(relay_stopped.clone())),
        tokio::spawn(
            relay
                .clone()
                .run_dispatcher(committed, relay_stopped.clone()),
        ),
        tokio::spawn(connections.clone().keep_sightings(
            config.verify.sighting_flush,
            config.verify.sighting_window,
            relay_stopped,
        )),
    ];
    // The job workers `serve` runs by default: the same as `mithril-workers`, plus this
    // process's own cache, and this application's recorder for the reminder metrics (so
    // `/metrics` shows them).
    let (stop_workers, workers_stopped) = watch::channel(false);
    let workers = if config.run_workers {
        let local = infra.cache.clone();
        let local: LocalApply = Arc::new(move |change| local.apply_local(change));
        let workers = Workers::build(
            &config.workers,
            db,
            infra.redis.as_ref(),
            config.mail.smtp_url.as_deref(),
            &config.mail.sender,
            Some(local),
            infra.metrics.registry().clone(),
        )?;
        let (queue, grace) = (infra.queue.clone(), config.shutdown.timeout);
        Some(tokio::spawn(async move {
            if let Err(e) = workers::run::run(queue, workers, grace, workers_stopped).await {
                tracing::error!(error = format!("{e:#}"), "in-process job workers stopped");
            }
        }))
    } else {
        None
    };
    let background = Background {
        draining: Arc::new(AtomicBool::new(false)),
        stop_relay,
        relay: relay_tasks,
        stop_workers,
        workers,
    };
    Ok((relay, connections, background))
}
