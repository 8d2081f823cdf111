//! The `mithril` command line: serve, migrate, seed, secrets apply-policy.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kernel::settings::{Common, WorkerSettings};
use mithril::config::{self, Config, SecretLifetime};
use mithril::connections::policy;
use mithril::{Application, db, seed};

#[derive(Parser)]
#[command(
    name = "mithril",
    version,
    about = "Rotates OAuth connection secrets for eHealth"
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

/// Settings shared by every command; each also reads its environment variable.
#[derive(Args)]
struct Settings {
    #[command(flatten)]
    common: Common,
    /// Each client's budget of refreshes: `N/unit` (`s`, `min`, `h`), optionally
    /// `,burst=M`; `off` for none.
    #[arg(long, global = true, env = "MITHRIL_REFRESH_LIMIT", default_value = "60/min", value_parser = RefreshLimit::parse)]
    refresh_limit: RefreshLimit,
    /// Proxies (addresses or CIDR networks, comma-separated) whose `X-Forwarded-For` or
    /// `Forwarded` names the caller's address in the audit trail.
    #[arg(long, global = true, env = "MITHRIL_TRUSTED_PROXIES", default_value = "", value_parser = TrustedProxies::parse)]
    trusted_proxies: TrustedProxies,
    /// The forwarding header the trusted proxies write: `x-forwarded-for` or `forwarded`.
    #[arg(long, global = true, env = "MITHRIL_FORWARDED_HEADER", default_value = "x-forwarded-for", value_parser = config::ForwardedHeader::parse)]
    forwarded_header: config::ForwardedHeader,
    /// Longest grace period a caller may ask for, in seconds.
    #[arg(long, global = true, env = "MITHRIL_MAX_GRACE_PERIOD", default_value_t = 7 * 24 * 3600)]
    max_grace_period: u64,
    /// Seconds before an idle per-client actor stops.
    #[arg(
        long,
        global = true,
        env = "MITHRIL_ACTOR_IDLE_TIMEOUT",
        default_value_t = 60
    )]
    actor_idle_timeout: u64,
    /// On SIGTERM: how long `/health/ready` answers 503 while requests are still served,
    /// before the listener closes (`5s`, `500ms`, `0s`).
    #[arg(long, global = true, env = "MITHRIL_DRAIN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    drain_delay: Duration,
    /// A notice neither sent nor dead this long after its job was pushed is pushed again
    /// (a queue that lost it: Redis restarted without persistence).
    #[arg(long, global = true, env = "MITHRIL_RECONCILE_AFTER", default_value = "10m", value_parser = humantime::parse_duration)]
    reconcile_after: Duration,
    /// How long the answer of a refresh with an `Idempotency-Key` is remembered, so a
    /// retry gets it again (`1h`; at most `24h`).
    #[arg(long, global = true, env = "MITHRIL_IDEMPOTENCY_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    idempotency_ttl: Duration,
    /// How long a retired secret's digest is remembered, so a system still presenting it
    /// is told apart from a wrong guess (and its owner told).
    #[arg(long, global = true, env = "MITHRIL_SIGHTING_WINDOW", default_value = "30d", value_parser = humantime::parse_duration)]
    sighting_window: Duration,
    /// How long a newly issued secret verifies (`180d`, `90days`), or `off`: secrets
    /// never expire. Set the same everywhere `mithril` runs.
    #[arg(long, global = true, env = "MITHRIL_SECRET_LIFETIME", default_value = "off", value_parser = SecretLifetime::parse)]
    secret_lifetime: SecretLifetime,
    /// Database connections of the API's pool: at least as many as rotations and reads
    /// that run at once (each client's rotations run one at a time, clients' side by
    /// side).
    #[arg(
        long,
        global = true,
        env = "MITHRIL_DB_MAX_CONNECTIONS",
        default_value_t = 20
    )]
    db_max_connections: u32,
    #[command(flatten)]
    workers: WorkerSettings,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API (and, unless --no-workers, the job workers).
    Serve {
        #[arg(long, env = "MITHRIL_BIND", default_value = config::DEFAULT_BIND)]
        bind: String,
        #[arg(long)]
        no_workers: bool,
        /// Load the demo data set first and print its token and curl.
        #[arg(long)]
        demo: bool,
    },
    /// Apply migrations and exit.
    Migrate,
    /// Load a seed file, or the demo data set.
    Seed {
        #[arg(required_unless_present = "demo", conflicts_with = "demo")]
        file: Option<PathBuf>,
        #[arg(long)]
        demo: bool,
        /// Where the printed curl points.
        #[arg(long, env = "MITHRIL_BIND", default_value = config::DEFAULT_BIND)]
        bind: String,
    },
    /// The lifetime policy of connection secrets.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// The owner's mail.
    Notices {
        #[command(subcommand)]
        command: NoticesCommand,
    },
}

