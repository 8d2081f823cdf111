//! Why a mail was not sent: the one error of the mail path, which the claim protocol
//! and every job handler share.

/// Why a mail was not sent, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Retrying cannot help (no such owner, an address the server refuses): dead-letter.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Database, SMTP or file system trouble, or another worker holds the claim: retry
    /// with backoff.
    #[error("transient: {0}")]
    Transient(String),
}

impl From<sea_orm::DbErr> for NotifyError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Transient(format!("database: {e}"))
    }
}
