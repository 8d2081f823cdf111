//! Wiring only: the application built from a config, on any port, for `serve` and for
//! tests; and its orderly stop.
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix::Actor as _;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use sea_orm::DatabaseConnection;

use crate::auth::Authorizer;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::readiness::ReadinessCheck;

mod background;
mod infrastructure;

use background::{Background, start_domain};
use infrastructure::Infrastructure;

pub struct Application {
    port: u16,
    db: DatabaseConnection,
    server: Server,
    state: web::Data<AppState>,
    background: Background,
}

/// The HTTP server on `listener`, serving `state`.
fn serve(
    state: web::Data<AppState>,
    listener: TcpListener,
    http_workers: usize,
    shutdown_timeout: u64,
) -> anyhow::Result<Server> {
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            // The last `wrap` runs first: `observe` sees the envelope's final answer.
            .wrap(from_fn(http::envelope))
            .wrap(from_fn(http::observe))
            .configure(http::routes)
    })
    // Signals are `run_until_signalled`'s, so Ctrl-C stops as gracefully as SIGTERM and
    // test servers in one process do not each catch them.
    .disable_signals()
    // CAUTION: a caller who closes its side of the connection is taken to have gone
    // (HTTP/1.1 allows half-closing after a request, but API callers do not): its request
    // is dropped, and a rotation it queued is skipped (see
    // `connections::Service::rotate`), rather than answered into a closed socket after
    // committing a secret nobody receives.
    .h1_allow_half_closed(false)
    .shutdown_timeout(shutdown_timeout)
    .listen(listener)
    .context("listening")?;
    if http_workers > 0 {
        server = server.workers(http_workers);
    }
    Ok(server.run())
}

impl Application {
    /// Connects, migrates, and binds `config.http.bind` (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = crate::db::connect(&config).await?;
        crate::db::migrate(&db).await?;
        Self::build_with_db(config, db).await
    }

    pub async fn build_with_db(config: Config, db: DatabaseConnection) -> anyhow::Result<Self> {
        Self::build_with_checks(config, db, Vec::new()).await
    }

    /// Like `build_with_db`, with more readiness checks beside the database's:
    /// infrastructure, then the domain on it, then the server.
    pub async fn build_with_checks(
        config: Config,
        db: DatabaseConnection,
        checks: Vec<Arc<dyn ReadinessCheck>>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let listener = TcpListener::bind(&config.http.bind)
            .with_context(|| format!("binding {}", config.http.bind))?;
        let port = listener
            .local_addr()
            .context("reading the bound address")?
            .port();
        let authorizer = Authorizer::new(
            db.clone(),
            config.http.token_cache_ttl,
            config.http.token_cache_capacity,
        );
        let tokens = authorizer.tokens();
        let authorizer = authorizer.start();
        let infra = Infrastructure::connect(&config, db).await?;
        infra.spawn_upkeep();
        let (relay, connections, background) = start_domain(&config, &infra)?;
        let readiness = infra.readiness(&background.draining, checks);
        let state_workers = config
            .run_workers
            .then(|| (infra.db.clone(), infra.queue.clone()));
        let (http_workers, shutdown_timeout) =
            (config.http.workers, config.shutdown.timeout.as_secs());
        let state = web::Data::new(AppState {
            config,
            authorizer,
            tokens,
            connections,
            relay,
            metrics: infra.metrics.clone(),
            workers: state_workers,
            readiness,
        });
        let server = serve(state.clone(), listener, http_workers, shutdown_timeout)?;
        Ok(Self {
            port,
            db: infra.db,
            server,
            state,
            background,
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
    /// `config.shutdown.timeout`; then what the outbox still holds is pushed and the
    /// in-process job workers stop.
    pub async fn run_until_signalled(self) -> anyhow::Result<()> {
        self.run(shutdown_signal()).await
    }

    async fn run(mut self, stop: impl Future<Output = &'static str>) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let mut server = actix_web::rt::spawn(self.server);
        tokio::select! {
            ended = &mut server => {
                // Stopped through `handle`, or failed.
                ended.context("joining the server")?.context("running the server")?;
            }
            signal = stop => {
                self.background.draining.store(true, Ordering::SeqCst);
                let delay = self.state.config.shutdown.drain_delay;
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
            .close(self.state.config.shutdown.timeout)
            .await
        {
            tracing::warn!("rotations still running after the shutdown timeout");
        }
        // The sweeper ends between sweeps, so the flush below does not race it (on
        // SQLite, which has no SKIP LOCKED, a race would push rows twice) and no sweep
        // is cut off by the runtime going away.
        self.background.stop_relay().await;
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
        self.background.stop_workers().await;
        tracing::info!("stopped");
        Ok(())
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
