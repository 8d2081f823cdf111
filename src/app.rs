//! Wiring: the application built from a config, on any port, for `serve` and for tests.
use std::net::TcpListener;
use std::sync::Arc;

use actix::{Actor as _, Addr};
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpServer, web};
use anyhow::Context as _;
use sea_orm::DatabaseConnection;
use workers::credentials::RedisCredentials;
use workers::mail::{Mailer, Templates};
use workers::notify::Notifier;
use workers::queue::Queue;
use workers::run::{Invalidator, Workers};

use crate::auth::{AuthError, Authorize, Authorizer, Principal};
use crate::cache::{CredentialsCache, follow_evictions};
use crate::config::Config;
use crate::connections::ConnectionRegistry;
use crate::http::{self, ApiError};
use crate::outbox::OutboxRelay;
use crate::readiness::{DatabaseCheck, ReadinessCheck, RedisCheck};
use crate::secrets::SecretDigest;
use crate::telemetry::Metrics;

/// What every handler shares.
pub struct AppState {
    pub config: Config,
    pub db: DatabaseConnection,
    pub authorizer: Addr<Authorizer>,
    pub registry: Addr<ConnectionRegistry>,
    pub credentials: Arc<CredentialsCache>,
    pub relay: OutboxRelay,
    /// This application's own recorder: `/metrics` renders it.
    pub metrics: Metrics,
    /// What `/health/ready` asks: the database always, then whatever was passed to
    /// `Application::build_with_checks` (Redis, where configured).
    pub readiness: Vec<Arc<dyn ReadinessCheck>>,
}

impl AppState {
    /// Token (401), scope (403), context (403), in API.md's order.
    pub async fn authorize(
        &self,
        req: &HttpRequest,
        scope: &'static str,
        path_client_id: Option<&str>,
    ) -> Result<Principal, ApiError> {
        let token = bearer_digest(req);
        let principal = self
            .authorizer
            .send(Authorize {
                token,
                scope,
                path_client_id: path_client_id.map(str::to_owned),
            })
            .await
            .map_err(|_| AuthError::Stopped)??;
        Ok(principal)
    }
}

/// The job workers `serve` runs by default: the same as `mithril-workers`, plus eviction
/// from this process's own cache.
fn in_process_workers(
    config: &Config,
    db: &DatabaseConnection,
    redis: Option<&workers::redis_connect::Redis>,
    credentials: &Arc<CredentialsCache>,
) -> anyhow::Result<Workers> {
    let local = credentials.clone();
    Ok(Workers {
        notifier: Arc::new(Notifier {
            db: db.clone(),
            mailer: Mailer::new(config.smtp_url.as_deref(), &config.mail_dir)?,
            templates: Templates::load().context("loading the notice templates")?,
            mail_from: config.mail_from.clone(),
        }),
        invalidator: Arc::new(Invalidator {
            redis: redis.map(|r| {
                RedisCredentials::new(
                    r.manager.clone(),
                    config.credentials_cache_ttl.as_secs().max(1),
                )
            }),
            local: Some(Arc::new(move |digests: &[String]| {
                local.evict_local(digests)
            })),
        }),
        retry: config.worker_retry.clone(),
        concurrency: config.worker_concurrency,
        poll_interval: config.worker_poll_interval,
    })
}

/// The digest of `Authorization: Bearer <token>`; the plaintext goes no further.
fn bearer_digest(req: &HttpRequest) -> Option<SecretDigest> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| SecretDigest::of(token))
}

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    stop_workers: tokio::sync::watch::Sender<bool>,
    job_workers: Option<tokio::task::JoinHandle<()>>,
    stop_sweeper: tokio::sync::watch::Sender<bool>,
    sweeper: tokio::task::JoinHandle<()>,
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
        let registry = ConnectionRegistry::new(db.clone(), config.actor_idle_timeout).start();
        // Background tasks go on Tokio's scheduler rather than actix's thread-local set,
        // so they are dropped inside the runtime when it shuts down (a pooled database
        // connection cannot be dropped outside one).
        let redis = match &config.redis_url {
            Some(url) => Some(workers::redis_connect::connect(url).await?),
            None => None,
        };
        let credentials = Arc::new(CredentialsCache::new(
            config.credentials_cache_ttl,
            config.credentials_cache_capacity,
            redis.as_ref().map(|r| {
                RedisCredentials::new(
                    r.manager.clone(),
                    config.credentials_cache_ttl.as_secs().max(1),
                )
            }),
        ));
        if let Some(redis) = &redis {
            tokio::spawn(follow_evictions(redis.client.clone(), credentials.clone()));
        }
        let queue = Queue::connect(
            &db,
            redis.as_ref().map(|r| r.manager.clone()),
            &config.queue_namespace,
        )
        .await?;
        let relay = OutboxRelay::new(db.clone(), queue.clone());
        let (stop_sweeper, sweeper_stopped) = tokio::sync::watch::channel(false);
        let sweeper = tokio::spawn(relay.clone().run_sweeper(sweeper_stopped));
        let (stop_workers, workers_stopped) = tokio::sync::watch::channel(false);
        let job_workers = if config.run_workers {
            let workers = in_process_workers(&config, &db, redis.as_ref(), &credentials)?;
            let grace = config.shutdown_timeout;
            Some(tokio::spawn(async move {
                if let Err(e) = workers::run::run(queue, workers, grace, workers_stopped).await {
                    tracing::error!(error = format!("{e:#}"), "in-process job workers stopped");
                }
            }))
        } else {
            None
        };
        let workers = config.http_workers;
        let shutdown_timeout = config.shutdown_timeout.as_secs();
        let mut readiness: Vec<Arc<dyn ReadinessCheck>> = vec![Arc::new(DatabaseCheck(db.clone()))];
        if let Some(redis) = &redis {
            readiness.push(Arc::new(RedisCheck(redis.manager.clone())));
        }
        readiness.extend(checks);
        let state = web::Data::new(AppState {
            config,
            db,
            authorizer,
            registry,
            credentials,
            relay,
            metrics: Metrics::new(),
            readiness,
        });
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
        .shutdown_timeout(shutdown_timeout)
        .listen(listener)
        .context("listening")?;
        if workers > 0 {
            server = server.workers(workers);
        }
        Ok(Self {
            port,
            server: server.run(),
            state,
            stop_workers,
            job_workers,
            stop_sweeper,
            sweeper,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Stops this server from outside: `handle().stop(true)` is a graceful stop, after
    /// which `run_until_stopped` drains like a signal would.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped through `handle()`, then drains (see `run_until_signalled`).
    /// Catches no signal: for tests and embedders.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run(std::future::pending()).await
    }

    /// `mithril serve`: serves until SIGTERM or Ctrl-C, then stops gracefully. The
    /// listener closes at once; requests in flight (and the actor work they wait on)
    /// finish within `config.shutdown_timeout`; then what the outbox still holds is
    /// pushed and the in-process job workers stop.
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
                tracing::info!(signal, "stopping: no new connections, finishing requests in flight");
                handle.stop(true).await;
                server
                    .await
                    .context("joining the server")?
                    .context("running the server")?;
            }
        }
        // The sweeper ends between sweeps, so the flush below does not race it (on
        // SQLite, which has no SKIP LOCKED, a race would push rows twice) and no sweep
        // is cut off by the runtime going away.
        let _ = self.stop_sweeper.send(true);
        let _ = self.sweeper.await;
        // CAUTION: only now has every request been answered and every rotation it
        // started committed or rolled back, so the flush sees all their outbox rows.
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
