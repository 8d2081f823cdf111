//! Wiring only: the application built from a config, on any port, for `serve` and for
//! tests; and its orderly stop.
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::Actor as _;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use kernel::credentials::redis_cache::RedisCredentials;
use kernel::queue::Queue;
use kernel::redis_connect::RedisKeys;
use sea_orm::DatabaseConnection;
use workers::run::{LocalApply, Workers};

use crate::auth::Authorizer;
use crate::cache::{CredentialsCache, follow_changes};
use crate::config::Config;
use crate::connections::Service;
use crate::http::{self, AppState};
use crate::outbox::OutboxRelay;
use crate::ratelimit::RefreshBudget;
use crate::readiness::{DatabaseCheck, DrainCheck, ReadinessCheck, RedisCheck};
use crate::telemetry::Metrics;

pub struct Application {
    port: u16,
    db: DatabaseConnection,
    server: Server,
    state: web::Data<AppState>,
    /// Set on SIGTERM: `/health/ready` answers 503 from then on.
    draining: Arc<AtomicBool>,
    stop_workers: tokio::sync::watch::Sender<bool>,
    job_workers: Option<tokio::task::JoinHandle<()>>,
    stop_sweeper: tokio::sync::watch::Sender<bool>,
    sweeper: tokio::task::JoinHandle<()>,
    /// Writes sightings and forgets old ones; stops with the sweeper.
    sightings: tokio::task::JoinHandle<()>,
    /// Pushes committed outbox rows in batches; stops with the sweeper.
    dispatcher: tokio::task::JoinHandle<()>,
}

