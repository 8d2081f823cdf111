//! Typed configuration, read once at start-up from the command line and environment and
//! then passed explicitly: nothing reads the environment after this.
use std::time::Duration;

use anyhow::bail;
use ipnet::IpNet;
use kernel::settings::{MailSettings, WorkerSettings, check_bounds};

pub use kernel::settings::{DEFAULT_DATABASE_URL, DEFAULT_MAIL_FROM};
pub const DEFAULT_BIND: &str = "127.0.0.1:4000";

/// How long a digest that no token or connection has (or a token that was refused) is
/// answered without asking the database again.
pub const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(5);
/// The longest lifetime a policy may give a secret: a hundred years, far past any
/// policy, and still clear of date arithmetic's limits.
pub const MAX_SECRET_LIFETIME: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

mod values;

pub use values::*;

/// The whole configuration, nested by concern.
#[derive(Clone, Debug)]
pub struct Config {
    pub database: DatabaseConfig,
    /// Unset: jobs queue in the database and caches stay in-process.
    pub redis_url: Option<String>,
    pub http: HttpConfig,
    pub rotation: RotationConfig,
    pub verify: VerifyConfig,
    pub mail: MailConfig,
    pub shutdown: ShutdownConfig,
    /// What the job workers read, in this process and in `mithril-workers` alike (the
    /// credentials cache's TTL and the queue's namespace among them).
    pub workers: WorkerSettings,
    /// Run the job workers in this process (`serve` without `--no-workers`).
    pub run_workers: bool,
}

#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    pub url: String,
    /// Connections of the API's pool.
    pub max_connections: u32,
}

#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub bind: String,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Proxies whose forwarding header names the caller's address in the audit trail.
    pub trusted_proxies: Vec<IpNet>,
    /// The header those proxies write.
    pub forwarded_header: ForwardedHeader,
    /// How long an authorized token stays in the Authorizer's cache (at most 60 s).
    pub token_cache_ttl: Duration,
    pub token_cache_capacity: u64,
    /// How long `/health/ready` waits for each backing service.
    pub readiness_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct RotationConfig {
    /// Each client's budget of refreshes; `None` is unlimited.
    pub refresh_limit: Option<RateLimit>,
    /// Longest grace period a caller may ask for (API.md default: 7 days).
    pub max_grace_period: Duration,
    /// A per-client actor with no work for this long stops, so memory stays bounded.
    pub actor_idle_timeout: Duration,
    /// `MITHRIL_SECRET_LIFETIME`: every secret issued (rotation, creation, seed) expires
    /// this long after issue; off by default.
    pub secret_lifetime: SecretLifetime,
    /// A notice neither sent nor dead this long after its job was pushed is pushed again.
    pub reconcile_after: Duration,
    /// `MITHRIL_IDEMPOTENCY_TTL`: how long the answer of a refresh with an
    /// `Idempotency-Key` is remembered (at most a day).
    pub idempotency_ttl: Duration,
}

#[derive(Clone, Debug)]
pub struct VerifyConfig {
    pub credentials_cache_capacity: u64,
    /// How long retired digests (and the sightings of them) are remembered.
    pub sighting_window: Duration,
    /// How often the sightings counted in memory are written.
    pub sighting_flush: Duration,
}

#[derive(Clone, Debug)]
pub struct MailConfig {
    /// Unset: notices are written as `.eml` files under `workers.mail_dir`.
    pub smtp_url: Option<String>,
    /// The sender, reply address, DKIM key and owner's portal of every notice.
    pub sender: MailSettings,
}

#[derive(Clone, Debug)]
pub struct ShutdownConfig {
    /// On SIGTERM: how long `/health/ready` answers 503 while requests are still served,
    /// so the balancer stops sending before the listener closes.
    pub drain_delay: Duration,
    /// How long in-flight requests and jobs get to finish after the drain delay.
    pub timeout: Duration,
}

impl Config {
    /// The embedded default: no PostgreSQL, Redis or mail server needed. The same
    /// defaults as the command line's (a test in `main.rs` holds them together).
    pub fn embedded(database_url: impl Into<String>) -> Self {
        Self {
            database: DatabaseConfig {
                url: database_url.into(),
                max_connections: 20,
            },
            redis_url: None,
            http: HttpConfig {
                bind: DEFAULT_BIND.to_owned(),
                workers: 0,
                trusted_proxies: Vec::new(),
                forwarded_header: ForwardedHeader::XForwardedFor,
                token_cache_ttl: Duration::from_secs(30),
                token_cache_capacity: 100_000,
                readiness_timeout: Duration::from_secs(1),
            },
            rotation: RotationConfig {
                refresh_limit: Some(RateLimit::DEFAULT),
                max_grace_period: Duration::from_secs(7 * 24 * 3600),
                actor_idle_timeout: Duration::from_secs(60),
                secret_lifetime: SecretLifetime::OFF,
                reconcile_after: Duration::from_secs(600),
                idempotency_ttl: Duration::from_secs(3600),
            },
            verify: VerifyConfig {
                credentials_cache_capacity: 100_000,
                sighting_window: Duration::from_secs(30 * 24 * 3600),
                sighting_flush: Duration::from_secs(2),
            },
            mail: MailConfig {
                smtp_url: None,
                sender: MailSettings::default(),
            },
            shutdown: ShutdownConfig {
                drain_delay: Duration::from_secs(5),
                timeout: Duration::from_secs(30),
            },
            workers: WorkerSettings::default(),
            run_workers: true,
        }
    }

