//! Settings that `mithril serve` (running the workers in-process) and `mithril-workers`
//! share: one definition, so the two read the same variables with the same defaults and
//! the README's "keep equal" is possible.
use std::path::PathBuf;
use std::time::Duration;

use crate::thresholds::Thresholds;

mod mail;
pub use mail::{DkimSettings, MailSettings};

/// The embedded default: a SQLite file under `data/`.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/mithril.db?mode=rwc";
pub const DEFAULT_MAIL_FROM: &str = "Mithril <no-reply@localhost>";
/// The longest `MITHRIL_SHUTDOWN_TIMEOUT`: an hour.
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3600);

/// What every process of mithril (`mithril` and `mithril-workers`) connects to, and how
/// it logs and stops: read by both from the same variables, with the same defaults.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    #[arg(long, global = true, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Unset: jobs queue in the database and caches stay in-process.
    #[arg(long, global = true, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Unset: notices are written as `.eml` files under MITHRIL_MAIL_DIR.
    #[arg(long, global = true, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    #[command(flatten)]
    pub mail: MailSettings,
    /// On SIGTERM or Ctrl-C, seconds that requests and jobs in flight get to finish (the
    /// API's requests after its drain delay).
    #[arg(
        long,
        global = true,
        env = "MITHRIL_SHUTDOWN_TIMEOUT",
        default_value_t = 30
    )]
    pub shutdown_timeout: u64,
    /// `json` for one JSON object per log line.
    #[arg(
        long,
        global = true,
        env = "MITHRIL_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: String,
}

impl Common {
    /// `REDIS_URL`, unless unset or empty.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis_url.as_deref().filter(|u| !u.is_empty())
    }

    /// `SMTP_URL`, unless unset or empty.
    pub fn smtp_url(&self) -> Option<&str> {
        self.smtp_url.as_deref().filter(|u| !u.is_empty())
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
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

#[derive(clap::Args, Clone, Debug)]
pub struct WorkerSettings {
    /// Where notices go as `.eml` files when SMTP_URL is unset.
    #[arg(
        long,
        global = true,
        env = "MITHRIL_MAIL_DIR",
        default_value = "data/mail"
    )]
    pub mail_dir: PathBuf,
    /// The deployment's namespace in Redis: the prefix of every key and channel (queues,
    /// cached credentials, evictions, budgets); the API and every worker must use the same.
    #[arg(
        long,
        global = true,
        env = "MITHRIL_QUEUE_NAMESPACE",
        default_value = "mithril"
    )]
    pub queue_namespace: String,
    /// Jobs of each kind one process runs at once.
    #[arg(
        long = "worker-concurrency",
        alias = "concurrency",
        global = true,
        env = "MITHRIL_WORKER_CONCURRENCY",
        default_value_t = 8
    )]
    pub concurrency: usize,
    /// Seconds a verified credential stays cached (in-process and in Redis): the
    /// worst-case bound if every invalidation path failed.
    #[arg(
        long,
        global = true,
        env = "MITHRIL_CREDENTIALS_CACHE_TTL",
        default_value_t = 60
    )]
    pub credentials_cache_ttl: u64,
    /// Retries of a failed job before it is dead-lettered.
    #[arg(long, global = true, env = "MITHRIL_RETRIES", default_value_t = 30)]
    pub retries: usize,
    /// First retry delay, in milliseconds; it doubles up to the maximum.
    #[arg(
        long,
        global = true,
        env = "MITHRIL_RETRY_MIN_MS",
        default_value_t = 500
    )]
    pub retry_min_ms: u64,
    #[arg(
        long,
        global = true,
        env = "MITHRIL_RETRY_MAX_MS",
        default_value_t = 300_000
    )]
    pub retry_max_ms: u64,
    /// How often an idle worker asks the queue for work, in milliseconds.
    #[arg(
        long = "worker-poll-ms",
        alias = "poll-interval-ms",
        global = true,
        env = "MITHRIL_WORKER_POLL_MS",
        default_value_t = 100
    )]
    pub poll_interval_ms: u64,
    /// Seconds a worker's claim on a notice lasts; renewed every third of it while the
    /// send goes on, so a notice whose worker died mid-send is sent again after it.
    #[arg(
        long,
        global = true,
        env = "MITHRIL_NOTICE_LEASE",
        default_value_t = 30
    )]
    pub notice_lease: u64,
    /// How often each worker process looks for secrets due a reminder and refreshes the
    /// expiry gauges (`1m`, `30s`).
    #[arg(long, global = true, env = "MITHRIL_REMINDER_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub reminder_interval: Duration,
    /// How long before a secret expires its owner is reminded, one e-mail per threshold
    /// (plus one once it has expired); `off` for only that one.
    #[arg(long, global = true, env = "MITHRIL_REMINDER_THRESHOLDS", default_value = "14d,3d,1d", value_parser = Thresholds::parse)]
    pub reminder_thresholds: Thresholds,
    /// How long finished work is kept before it is pruned (`30d`): finished jobs in the
    /// queue (Redis or the database), settled outbox rows, settled notice records.
    #[arg(long, global = true, env = "MITHRIL_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
}