impl Application {
    /// Connects, migrates, and binds `config.bind` (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = crate::db::connect(&config).await?;
        crate::db::migrate(&db).await?;
        Self::build_with_db(config, db).await
    }

    pub async fn build_with_db(config: Config, db: DatabaseConnection) -> anyhow::Result<Self> {
        Self::build_with_checks(config, db, Vec::new()).await
    }

    /// Like `build_with_db`, with more readiness checks beside the database's.
    pub async fn build_with_checks(
        config: Config,
        db: DatabaseConnection,
        checks: Vec<Arc<dyn ReadinessCheck>>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let listener =
            TcpListener::bind(&config.bind).with_context(|| format!("binding {}", config.bind))?;
        let port = listener
            .local_addr()
            .context("reading the bound address")?
            .port();
        let authorizer = Authorizer::new(
            db.clone(),
            config.token_cache_ttl,
            config.token_cache_capacity,
        )
        .start();
        let redis = match &config.redis_url {
            Some(url) => Some(kernel::redis_connect::connect(url).await?),
            None => None,
        };
        let cache_ttl = config.workers.credentials_cache_ttl();
        let keys = RedisKeys::new(&config.workers.queue_namespace);
        let cache = Arc::new(CredentialsCache::new(
            cache_ttl,
            config.credentials_cache_capacity,
            redis
                .as_ref()
                .map(|r| RedisCredentials::new(r.manager.clone(), keys.clone(), cache_ttl)),
        ));
        // The recorder of every metric this instance serves at `/metrics`.
        let metrics = Metrics::new();
        // Background tasks go on Tokio's scheduler rather than actix's thread-local set,
        // so they are dropped inside the runtime when it shuts down (a pooled database
        // connection cannot be dropped outside one).
        if let Some(redis) = &redis {
            tokio::spawn(follow_changes(
                redis.client.clone(),
                keys.evictions(),
                cache.clone(),
                metrics.clone(),
            ));
        }
        tokio::spawn(maintain(Arc::downgrade(&cache)));
        let queue = Queue::connect(
            &db,
            redis.as_ref().map(|r| r.manager.clone()),
            &config.workers.queue_namespace,
        )
        .await?;
        let (relay, committed) =
            OutboxRelay::new(db.clone(), queue.clone(), config.reconcile_after).with_dispatcher();
        let (stop_sweeper, sweeper_stopped) = tokio::sync::watch::channel(false);
        let sweeper = tokio::spawn(relay.clone().run_sweeper(sweeper_stopped.clone()));
        let dispatcher = tokio::spawn(
            relay
                .clone()
                .run_dispatcher(committed, sweeper_stopped.clone()),
        );
        let connections = Service::start(
            db.clone(),
            cache.clone(),
            relay.clone(),
            config.actor_idle_timeout,
            config.secret_lifetime,
            config.refresh_limit.map(|limit| {
                RefreshBudget::new(
                    limit,
                    redis.as_ref().map(|r| (r.manager.clone(), keys.clone())),
                )
            }),
        );
        let sightings = tokio::spawn(keep_sightings(
            connections.clone(),
            config.sighting_flush,
            config.sighting_window,
            sweeper_stopped.clone(),
        ));

        // The job workers `serve` runs by default: the same as `mithril-workers`, plus
        // this process's own cache, and this application's recorder for the reminder
        // metrics (so `/metrics` shows them).
        let (stop_workers, workers_stopped) = tokio::sync::watch::channel(false);
        let job_workers = if config.run_workers {
            let local = cache.clone();
            let local: LocalApply = Arc::new(move |change| local.apply_local(change));
            let workers = Workers::build(
                &config.workers,
                &db,
                redis.as_ref(),
                config.smtp_url.as_deref(),
                &config.mail_from,
                Some(local),
                Arc::new(metrics.clone()),
            )?;
            let grace = config.shutdown_timeout;
            Some(tokio::spawn(async move {
                if let Err(e) = workers::run::run(queue, workers, grace, workers_stopped).await {
                    tracing::error!(error = format!("{e:#}"), "in-process job workers stopped");
                }
            }))
        } else {
            None
        };

        let draining = Arc::new(AtomicBool::new(false));
        let mut readiness: Vec<Arc<dyn ReadinessCheck>> = vec![
            Arc::new(DrainCheck(draining.clone())),
            Arc::new(DatabaseCheck(db.clone())),
        ];
        if let Some(redis) = &redis {
            readiness.push(Arc::new(RedisCheck(redis.manager.clone())));
        }
        readiness.extend(checks);
        let http_workers = config.http_workers;
        let shutdown_timeout = config.shutdown_timeout.as_secs();
        let state = web::Data::new(AppState {
            config,
            authorizer,
            connections,
            relay,
            metrics,
            readiness,
        });
        tokio::spawn(summarize_verifies(state.metrics.clone()));
        tokio::spawn(state.metrics.keep_up());
        let shared = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                // The last `wrap` runs first: `observe` sees the envelope's final answer.
                .wrap(from_fn(http::envelope))
                .wrap(from_fn(http::observe))
                .configure(http::routes)
        })
        // Signals are `run_until_signalled`'s, so Ctrl-C stops as gracefully as SIGTERM
        // and test servers in one process do not each catch them.
        .disable_signals()
        // CAUTION: a caller who closes its side of the connection is taken to have gone
        // (HTTP/1.1 allows half-closing after a request, but API callers do not): its
        // request is dropped, and a rotation it queued is skipped (see
        // `connections::Service::rotate`), rather than answered into a closed socket
        // after committing a secret nobody receives.
        .h1_allow_half_closed(false)
        .shutdown_timeout(shutdown_timeout)
        .listen(listener)
        .context("listening")?;
        if http_workers > 0 {
            server = server.workers(http_workers);
        }
        Ok(Self {
            port,
            db: db.clone(),
            server: server.run(),
            state,
            draining,
            stop_workers,
            job_workers,
            stop_sweeper,
            sweeper,
            sightings,
            dispatcher,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The application's database pool (tests look at what it wrote, or close it).
    pub fn db(&self) -> DatabaseConnection {
        self.db.clone()
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Stops this server from outside: `handle().stop(true)` is a graceful stop, after
    /// which `run_until_stopped` drains like a signal would (without the drain delay).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped through `handle()`, then drains (see `run_until_signalled`).
    /// Catches no signal: for tests and embedders.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run(std::future::pending()).await
    }

    /// `mithril serve`: serves until SIGTERM or Ctrl-C, then stops gracefully.
    /// `/health/ready` answers 503 at once, requests are still served for the drain
    /// delay (the balancer takes this instance out meanwhile), then the listener closes;
    /// requests in flight (and the actor work they wait on) finish within
    /// `config.shutdown_timeout`; then what the outbox still holds is pushed and the
    /// in-process job workers stop.
    pub async fn run_until_signalled(self) -> anyhow::Result<()> {
        self.run(shutdown_signal()).await
    }

    async fn run(self, stop: impl Future<Output = &'static str>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let mut server = actix_web::rt::spawn(self.server);
        tokio::select! {
            ended = &mut server => {
                // Stopped through `handle`, or failed.
                ended.context("joining the server")?.context("running the server")?;
            }
            signal = stop => {
                self.draining.store(true, Ordering::SeqCst);
                let delay = self.state.config.drain_delay;
                tracing::info!(signal, drain_delay_ms = delay.as_millis() as u64, "draining: not ready, still serving");
                tokio::time::sleep(delay).await;
                tracing::info!("stopping: no new connections, finishing requests in flight");
                handle.stop(true).await;
                server
                    .await
                    .context("joining the server")?
                    .context("running the server")?;
            }
        }
        // Every request has been answered or dropped; rotations a dropped request queued
        // are skipped. Refuse whatever is still queued and wait for the running ones.
        // CAUTION: only after this may the outbox be flushed: no rotation commits later.
        if !self
            .state
            .connections
            .close(self.state.config.shutdown_timeout)
            .await
        {
            tracing::warn!("rotations still running after the shutdown timeout");
        }
        // The sweeper ends between sweeps, so the flush below does not race it (on
        // SQLite, which has no SKIP LOCKED, a race would push rows twice) and no sweep
        // is cut off by the runtime going away.
        let _ = self.stop_sweeper.send(true);
        let _ = self.sweeper.await;
        let _ = self.sightings.await;
        let _ = self.dispatcher.await;
        // What verify counted since the last flush; a notice of a first sighting goes
        // to the outbox, so before the outbox flush.
        if let Err(e) = self.state.connections.flush_sightings().await {
            tracing::warn!(
                error = format!("{e:#}"),
                "sightings not written at the stop"
            );
        }
        let flushed = match self.state.relay.reopened(&self.state.config).await {
            Ok(relay) => relay.flush().await,
            Err(e) => Err(e),
        };
        match flushed {
            Ok(n) => tracing::info!(rows = n, "outbox flushed"),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "outbox flush failed; the next start's sweeper will push it"
            ),
        }
        let _ = self.stop_workers.send(true);
        if let Some(job_workers) = self.job_workers {
            let _ = job_workers.await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Writes the sightings verify counts, every `flush`, and forgets retired digests and
/// sightings older than `window`, every hour, until `stop` turns true.
async fn keep_sightings(
    connections: Service,
    flush: std::time::Duration,
    window: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut flushing = tokio::time::interval(flush.max(std::time::Duration::from_millis(10)));
    let mut pruning = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        // Chosen first, done after: the stop's watch guard must not live across awaits.
        let prune = tokio::select! {
            _ = flushing.tick() => false,
            _ = pruning.tick() => true,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        if prune {
            match connections.forget_older_than(window).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    rows = n,
                    "forgot retired digests and sightings past the window"
                ),
                Err(e) => tracing::warn!(error = %e, "forgetting old sightings failed; will retry"),
            }
        } else if let Err(e) = connections.flush_sightings().await {
            tracing::warn!(
                error = format!("{e:#}"),
                "writing sightings failed; kept for the next flush"
            );
        }
    }
}

/// Logs, once a minute, how many verifies there were by outcome (their successes are
/// not logged one by one at info).
async fn summarize_verifies(metrics: Metrics) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        let [ok, retired, expired, unknown] = metrics.take_verify_summary();
        if ok + retired + expired + unknown > 0 {
            tracing::info!(ok, retired, expired, unknown, "verifies in the last minute");
        }
    }
}

/// Runs the credentials cache's maintenance every few seconds, for as long as the cache
/// lives.
async fn maintain(cache: std::sync::Weak<CredentialsCache>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        cache.run_maintenance();
    }
}

/// Waits for SIGTERM or Ctrl-C (SIGINT) and names the one that came.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            },
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
