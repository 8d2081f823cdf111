//! `mithril-workers`: runs only the job workers (owner notices, cache invalidation,
//! reminders before secrets expire, and their ticker).
//! Any number may run at once, against the same database and Redis as the API.
use std::time::Duration;

use clap::Parser;
use kernel::metrics::Registry;
use kernel::queue::Queue;
use kernel::settings::{Common, MAX_SHUTDOWN_TIMEOUT, WorkerSettings, check_bounds, redacted};
use workers::probe::Probe;
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
    /// Where the probes (`/health/live`, `/health/ready`) and `/metrics` listen.
    #[arg(long, env = "MITHRIL_WORKERS_BIND", default_value = "127.0.0.1:4001")]
    bind: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let common = &cli.common;
    let _traces = kernel::logs::init(&common.log_format, "mithril-workers")?;
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
    let metrics = Registry::new();
    // The apalis and outbox code that only reaches the `metrics` macros lands here too.
    metrics.install_global();
    // Built before the port is bound: mail settings that cannot work (a DKIM key that
    // cannot be read, say) stop the process before it opens anything.
    let workers = Workers::build(
        &cli.workers,
        &db,
        redis.as_ref(),
        smtp_url,
        &common.mail,
        None,
        metrics.clone(),
    )?;
    // Bound before any work starts: a port in use is a start-up error, not a silent gap
    // in the scrape.
    let listener = std::net::TcpListener::bind(cli.bind)
        .map_err(|e| anyhow::anyhow!("binding MITHRIL_WORKERS_BIND {}: {e}", cli.bind))?;
    let bound = listener.local_addr()?;
    tokio::spawn(metrics.keep_up());
    let probes = Probe {
        db: db.clone(),
        queue: queue.clone(),
        metrics: metrics.clone(),
    }
    .serve(listener)?;
    let probes_handle = probes.handle();
    tokio::spawn(probes);
    tracing::info!(
        database = redacted(&common.database_url),
        redis = redis_url.map(redacted),
        smtp = smtp_url.map(redacted),
        namespace = cli.workers.queue_namespace,
        probes = %bound,
        "mithril-workers running"
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: jobs in flight get to finish");
        let _ = stop.send(true);
    });
    run(queue, workers, common.shutdown_timeout(), stopped).await?;
    probes_handle.stop(true).await;
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