/// Refuses `value` of the setting `name` outside `min..=max`, with a message naming the
/// setting and its bounds: checked at start, so a value that would overflow the time
/// arithmetic later (a ticker dying silently, every verify panicking) stops the process
/// at once instead.
pub fn check_bounds(
    name: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> anyhow::Result<()> {
    if value < min || value > max {
        anyhow::bail!(
            "{name} is {}; it must be from {} to {}",
            humantime::format_duration(value),
            humantime::format_duration(min),
            humantime::format_duration(max)
        );
    }
    Ok(())
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
/// The furthest a reminder threshold may reach before an expiry: ten years.
pub const MAX_REMINDER_THRESHOLD: Duration = Duration::from_secs(3660 * 86_400);
/// The longest `MITHRIL_RETENTION`: ten years.
pub const MAX_RETENTION: Duration = Duration::from_secs(3660 * 86_400);

/// A URL as logs may show it: without its password (or the whole URL, when it does not
/// parse, reduced to its scheme).
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            // sqlx and redis-rs also take a password as a query parameter.
            if parsed.query().is_some() {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let hidden = matches!(k.as_ref(), "password" | "pass" | "passwd");
                        (
                            k.into_owned(),
                            if hidden {
                                "***".to_owned()
                            } else {
                                v.into_owned()
                            },
                        )
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) => format!("{}:…", url.split(':').next().unwrap_or_default()),
    }
}

/// The same values as the command line's defaults (a test holds them equal).
impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            mail_dir: PathBuf::from("data/mail"),
            queue_namespace: "mithril".to_owned(),
            concurrency: 8,
            credentials_cache_ttl: 60,
            retries: 30,
            retry_min_ms: 500,
            retry_max_ms: 300_000,
            poll_interval_ms: 100,
            notice_lease: 30,
            reminder_interval: Duration::from_secs(60),
            reminder_thresholds: Thresholds::default(),
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

impl WorkerSettings {
    /// Refuses a setting outside its documented bounds (README, "Configuration").
    pub fn validate(&self) -> anyhow::Result<()> {
        let ms = Duration::from_millis;
        check_bounds(
            "MITHRIL_CREDENTIALS_CACHE_TTL",
            Duration::from_secs(self.credentials_cache_ttl),
            SECOND,
            HOUR,
        )?;
        check_bounds(
            "MITHRIL_NOTICE_LEASE",
            Duration::from_secs(self.notice_lease),
            SECOND,
            HOUR,
        )?;
        check_bounds("MITHRIL_RETRY_MIN_MS", ms(self.retry_min_ms), ms(1), HOUR)?;
        check_bounds("MITHRIL_RETRY_MAX_MS", ms(self.retry_max_ms), ms(1), DAY)?;
        check_bounds(
            "MITHRIL_WORKER_POLL_MS",
            ms(self.poll_interval_ms),
            ms(10),
            MINUTE,
        )?;
        check_bounds(
            "MITHRIL_REMINDER_INTERVAL",
            self.reminder_interval,
            ms(10),
            DAY,
        )?;
        check_bounds(
            "MITHRIL_REMINDER_THRESHOLDS",
            self.reminder_thresholds.widest(),
            Duration::ZERO,
            MAX_REMINDER_THRESHOLD,
        )?;
        check_bounds("MITHRIL_RETENTION", self.retention, SECOND, MAX_RETENTION)?;
        Ok(())
    }

    pub fn retry(&self) -> RetrySettings {
        RetrySettings {
            retries: self.retries,
            min: Duration::from_millis(self.retry_min_ms.max(1)),
            max: Duration::from_millis(self.retry_max_ms.max(self.retry_min_ms).max(1)),
        }
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(10))
    }

    pub fn credentials_cache_ttl(&self) -> Duration {
        Duration::from_secs(self.credentials_cache_ttl.max(1))
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency.max(1)
    }

    pub fn notice_lease(&self) -> Duration {
        Duration::from_secs(self.notice_lease.max(1))
    }

    pub fn reminder_interval(&self) -> Duration {
        self.reminder_interval.max(Duration::from_millis(10))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{WorkerSettings, redacted};

    #[test]
    fn the_defaults_are_within_their_bounds() {
        WorkerSettings::default().validate().unwrap();
        let settings = WorkerSettings {
            notice_lease: 3601,
            ..WorkerSettings::default()
        };
        let refused = settings.validate().unwrap_err().to_string();
        assert!(refused.contains("MITHRIL_NOTICE_LEASE"), "{refused}");
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        workers: WorkerSettings,
    }

    #[test]
    fn logged_urls_carry_no_password() {
        assert_eq!(
            redacted("postgres://app:s3cret@db.internal:5432/mithril"),
            "postgres://app:***@db.internal:5432/mithril"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert!(!redacted("smtps://u:p%40ss@mail:465").contains("p%40ss"));
        assert_eq!(redacted("not a url with:secret"), "not a url with:…");
        let query = redacted("postgres://db/m?user=app&password=s3cret&sslmode=require");
        assert!(
            !query.contains("s3cret") && query.contains("sslmode=require"),
            "{query}"
        );
        assert!(!redacted("redis+unix:///run/redis.sock?pass=s3cret").contains("s3cret"));
    }

    #[test]
    fn the_defaults_are_the_command_lines() {
        let parsed = Cli::parse_from(["test"]).workers;
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", WorkerSettings::default())
        );
    }
}
