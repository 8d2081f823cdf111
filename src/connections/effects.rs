//! What follows a commit, the same for every kind of change: every cache learns the
//! change at once, then the change's outbox rows go to the queue.
use std::sync::Arc;

use kernel::credentials::CredentialChange;
use uuid::Uuid;

use crate::cache::CredentialsCache;
use crate::outbox::OutboxRelay;

/// What a committed write hands on: the change every cache must learn, and the outbox
/// rows written with it, for the relay to push.
pub struct Committed {
    pub change: CredentialChange,
    pub outbox_ids: Vec<Uuid>,
}

pub struct AfterCommit {
    pub cache: Arc<CredentialsCache>,
    pub relay: OutboxRelay,
}

impl AfterCommit {
    /// Before the caller is answered: the change holds on this instance at once and,
    /// through Redis and its channel, on every other one (best effort within the
    /// request's Redis budget; the `invalidate_credentials` job repeats it until it
    /// succeeds). The outbox rows are pushed in the background; the sweeper pushes what
    /// that misses.
    pub async fn publish(&self, committed: &Committed) {
        self.cache.apply(&committed.change).await;
        self.relay
            .dispatch_in_background(committed.outbox_ids.clone());
    }
}
