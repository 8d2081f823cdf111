//! `mithril-workers`: runs only the job workers (owner notices, cache invalidation,
//! reminders before secrets expire, and their ticker).
//! Any number may run at once, against the same database and Redis as the API.
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kernel::queue::Queue;
use kernel::settings::{Common, MAX_SHUTDOWN_TIMEOUT, WorkerSettings, check_bounds, redacted};
use workers::remind::GlobalMetrics;
use workers::run::{Workers, run};

#[derive(Parser)]
#[command(
    name = "mithril-workers",
    version,
    about = "Runs mithril's job workers"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    workers: WorkerSettings,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let common = &cli.common;
    kernel::logs::init(&common.log_format);
    cli.workers.validate()?;
    check_bounds(
        "MITHRIL_SHUTDOWN_TIMEOUT",
        common.shutdown_timeout(),
        Duration::ZERO,
        MAX_SHUTDOWN_TIMEOUT,
    )?;

    let (redis_url, smtp_url) = (common.redis_url(), common.smtp_url());
    let db = kernel::db::connect(&common.database_url, 10).await?;
    let redis = match redis_url {
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
        smtp_url,
        &common.mail_from,
        None,
        Arc::new(GlobalMetrics),
    )?;
    tracing::info!(
        database = redacted(&common.database_url),
        redis = redis_url.map(redacted),
        smtp = smtp_url.map(redacted),
        namespace = cli.workers.queue_namespace,
        "mithril-workers running"
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: jobs in flight get to finish");
        let _ = stop.send(true);
    });
    run(queue, workers, common.shutdown_timeout(), stopped).await?;
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