#[derive(Subcommand)]
enum NoticesCommand {
    /// Write each kind of mail with sample data, as `.eml` (what the mail server would
    /// receive: signed when DKIM is configured), `.html` and `.txt`: nothing is sent and
    /// no database is needed.
    Preview {
        /// One kind only: rotation, reminder or stale (default: all three).
        #[arg(long, value_parser = workers::mail::preview::Kind::parse)]
        kind: Option<workers::mail::preview::Kind>,
        /// One language only: uk or en (default: both).
        #[arg(long, value_parser = ["uk", "en"])]
        locale: Option<String>,
        /// Where the files go.
        #[arg(long, default_value = "data/mail-preview")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Give every secret issued before the lifetime policy (MITHRIL_SECRET_LIFETIME) an
    /// expiry: its last rotation + the lifetime, never sooner than --min-remaining from
    /// now. Prints how many expire per week. Idempotent.
    ApplyPolicy {
        /// No secret is given an expiry sooner than this from now.
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        min_remaining: Duration,
    },
}

/// `MITHRIL_REFRESH_LIMIT` as clap holds it: `off` is a value, not an absent option.
#[derive(Clone)]
struct RefreshLimit(Option<config::RateLimit>);

impl RefreshLimit {
    fn parse(text: &str) -> Result<Self, String> {
        config::RateLimit::parse(text).map(Self)
    }
}

/// `MITHRIL_TRUSTED_PROXIES` as clap holds it: one value, a comma-separated list.
#[derive(Clone)]
struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    fn parse(text: &str) -> Result<Self, String> {
        config::parse_networks(text).map(Self)
    }
}

