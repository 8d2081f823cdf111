//! One rotation: a new secret, the old one kept for its grace period, the audit event
//! and the outbox rows, all in one transaction.
use actix::Message;
use chrono::{DateTime, Duration, Utc};
use entity::{connection, outbox};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, ConnectionTrait as _, DatabaseBackend, DatabaseConnection,
    DatabaseTransaction, DbErr, EntityTrait as _, QueryFilter as _, QuerySelect as _,
    TransactionTrait as _,
};
use uuid::Uuid;

use super::audit::{self, Actor, NewEvent};
use super::{kinds, view};
use crate::secrets::Plaintext;
use workers::credentials::{Invalidation, StillValid};
use workers::jobs::{self, InvalidateCredentials, NotifyOwner};

/// Rotate the secret of one connection of one client.
#[derive(Clone, Debug)]
pub struct Rotate {
    pub client_id: Uuid,
    pub connection_id: Uuid,
    /// Seconds the previous secret keeps working; already validated against the maximum.
    pub grace_period: i64,
    pub actor_user_id: Uuid,
    pub actor_client_id: Uuid,
    pub request_id: String,
    pub remote_address: Option<String>,
}

impl Message for Rotate {
    type Result = Result<Rotated, RotateError>;
}

/// The committed outcome. `secret` is the only copy of the new plaintext anywhere.
pub struct Rotated {
    pub connection: connection::Model,
    pub secret: Plaintext,
    pub event_id: Uuid,
    /// What every cache must forget, applied right after commit and again by the job.
    pub invalidation: Invalidation,
    /// The outbox rows written with the rotation, for the relay to push after commit.
    pub outbox_ids: Vec<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("no such connection for this client")]
    NotFound,
    #[error("storing the rotation failed")]
    Store(#[from] DbErr),
    #[error("generating the secret or its jobs failed")]
    Internal(#[source] anyhow::Error),
    #[error("the connection actor is not running")]
    Stopped,
}

/// Runs one rotation in one transaction. Safe under any concurrency, on one instance or
/// many: the row lock orders concurrent rotations of the same connection.
pub async fn rotate(db: &DatabaseConnection, cmd: &Rotate) -> Result<Rotated, RotateError> {
    let txn = db.begin().await?;
    let current = lock_connection(&txn, cmd.client_id, cmd.connection_id)
        .await?
        .ok_or(RotateError::NotFound)?;

    let now = Utc::now();
    let secret = Plaintext::generate().map_err(RotateError::Internal)?;
    let digest = secret.digest();
    let version = current.secret_version + 1;
    let grace_ends = (cmd.grace_period > 0).then(|| now + Duration::seconds(cmd.grace_period));

    // CAUTION: every digest this rotation changes must leave every cache. Without a
    // grace period the old secret retires now; with one it is demoted to expire at the
    // end of the grace period. A previous secret still inside an earlier grace period is
    // displaced: only one previous secret is ever kept.
    let mut retire: Vec<String> = current.previous_secret_hash.iter().cloned().collect();
    let mut still_valid = Vec::new();
    let (previous_hash, previous_expires) = match grace_ends {
        Some(valid_until) => {
            still_valid.push(StillValid {
                digest: current.secret_hash.clone(),
                valid_until: Some(valid_until),
            });
            (Some(current.secret_hash.clone()), Some(valid_until))
        }
        None => {
            retire.push(current.secret_hash.clone());
            (None, None)
        }
    };

    let updated = connection::Model {
        secret_hash: digest.into_string(),
        previous_secret_hash: previous_hash,
        previous_secret_expires_at: previous_expires,
        secret_version: version,
        updated_at: now,
        ..current
    };
    connection::Entity::update_many()
        .col_expr(
            connection::Column::SecretHash,
            Expr::value(updated.secret_hash.clone()),
        )
        .col_expr(
            connection::Column::PreviousSecretHash,
            Expr::value(updated.previous_secret_hash.clone()),
        )
        .col_expr(
            connection::Column::PreviousSecretExpiresAt,
            Expr::value(updated.previous_secret_expires_at),
        )
        .col_expr(connection::Column::SecretVersion, Expr::value(version))
        .col_expr(connection::Column::UpdatedAt, Expr::value(now))
        .filter(connection::Column::Id.eq(updated.id))
        .exec(&txn)
        .await?;

    let actor = Actor {
        user_id: cmd.actor_user_id,
        client_id: cmd.actor_client_id,
        request_id: cmd.request_id.clone(),
        remote_address: cmd.remote_address.clone(),
    };
    let event_id = audit::record(
        &txn,
        NewEvent {
            kind: kinds::SECRET_REFRESHED,
            connection_id: updated.id,
            client_id: updated.client_id,
            actor: &actor,
            secret_version: Some(version),
            grace_period: Some(cmd.grace_period),
            occurred_at: now,
        },
    )
    .await?;

    // CAUTION: outbox payloads carry ids and digests only, never the plaintext secret.
    let invalidation = Invalidation {
        connection: view(&updated),
        retire,
        still_valid,
    };
    let notify = NotifyOwner {
        event_id,
        connection_id: updated.id,
        client_id: updated.client_id,
        consumer_id: updated.consumer_id,
        actor_user_id: cmd.actor_user_id,
        request_id: cmd.request_id.clone(),
        secret_version: version,
        grace_period: cmd.grace_period,
        occurred_at: now,
    };
    let invalidate = InvalidateCredentials {
        event_id,
        invalidation: invalidation.clone(),
    };
    let outbox_ids = vec![Uuid::now_v7(), Uuid::now_v7()];
    let notify = outbox_row(outbox_ids[0], jobs::NOTIFY_OWNER, &notify, now)?;
    let invalidate = outbox_row(
        outbox_ids[1],
        jobs::INVALIDATE_CREDENTIALS,
        &invalidate,
        now,
    )?;
    outbox::Entity::insert_many([notify, invalidate])
        .exec_without_returning(&txn)
        .await?;

    txn.commit().await?;
    Ok(Rotated {
        connection: updated,
        secret,
        event_id,
        invalidation,
        outbox_ids,
    })
}

/// Takes the row lock that orders concurrent rotations of one connection, and reads the
/// row under it.
pub(super) async fn lock_connection(
    txn: &DatabaseTransaction,
    client_id: Uuid,
    connection_id: Uuid,
) -> Result<Option<connection::Model>, DbErr> {
    let find = connection::Entity::find_by_id(connection_id)
        .filter(connection::Column::ClientId.eq(client_id));
    match txn.get_database_backend() {
        // SQLite has no row locks: a first write takes the database's write lock before
        // anything is read, so a deferred transaction never reads a row it cannot then
        // update (that would fail with SQLITE_BUSY instead of waiting).
        DatabaseBackend::Sqlite => {
            connection::Entity::update_many()
                .col_expr(
                    connection::Column::SecretVersion,
                    Expr::col(connection::Column::SecretVersion),
                )
                .filter(connection::Column::Id.eq(connection_id))
                .exec(txn)
                .await?;
            find.one(txn).await
        }
        _ => find.lock_exclusive().one(txn).await,
    }
}

pub(super) fn outbox_row(
    id: Uuid,
    kind: &str,
    job: &impl serde::Serialize,
    now: DateTime<Utc>,
) -> Result<outbox::ActiveModel, RotateError> {
    let payload = serde_json::to_value(job).map_err(|e| RotateError::Internal(e.into()))?;
    Ok(outbox::ActiveModel {
        id: Set(id),
        kind: Set(kind.to_owned()),
        payload: Set(payload),
        created_at: Set(now),
        dispatched_at: Set(None),
        attempts: Set(0),
    })
}
