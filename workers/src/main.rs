//! `mithril-workers`: runs only the job workers (owner notices, cache invalidation).
//! Any number may run at once, against the same database and Redis as the API.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use workers::credentials::RedisCredentials;
use workers::mail::{Mailer, Templates};
use workers::notify::Notifier;
use workers::queue::Queue;
use workers::run::{Invalidator, RetrySettings, Workers, run};

#[derive(Parser)]
#[command(
    name = "mithril-workers",
    version,
    about = "Runs mithril's job workers"
)]
struct Cli {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/mithril.db?mode=rwc"
    )]
    database_url: String,
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "Mithril <no-reply@localhost>"
    )]
    mail_from: String,
    /// Where notices go as `.eml` files when SMTP_URL is unset.
    #[arg(long, env = "MITHRIL_MAIL_DIR", default_value = "data/mail")]
    mail_dir: PathBuf,
    /// Prefix of the queue names; the API must use the same.
    #[arg(long, env = "MITHRIL_QUEUE_NAMESPACE", default_value = "mithril")]
    queue_namespace: String,
    /// Jobs of each kind this process runs at once.
    #[arg(long, env = "MITHRIL_WORKER_CONCURRENCY", default_value_t = 8)]
    concurrency: usize,
    /// Seconds cached credentials live in Redis; the API must use the same.
    #[arg(long, env = "MITHRIL_CREDENTIALS_CACHE_TTL", default_value_t = 60)]
    credentials_cache_ttl: u64,
    /// Seconds jobs in flight get to finish after SIGTERM or Ctrl-C.
    #[arg(long, env = "MITHRIL_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    shutdown_timeout: u64,
    #[arg(long, env = "MITHRIL_RETRY_MIN_MS", default_value_t = 500)]
    retry_min_ms: u64,
    #[arg(long, env = "MITHRIL_RETRY_MAX_MS", default_value_t = 300_000)]
    retry_max_ms: u64,
    /// How often an idle worker asks the queue for work, in milliseconds.
    #[arg(long, env = "MITHRIL_WORKER_POLL_MS", default_value_t = 250)]
    poll_interval_ms: u64,
    #[arg(long, env = "MITHRIL_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }

    let redis_url = cli.redis_url.filter(|u| !u.is_empty());
    let smtp_url = cli.smtp_url.filter(|u| !u.is_empty());
    let db = workers::db::connect(&cli.database_url, 10).await?;
    let redis = match &redis_url {
        Some(url) => Some(workers::redis_connect::connect(url).await?),
        None => None,
    };
    let queue = Queue::connect(
        &db,
        redis.as_ref().map(|r| r.manager.clone()),
        &cli.queue_namespace,
    )
    .await?;
    let redis = redis.map(|r| RedisCredentials::new(r.manager, cli.credentials_cache_ttl.max(1)));
    let workers = Workers {
        notifier: Arc::new(Notifier {
            db,
            mailer: Mailer::new(smtp_url.as_deref(), &cli.mail_dir)?,
            templates: Templates::load().context("loading the notice templates")?,
            mail_from: cli.mail_from,
        }),
        invalidator: Arc::new(Invalidator { redis, local: None }),
        retry: RetrySettings {
            min: Duration::from_millis(cli.retry_min_ms),
            max: Duration::from_millis(cli.retry_max_ms.max(cli.retry_min_ms)),
            ..RetrySettings::default()
        },
        concurrency: cli.concurrency.max(1),
        poll_interval: Duration::from_millis(cli.poll_interval_ms.max(10)),
    };
    tracing::info!(namespace = cli.queue_namespace, "mithril-workers running");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: jobs in flight get to finish");
        let _ = stop.send(true);
    });
    run(
        queue,
        workers,
        Duration::from_secs(cli.shutdown_timeout),
        stopped,
    )
    .await?;
    tracing::info!("mithril-workers stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
