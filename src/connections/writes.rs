//! The resource's writes beside rotation: create (by upsert), re-point, delete. Each runs
//! in one transaction with its audit event and, where it changes what verify answers,
//! its `invalidate_credentials` outbox row.
use chrono::{DateTime, Utc};
use entity::connection;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait as _, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait as _,
    IntoActiveModel as _, QueryFilter as _, TransactionTrait as _,
};
use uuid::Uuid;

use super::audit::{self, Initiator, NewEvent};
use super::effects::Committed;
use super::{ConnectionError, kinds, outbox_rows, retired, store, validity};
use crate::config::SecretLifetime;
use crate::secrets::Plaintext;

/// Create or re-point the connection of `client_id` to `consumer_id`.
#[derive(Clone)]
pub struct Upsert {
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    pub redirect_uri: String,
    pub actor: Initiator,
}

/// A committed write that changed what verify answers: the change, for every cache, and
/// the outbox row that repeats it.
pub struct Changed {
    pub connection: connection::Model,
    pub committed: Committed,
}

pub enum Upserted {
    /// A new connection and its first secret: the only copy of the plaintext anywhere.
    Created {
        connection: connection::Model,
        secret: Plaintext,
    },
    /// The existing connection with its new `redirect_uri`; its secret is unchanged.
    Updated(Changed),
}

/// Upsert on `(client_id, consumer_id)`. Concurrent upserts of the same pair create one
/// row: the loser of the insert race re-points the winner's row instead.
///
/// The caller has checked that both clients exist. A created connection's secret expires
/// `lifetime` after now (never, when the policy is off).
pub async fn upsert(
    db: &DatabaseConnection,
    cmd: Upsert,
    lifetime: SecretLifetime,
) -> Result<Upserted, ConnectionError> {
    // A delete can remove the row the insert ran into before it is locked; the second
    // attempt then creates the connection. Two such races in a row are not plausible.
    for _ in 0..2 {
        if let Some(upserted) = try_upsert(db, cmd.clone(), lifetime).await? {
            return Ok(upserted);
        }
    }
    Err(ConnectionError::Store(DbErr::RecordNotFound(
        "the conflicting connection vanished twice".into(),
    )))
}

