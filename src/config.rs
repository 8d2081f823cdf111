//! Typed configuration, read once at start-up from the command line and environment and
//! then passed explicitly: nothing reads the environment after this.
use std::time::Duration;

pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/mithril.db?mode=rwc";
pub const DEFAULT_MAIL_FROM: &str = "Mithril <no-reply@localhost>";
pub const DEFAULT_BIND: &str = "127.0.0.1:4000";

#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: String,
    /// Unset: jobs queue in the database and caches stay in-process.
    pub redis_url: Option<String>,
    /// Unset: notices are written as `.eml` files under `mail_dir`.
    pub smtp_url: Option<String>,
    pub mail_from: String,
    pub bind: String,
    /// Longest grace period a caller may ask for (API.md default: 7 days).
    pub max_grace_period: Duration,
    /// A per-client actor with no work for this long stops, so memory stays bounded.
    pub actor_idle_timeout: Duration,
    /// How long an authorized token stays in the Authorizer's cache (at most 60 s).
    pub token_cache_ttl: Duration,
    pub token_cache_capacity: u64,
    /// How long a verified credential stays cached, here and in Redis: the worst-case
    /// bound if every invalidation path failed.
    pub credentials_cache_ttl: Duration,
    pub credentials_cache_capacity: u64,
    /// Where notices go as `.eml` files when `smtp_url` is unset.
    pub mail_dir: std::path::PathBuf,
    /// Prefix of the job queue names (lets deployments, or tests, share one Redis).
    pub queue_namespace: String,
    /// Run the job workers in this process (`serve` without `--no-workers`).
    pub run_workers: bool,
    pub worker_retry: workers::run::RetrySettings,
    pub worker_concurrency: usize,
    pub worker_poll_interval: Duration,
    /// How long in-flight requests and jobs get to finish after SIGTERM or Ctrl-C.
    pub shutdown_timeout: Duration,
    /// HTTP worker threads; 0 means one per core.
    pub http_workers: usize,
    pub db_max_connections: u32,
    /// How long `/health/ready` waits for each backing service.
    pub readiness_timeout: Duration,
}

impl Config {
    /// The embedded default: no PostgreSQL, Redis or mail server needed.
    pub fn embedded(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            redis_url: None,
            smtp_url: None,
            mail_from: DEFAULT_MAIL_FROM.to_owned(),
            bind: DEFAULT_BIND.to_owned(),
            max_grace_period: Duration::from_secs(7 * 24 * 3600),
            actor_idle_timeout: Duration::from_secs(60),
            token_cache_ttl: Duration::from_secs(30),
            token_cache_capacity: 100_000,
            credentials_cache_ttl: Duration::from_secs(60),
            credentials_cache_capacity: 100_000,
            mail_dir: std::path::PathBuf::from("data/mail"),
            queue_namespace: "mithril".to_owned(),
            run_workers: true,
            worker_retry: workers::run::RetrySettings::default(),
            worker_concurrency: 8,
            worker_poll_interval: Duration::from_millis(250),
            shutdown_timeout: Duration::from_secs(30),
            http_workers: 0,
            db_max_connections: 20,
            readiness_timeout: Duration::from_secs(1),
        }
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }
}
