//! The one error type of the connection domain.
use sea_orm::DbErr;

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// No such connection (or client) for this caller: 404.
    #[error("no such connection for this client")]
    NotFound,
    #[error("the database failed")]
    Store(#[from] DbErr),
    /// The client's refresh budget is spent: 429, a refresh is possible again after
    /// this long.
    #[error("the client's refresh budget is spent")]
    RateLimited { retry_after: std::time::Duration },
    /// Another request took this one's `Idempotency-Key` over (this one ran past the
    /// marker's lease): its rotation rolled back. 409.
    #[error("another request holds this idempotency key")]
    KeyTakenOver,
    /// This instance is shutting down and takes no new rotation.
    #[error("this instance is shutting down")]
    ShuttingDown,
    /// The client's actor stopped before answering; the next call starts a new one.
    #[error("the connection actor stopped")]
    ActorStopped,
    /// Generating a secret or encoding a job failed.
    #[error("internal failure")]
    Internal(#[source] anyhow::Error),
}

impl From<serde_json::Error> for ConnectionError {
    fn from(e: serde_json::Error) -> Self {
        Self::Internal(anyhow::Error::new(e).context("encoding a job"))
    }
}