/// One attempt; `None` when the conflicting row was deleted before it could be locked
/// (the transaction is rolled back).
async fn try_upsert(
    db: &DatabaseConnection,
    cmd: Upsert,
    lifetime: SecretLifetime,
) -> Result<Option<Upserted>, ConnectionError> {
    let now = Utc::now();
    let secret = Plaintext::generate().map_err(ConnectionError::Internal)?;
    let created = connection::Model {
        id: Uuid::new_v4(),
        client_id: cmd.client_id,
        consumer_id: cmd.consumer_id,
        redirect_uri: cmd.redirect_uri.clone(),
        secret_hash: secret.digest().into_string(),
        previous_secret_hash: None,
        previous_secret_expires_at: None,
        secret_version: 0,
        state_version: 0,
        secret_expires_at: lifetime.expiry(now),
        inserted_at: now,
        updated_at: now,
    };

    let txn = db.begin().await?;
    // CAUTION: the insert is the transaction's first statement, so on SQLite it takes the
    // write lock before anything is read (see `store::lock`); on PostgreSQL the unique
    // index decides the race and `DO NOTHING` hands the loser to the re-point below.
    let inserted = connection::Entity::insert(created.clone().into_active_model())
        .on_conflict(
            OnConflict::columns([connection::Column::ClientId, connection::Column::ConsumerId])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;

    if inserted == 1 {
        audit::record(
            &txn,
            NewEvent {
                kind: kinds::CREATED,
                connection_id: created.id,
                client_id: created.client_id,
                actor: &cmd.actor,
                secret_version: Some(created.secret_version),
                grace_period: None,
                secret_expires_at: created.secret_expires_at,
                occurred_at: now,
            },
        )
        .await?;
        txn.commit().await?;
        return Ok(Some(Upserted::Created {
            connection: created,
            secret,
        }));
    }
    drop(secret);

    let Some(existing) = store::lock_pair(&txn, cmd.client_id, cmd.consumer_id).await? else {
        return Ok(None);
    };
    let changed = repoint_locked(&txn, existing, cmd.redirect_uri, &cmd.actor, now).await?;
    txn.commit().await?;
    Ok(Some(Upserted::Updated(changed)))
}

/// Re-points one connection; `NotFound` when it does not exist for this client.
pub async fn repoint(
    db: &DatabaseConnection,
    client_id: Uuid,
    connection_id: Uuid,
    redirect_uri: String,
    actor: &Initiator,
) -> Result<Changed, ConnectionError> {
    let txn = db.begin().await?;
    let current = store::lock(&txn, client_id, connection_id)
        .await?
        .ok_or(ConnectionError::NotFound)?;
    let changed = repoint_locked(&txn, current, redirect_uri, actor, Utc::now()).await?;
    txn.commit().await?;
    Ok(changed)
}

/// Deletes one connection, with its audit event and an `invalidate_credentials` outbox
/// row that retires every digest it had; `NotFound` when it does not exist for this
/// client.
pub async fn delete(
    db: &DatabaseConnection,
    client_id: Uuid,
    connection_id: Uuid,
    actor: &Initiator,
) -> Result<Changed, ConnectionError> {
    let txn = db.begin().await?;
    // Under the row lock, so a rotation committing meanwhile cannot leave a digest that
    // this delete does not retire.
    let current = store::lock(&txn, client_id, connection_id)
        .await?
        .ok_or(ConnectionError::NotFound)?;
    connection::Entity::delete_by_id(current.id)
        .exec(&txn)
        .await?;
    let now = Utc::now();
    let event_id = audit::record(
        &txn,
        NewEvent {
            kind: kinds::DELETED,
            connection_id: current.id,
            client_id: current.client_id,
            actor,
            secret_version: Some(current.secret_version),
            grace_period: None,
            secret_expires_at: None,
            occurred_at: now,
        },
    )
    .await?;
    let change = validity::change(&current, None, now);
    let outbox_id = outbox_rows::write_invalidation(&txn, event_id, &change, now).await?;
    retired::record(&txn, &change, retired::Cause::Delete, now).await?;
    txn.commit().await?;
    Ok(Changed {
        connection: current,
        committed: Committed {
            change,
            outbox_ids: vec![outbox_id],
        },
    })
}

/// Sets `redirect_uri` on a locked row, bumps its state version (verify's answer for
/// its secrets changes), and records the `updated` event and the change's job.
async fn repoint_locked(
    txn: &DatabaseTransaction,
    current: connection::Model,
    redirect_uri: String,
    actor: &Initiator,
    now: DateTime<Utc>,
) -> Result<Changed, ConnectionError> {
    let updated = connection::Model {
        redirect_uri,
        state_version: current.state_version + 1,
        updated_at: now,
        ..current.clone()
    };
    connection::Entity::update_many()
        .col_expr(
            connection::Column::RedirectUri,
            Expr::value(updated.redirect_uri.clone()),
        )
        .col_expr(
            connection::Column::StateVersion,
            Expr::value(updated.state_version),
        )
        .col_expr(connection::Column::UpdatedAt, Expr::value(now))
        .filter(connection::Column::Id.eq(updated.id))
        .exec(txn)
        .await?;
    let event_id = audit::record(
        txn,
        NewEvent {
            kind: kinds::UPDATED,
            connection_id: updated.id,
            client_id: updated.client_id,
            actor,
            secret_version: Some(updated.secret_version),
            grace_period: None,
            secret_expires_at: None,
            occurred_at: now,
        },
    )
    .await?;
    let change = validity::change(&current, Some(&updated), now);
    let outbox_id = outbox_rows::write_invalidation(txn, event_id, &change, now).await?;
    retired::record(txn, &change, retired::Cause::Rotation, now).await?;
    Ok(Changed {
        connection: updated,
        committed: Committed {
            change,
            outbox_ids: vec![outbox_id],
        },
    })
}
