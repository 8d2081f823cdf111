//! Readiness: is every backing service this instance needs answering right now?
//!
//! `GET /health/ready` runs every registered check at once, each within the configured
//! timeout. The database check is always there, Redis's where `REDIS_URL` is set; other
//! services add theirs by passing a `ReadinessCheck` to `Application::build_with_checks`.
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, join_all};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, Statement};

/// One backing service to ask.
pub trait ReadinessCheck: Send + Sync {
    /// Short and stable: it names the check in the readiness answer and the logs.
    fn name(&self) -> &'static str;
    /// Succeeds when the service answers. Need not time itself out: the caller does.
    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// Fails once the instance is draining (SIGTERM came): the balancer stops sending
/// before the listener closes.
pub struct DrainCheck(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl ReadinessCheck for DrainCheck {
    fn name(&self) -> &'static str {
        "draining"
    }

    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        let draining = self.0.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if draining {
                anyhow::bail!("shutting down");
            }
            Ok(())
        })
    }
}

/// `SELECT 1` on the pool the API uses.
pub struct DatabaseCheck(pub DatabaseConnection);

impl ReadinessCheck for DatabaseCheck {
    fn name(&self) -> &'static str {
        "database"
    }

    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let backend = self.0.get_database_backend();
            self.0
                .query_one_raw(Statement::from_string(backend, "SELECT 1"))
                .await?;
            Ok(())
        })
    }
}

/// `PING` on the connection the cache and the eviction channel use.
pub struct RedisCheck(pub redis::aio::ConnectionManager);

impl ReadinessCheck for RedisCheck {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let mut conn = self.0.clone();
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok(())
        })
    }
}

/// The outcome of one check.
#[derive(Clone, Debug)]
pub struct CheckOutcome {
    pub name: &'static str,
    /// `None` when it answered in time; else why not (for the log, never the response).
    pub failure: Option<String>,
}

/// Runs every check concurrently, each bounded by `timeout`.
pub async fn run(checks: &[Arc<dyn ReadinessCheck>], timeout: Duration) -> Vec<CheckOutcome> {
    join_all(checks.iter().map(|check| async move {
        let failure = match tokio::time::timeout(timeout, check.check()).await {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(format!("{err:#}")),
            Err(_) => Some(format!("no answer within {timeout:?}")),
        };
        CheckOutcome {
            name: check.name(),
            failure,
        }
    }))
    .await
}