impl Settings {
    fn config(&self, bind: Option<&str>) -> Config {
        let common = &self.common;
        let mut config = Config::embedded(common.database_url.clone());
        config.redis_url = common.redis_url().map(str::to_owned);
        config.mail.smtp_url = common.smtp_url().map(str::to_owned);
        config.mail.sender = common.mail.clone();
        config.rotation.max_grace_period = Duration::from_secs(self.max_grace_period);
        config.rotation.actor_idle_timeout = Duration::from_secs(self.actor_idle_timeout.max(1));
        config.shutdown.timeout = common.shutdown_timeout();
        config.shutdown.drain_delay = self.drain_delay;
        config.rotation.refresh_limit = self.refresh_limit.0;
        config.http.trusted_proxies = self.trusted_proxies.0.clone();
        config.http.forwarded_header = self.forwarded_header;
        config.rotation.reconcile_after = self.reconcile_after;
        config.rotation.idempotency_ttl = self.idempotency_ttl;
        config.verify.sighting_window = self.sighting_window;
        config.rotation.secret_lifetime = self.secret_lifetime;
        config.workers = self.workers.clone();
        config.database.max_connections = self.db_max_connections.max(1);
        if let Some(bind) = bind {
            config.http.bind = bind.to_owned();
        }
        config
    }
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _traces = kernel::logs::init(&cli.settings.common.log_format, "mithril")?;
    match cli.command {
        Command::Serve {
            bind,
            demo,
            no_workers,
        } => {
            let mut config = cli.settings.config(Some(&bind));
            config.run_workers = !no_workers;
            config.validate()?;
            let database = db::connect(&config).await?;
            db::migrate(&database).await?;
            if demo {
                print_demo(
                    &database,
                    &config.http.bind,
                    config.rotation.secret_lifetime,
                )
                .await?;
            }
            let app = Application::build_with_db(config, database).await?;
            app.state().metrics.install_global();
            let config = &app.state().config;
            tracing::info!(
                port = app.port(),
                database = kernel::settings::redacted(&config.database.url),
                redis = config.redis_url.as_deref().map(kernel::settings::redacted),
                smtp = config
                    .mail
                    .smtp_url
                    .as_deref()
                    .map(kernel::settings::redacted),
                "mithril listening"
            );
            // Returns once requests have drained, the outbox is flushed and the in-process
            // workers have stopped: then the process exits 0.
            app.run_until_signalled().await?;
        }
        Command::Migrate => {
            let config = cli.settings.config(None);
            let database = db::connect(&config).await?;
            db::migrate(&database).await?;
            println!("migrations applied");
        }
        Command::Seed { file, demo, bind } => {
            let config = cli.settings.config(None);
            let database = db::connect(&config).await?;
            db::migrate(&database).await?;
            if demo {
                print_demo(&database, &bind, config.rotation.secret_lifetime).await?;
            } else if let Some(file) = file {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let seed: seed::SeedFile = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", file.display()))?;
                let seeded =
                    seed::load_with_lifetime(&database, seed, config.rotation.secret_lifetime)
                        .await?;
                for generated in seeded.generated {
                    // Shown once: only its digest is stored.
                    println!(
                        "connection {} secret: {}",
                        generated.connection_id,
                        generated.secret.expose()
                    );
                }
                for id in seeded.kept {
                    println!(
                        "connection {id} exists: kept as it is (secret, version, redirect_uri); \
                         change it through the API"
                    );
                }
                println!("seeded {}", file.display());
            }
        }
        Command::Secrets {
            command: SecretsCommand::ApplyPolicy { min_remaining },
        } => {
            let config = cli.settings.config(None);
            let Some(lifetime) = config.rotation.secret_lifetime.duration() else {
                anyhow::bail!(
                    "MITHRIL_SECRET_LIFETIME is off: set the lifetime (e.g. 180d) here and on \
                     every `mithril serve` first, then apply it to the secrets issued before"
                );
            };
            let database = db::connect(&config).await?;
            db::migrate(&database).await?;
            let now = chrono::Utc::now();
            let report = policy::apply(&database, lifetime, min_remaining, now)
                .await
                .context("applying the lifetime policy")?;
            print_policy_report(&report, config.rotation.secret_lifetime, min_remaining, now);
        }
        Command::Notices {
            command: NoticesCommand::Preview { kind, locale, out },
        } => {
            let locale = locale.map(|l| workers::mail::Locale::parse(&l));
            let mail = &cli.settings.common.mail;
            for path in workers::mail::preview::write(&out, kind, locale, mail)? {
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}

/// What `secrets apply-policy` did, and when secrets expire from now on.
fn print_policy_report(
    report: &policy::PolicyReport,
    lifetime: SecretLifetime,
    min_remaining: Duration,
    now: chrono::DateTime<chrono::Utc>,
) {
    println!(
        "lifetime {lifetime}; no new expiry sooner than {} (now + {})",
        chrono::Duration::from_std(min_remaining)
            .ok()
            .and_then(|min| now.checked_add_signed(min))
            .map_or_else(
                || "beyond the calendar".to_owned(),
                |floor| floor.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        SecretLifetime::of(min_remaining)
    );
    println!(
        "secrets given an expiry: {} ({} of them at the floor)",
        report.given, report.floored
    );
    println!("secrets without an expiry: {}", report.without_expiry);
    println!("secrets already expired: {}", report.expired);
    println!("secrets expiring per ISO week (UTC):");
    for (week, count) in &report.per_week {
        let monday = week.monday().map(|d| d.to_string()).unwrap_or_default();
        println!("  {week} (from {monday}): {count}");
    }
}

async fn print_demo(
    database: &sea_orm::DatabaseConnection,
    bind: &str,
    lifetime: SecretLifetime,
) -> anyhow::Result<()> {
    let demo = seed::load_demo(database, lifetime).await?;
    println!(
        "Demo data loaded. Bearer token (valid 30 days): {}",
        demo.token.expose()
    );
    println!(
        "Rotate the demo connection's secret:\n\n{}\n",
        demo.curl(bind)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::Cli;

    #[test]
    fn the_command_line_is_well_formed_and_its_defaults_parse() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["mithril", "serve"]).unwrap();
        let config = cli.settings.config(None);
        assert_eq!(
            config.rotation.refresh_limit,
            Some(mithril::config::RateLimit::DEFAULT)
        );
        assert!(config.http.trusted_proxies.is_empty());
        let cli = Cli::try_parse_from([
            "mithril",
            "serve",
            "--refresh-limit",
            "off",
            "--trusted-proxies",
            "10.0.0.0/8,127.0.0.1",
        ])
        .unwrap();
        let config = cli.settings.config(None);
        assert_eq!(config.rotation.refresh_limit, None);
        assert_eq!(config.http.trusted_proxies.len(), 2);
    }

    /// Tests and the embedded mode build `Config::embedded`; operators get the command
    /// line's defaults. They are one set.
    #[test]
    fn the_embedded_defaults_are_the_command_lines() {
        let cli = Cli::try_parse_from(["mithril", "serve"]).unwrap();
        let parsed = cli.settings.config(None);
        let embedded = mithril::config::Config::embedded(kernel::settings::DEFAULT_DATABASE_URL);
        assert_eq!(format!("{parsed:?}"), format!("{embedded:?}"));
    }
}
