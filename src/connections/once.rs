//! Refreshing once per `Idempotency-Key`: the connection service's side of
//! `idempotency`, holding a key until its rotation commits and letting it go otherwise.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sea_orm::DatabaseConnection;

use super::idempotency::{self, Begun, KeyMaterial, Ticket};
use super::rotation::{Remember, RenderAnswer, Rotate, Rotated};
use super::{ConnectionError, Service};

impl Service {
    /// What a refresh with `key` (and the grace period asked for) is to do: rotate (the
    /// key is this request's now), replay the first request's answer, or neither yet.
    pub async fn begin_once(
        &self,
        key: KeyMaterial,
        grace_period: i64,
    ) -> Result<Begun, ConnectionError> {
        idempotency::begin(
            &self.db,
            key,
            idempotency::fingerprint(grace_period),
            self.idempotency_ttl,
        )
        .await
    }

    /// `rotate`, remembering its answer (`render` gives its `data`) under `ticket`'s key
    /// in the rotation's own transaction. A rotation that does not commit lets the key go:
    /// here when it failed before the actor took it (or this future was dropped before
    /// then: the caller left before its turn), in the actor when it failed there.
    ///
    // CAUTION: once the actor has taken the rotation, it finishes whatever the caller
    // does (the actor's rule); letting the key go from here then would race its
    // `complete` and roll a rotation back by chance.
    pub async fn rotate_once(
        &self,
        mut cmd: Rotate,
        ticket: Ticket,
        render: RenderAnswer,
    ) -> Result<Rotated, ConnectionError> {
        let ticket = Arc::new(ticket);
        let started = Arc::new(AtomicBool::new(false));
        let mut hold = KeyHold {
            db: self.db.clone(),
            ticket: Some(ticket.clone()),
            started: started.clone(),
        };
        cmd.remember = Some(Remember {
            ticket,
            render,
            started,
        });
        let rotated = self.rotate(cmd).await;
        if let (Err(_), Some(ticket)) = (&rotated, &hold.ticket) {
            // Let go before answering, so the caller's retry finds the key free (a
            // second release, after the actor's, finds nothing).
            idempotency::release(&self.db, ticket).await;
        }
        // Ok: done, in the rotation's transaction; nothing to let go.
        hold.ticket = None;
        rotated
    }
}

/// A request's hold on its `Idempotency-Key` until its rotation commits: let go when it
/// does not (dropped on an error, or with the request of a caller who left).
struct KeyHold {
    db: DatabaseConnection,
    ticket: Option<Arc<Ticket>>,
    /// Set by the actor as it takes the rotation: from then on the key is its to settle.
    started: Arc<AtomicBool>,
}

impl Drop for KeyHold {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take()
            && !self.started.load(Ordering::SeqCst)
        {
            let db = self.db.clone();
            // On a task of its own: a drop cannot wait. Should it fail, the marker's lease
            // lets the key go a minute later.
            tokio::spawn(async move { idempotency::release(&db, &ticket).await });
        }
    }
}
