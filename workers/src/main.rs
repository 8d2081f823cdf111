//! `mithril-workers`: runs only the job workers (owner notices, cache invalidation,
//! reminders before secrets expire, and their ticker).
//! Any number may run at once, against the same database and Redis as the API.
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kernel::queue::Queue;
use kernel::settings::WorkerSettings;
use workers::remind::GlobalMetrics;
use workers::run::{Workers, run};

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
        default_value = "sqlite://data/mithril.db?mode=rwc",
        hide_env_values = true
    )]
    database_url: String,
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "Mithril <no-reply@localhost>"
    )]
    mail_from: String,
    #[command(flatten)]
    workers: WorkerSettings,
    /// Seconds jobs in flight get to finish after SIGTERM or Ctrl-C.
    #[arg(long, env = "MITHRIL_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    shutdown_timeout: u64,
    #[arg(long, env = "MITHRIL_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kernel::logs::init(&cli.log_format);
    cli.workers.validate()?;
    kernel::settings::check_bounds(
        "MITHRIL_SHUTDOWN_TIMEOUT",
        Duration::from_secs(cli.shutdown_timeout),
        Duration::ZERO,
        Duration::from_secs(3600),
    )?;

    let redis_url = cli.redis_url.filter(|u| !u.is_empty());
    let smtp_url = cli.smtp_url.filter(|u| !u.is_empty());
    let db = kernel::db::connect(&cli.database_url, 10).await?;
    let redis = match &redis_url {
        Some(url) => Some(kernel::redis_connect::connect(url).await?),
        None => None,
    };
    let queue = Queue::connect(
        &db,
        redis.as_ref().map(|r| r.manager.clone()),
        &cli.workers.queue_namespace,
    )
    .await?;
    let workers = Workers::build(
        &cli.workers,
        &db,
        redis.as_ref(),
        smtp_url.as_deref(),
        &cli.mail_from,
        None,
        Arc::new(GlobalMetrics),
    )?;
    tracing::info!(
        database = kernel::settings::redacted(&cli.database_url),
        redis = redis_url.as_deref().map(kernel::settings::redacted),
        smtp = smtp_url.as_deref().map(kernel::settings::redacted),
        namespace = cli.workers.queue_namespace,
        "mithril-workers running"
    );
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
