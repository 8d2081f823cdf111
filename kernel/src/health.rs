//! Whether a process's job workers can work, and how much waits for them: the same
//! checks and gauges in `mithril serve` (its in-process workers) and `mithril-workers`.
use std::time::Duration;

use sea_orm::{ConnectionTrait as _, DatabaseConnection, Statement};

use crate::metrics::Registry;
use crate::queue::Queue;

/// The database and the queue answer, each within `within`; else what did not.
pub async fn workers_ready(
    db: &DatabaseConnection,
    queue: &Queue,
    within: Duration,
) -> Result<(), String> {
    let database = async {
        let backend = db.get_database_backend();
        db.query_one_raw(Statement::from_string(backend, "SELECT 1"))
            .await
            .map(drop)
            .map_err(anyhow::Error::from)
    };
    let (database, queue) = tokio::join!(
        tokio::time::timeout(within, database),
        tokio::time::timeout(within, queue.ping()),
    );
    let mut failed = Vec::new();
    for (name, outcome) in [("database", database), ("queue", queue)] {
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("{name}: {e:#}")),
            Err(_) => failed.push(format!("{name}: no answer within {within:?}")),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// Records `mithril_worker_ready` and, when ready, `mithril_queue_depth` of every job
/// kind: just before a scrape renders them. Returns the readiness.
pub async fn sample(
    db: &DatabaseConnection,
    queue: &Queue,
    metrics: &Registry,
    within: Duration,
) -> Result<(), String> {
    let ready = workers_ready(db, queue, within).await;
    metrics.worker_ready(ready.is_ok());
    if ready.is_ok() {
        for kind in Queue::ALL_KINDS {
            match tokio::time::timeout(within, queue.depth(kind)).await {
                Ok(Ok(waiting)) => metrics.queue_depth(kind, waiting),
                Ok(Err(e)) => tracing::warn!(
                    kind,
                    error = format!("{e:#}"),
                    "reading the queue's depth failed"
                ),
                Err(_) => tracing::warn!(kind, "reading the queue's depth timed out"),
            }
        }
    }
    ready
}