    /// Refuses settings no deployment should run with, with a message that says which
    /// and why; checked once at start-up.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.rotation.max_grace_period > MAX_GRACE_PERIOD_BOUND {
            bail!(
                "MITHRIL_MAX_GRACE_PERIOD is {} s; at most {} s (one year) is allowed: a \
                 previous secret valid for longer is a second secret, not a grace period",
                self.rotation.max_grace_period.as_secs(),
                MAX_GRACE_PERIOD_BOUND.as_secs()
            );
        }
        let (second, minute, day) = (
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(86_400),
        );
        check_bounds(
            "MITHRIL_ACTOR_IDLE_TIMEOUT",
            self.rotation.actor_idle_timeout,
            second,
            day,
        )?;
        check_bounds(
            "MITHRIL_SHUTDOWN_TIMEOUT",
            self.shutdown.timeout,
            Duration::ZERO,
            kernel::settings::MAX_SHUTDOWN_TIMEOUT,
        )?;
        check_bounds(
            "MITHRIL_DRAIN_DELAY",
            self.shutdown.drain_delay,
            Duration::ZERO,
            10 * minute,
        )?;
        check_bounds(
            "MITHRIL_RECONCILE_AFTER",
            self.rotation.reconcile_after,
            second,
            7 * day,
        )?;
        check_bounds(
            "MITHRIL_IDEMPOTENCY_TTL",
            self.rotation.idempotency_ttl,
            second,
            day,
        )?;
        check_bounds(
            "MITHRIL_SIGHTING_WINDOW",
            self.verify.sighting_window,
            second,
            MAX_SIGHTING_WINDOW,
        )?;
        self.workers.validate()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    #[test]
    fn limits_parse_and_refuse_nonsense() {
        let limit = RateLimit::parse("60/min").unwrap().unwrap();
        assert_eq!(limit, RateLimit::DEFAULT);
        assert_eq!(limit.interval(), Duration::from_secs(1));
        let limit = RateLimit::parse("10/s,burst=20").unwrap().unwrap();
        assert_eq!((limit.count.get(), limit.burst.get()), (10, 20));
        assert_eq!(RateLimit::parse("off").unwrap(), None);
        for bad in ["", "60", "0/min", "60/fortnight", "60/min,burst=0", "x/s"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn networks_parse() {
        let nets = parse_networks("10.1.2.3/8, 192.168.1.7 ,::1/128,").unwrap();
        assert_eq!(nets.len(), 3);
        assert_eq!(nets[0].to_string(), "10.0.0.0/8");
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert!(parse_networks("").unwrap().is_empty());
    }

    #[test]
    fn a_grace_period_above_a_year_is_refused_at_start() {
        let mut config = Config::embedded("sqlite::memory:");
        assert!(config.validate().is_ok());
        config.rotation.max_grace_period = MAX_GRACE_PERIOD_BOUND;
        assert!(config.validate().is_ok());
        config.rotation.max_grace_period = MAX_GRACE_PERIOD_BOUND + Duration::from_secs(1);
        let refused = config.validate().unwrap_err().to_string();
        assert!(refused.contains("MITHRIL_MAX_GRACE_PERIOD"), "{refused}");
    }

    #[test]
    fn a_lifetime_is_off_or_a_positive_duration() {
        assert_eq!(SecretLifetime::parse("off"), Ok(SecretLifetime::OFF));
        assert_eq!(SecretLifetime::parse(" OFF "), Ok(SecretLifetime::OFF));
        assert_eq!(
            SecretLifetime::parse("180d"),
            Ok(SecretLifetime::of(Duration::from_secs(180 * 86_400)))
        );
        assert_eq!(
            SecretLifetime::parse("3s").unwrap().duration(),
            Some(Duration::from_secs(3))
        );
        for refused in ["", "0s", "soon", "200years", "-1d"] {
            assert!(SecretLifetime::parse(refused).is_err(), "{refused:?}");
        }
        assert_eq!(SecretLifetime::OFF.to_string(), "off");
        assert_eq!(SecretLifetime::parse("180d").unwrap().to_string(), "180d");
        assert_eq!(SecretLifetime::parse("36h").unwrap().to_string(), "36h");
        assert_eq!(
            SecretLifetime::parse("1500ms").unwrap().to_string(),
            "1500ms"
        );
    }

    #[test]
    fn an_expiry_is_issue_plus_lifetime_in_whole_microseconds() {
        let issued = DateTime::parse_from_rfc3339("2026-11-29T10:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(SecretLifetime::OFF.expiry(issued), None);
        let expiry = SecretLifetime::parse("1d").unwrap().expiry(issued).unwrap();
        assert_eq!(expiry.to_rfc3339(), "2026-11-30T10:00:00.123456+00:00");
    }
}
