//! The outbox rows a change writes in its own transaction: the jobs that carry it on
//! (invalidations, notices) once it has committed. The relay (`crate::outbox`) pushes
//! them to the queue.
use chrono::{DateTime, Utc};
use entity::outbox;
use kernel::credentials::CredentialChange;
use kernel::jobs::{InvalidateCredentials, Job};
use sea_orm::ActiveValue::Set;
use sea_orm::{DatabaseTransaction, EntityTrait as _};
use uuid::Uuid;

use super::ConnectionError;

/// An outbox row for `job`, to insert in the transaction of the change that causes it.
///
/// CAUTION: payloads carry ids and digests only, never a plaintext secret.
pub fn row<J: Job>(
    job: &J,
    now: DateTime<Utc>,
) -> Result<(Uuid, outbox::ActiveModel), serde_json::Error> {
    let id = Uuid::now_v7();
    let payload = serde_json::to_value(job)?;
    Ok((
        id,
        outbox::ActiveModel {
            id: Set(id),
            kind: Set(J::KIND.to_owned()),
            payload: Set(payload),
            created_at: Set(now),
            dispatched_at: Set(None),
            attempts: Set(0),
            dead_at: Set(None),
            settled_at: Set(None),
        },
    ))
}

/// The `invalidate_credentials` outbox row that carries `change` to every cache.
pub fn invalidation(
    event_id: Uuid,
    change: &CredentialChange,
    now: DateTime<Utc>,
) -> Result<(Uuid, outbox::ActiveModel), ConnectionError> {
    let job = InvalidateCredentials {
        event_id,
        change: change.clone(),
        traceparent: kernel::trace::traceparent(),
    };
    Ok(row(&job, now)?)
}

/// Writes `invalidation` in `txn`; returns its row id.
pub async fn write_invalidation(
    txn: &DatabaseTransaction,
    event_id: Uuid,
    change: &CredentialChange,
    now: DateTime<Utc>,
) -> Result<Uuid, ConnectionError> {
    let (id, row) = invalidation(event_id, change, now)?;
    outbox::Entity::insert(row)
        .exec_without_returning(txn)
        .await?;
    Ok(id)
}
