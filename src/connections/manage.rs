//! The connection resource's persistence beside rotation: list, show, upsert, re-point and
//! delete. Every write runs in one transaction with its audit event (and, for a delete,
//! its `invalidate_credentials` outbox row).
use chrono::Utc;
use entity::{client, connection, outbox};
use sea_orm::sea_query::{Expr, ExprTrait as _, Func, OnConflict};
use sea_orm::{
    ColumnTrait as _, ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction,
    DbErr, EntityTrait as _, IntoActiveModel as _, PaginatorTrait as _, QueryFilter as _,
    QueryOrder as _, QuerySelect as _, TransactionTrait as _,
};
use uuid::Uuid;
use workers::credentials::Invalidation;
use workers::jobs::{self, InvalidateCredentials};

use super::audit::{self, Actor, NewEvent};
use super::rotation::{lock_connection, outbox_row};
use super::{Page, PageRequest, kinds, view};
use crate::secrets::Plaintext;

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("storing the change failed")]
    Store(#[from] DbErr),
    #[error("generating the secret failed")]
    Secret(#[source] anyhow::Error),
    #[error("encoding a job failed")]
    Job(#[source] anyhow::Error),
}

/// Filters of the connection list; both optional.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub consumer_id: Option<Uuid>,
    /// Matches connections whose `redirect_uri` contains this text (case-sensitive).
    pub redirect_uri: Option<String>,
}

pub async fn client_exists(conn: &impl ConnectionTrait, client_id: Uuid) -> Result<bool, DbErr> {
    Ok(client::Entity::find_by_id(client_id).count(conn).await? > 0)
}

/// One page of a client's connections, oldest first (stable under inserts at the end).
pub async fn list(
    db: &DatabaseConnection,
    client_id: Uuid,
    filter: &ListFilter,
    page: PageRequest,
) -> Result<Page<connection::Model>, DbErr> {
    let mut query = connection::Entity::find().filter(connection::Column::ClientId.eq(client_id));
    if let Some(consumer_id) = filter.consumer_id {
        query = query.filter(connection::Column::ConsumerId.eq(consumer_id));
    }
    if let Some(needle) = filter.redirect_uri.as_deref().filter(|n| !n.is_empty()) {
        // A plain substring test, not LIKE: a caller's `%` or `_` means itself, and
        // both backends compare case-sensitively.
        let position = match db.get_database_backend() {
            DatabaseBackend::Postgres => Func::cust("strpos"),
            _ => Func::cust("instr"),
        };
        query = query.filter(
            Expr::expr(
                position
                    .arg(Expr::col(connection::Column::RedirectUri))
                    .arg(needle.to_owned()),
            )
            .gt(0),
        );
    }
    let total = query.clone().count(db).await?;
    let Some(offset) = page.offset_within(total) else {
        return Ok(Page::empty(total));
    };
    let entries = query
        .order_by_asc(connection::Column::InsertedAt)
        .order_by_asc(connection::Column::Id)
        .offset(offset)
        .limit(page.page_size)
        .all(db)
        .await?;
    Ok(Page { entries, total })
}

/// The connection `connection_id` of `client_id`; `None` when it does not exist or
/// belongs to another client.
pub async fn find(
    conn: &impl ConnectionTrait,
    client_id: Uuid,
    connection_id: Uuid,
) -> Result<Option<connection::Model>, DbErr> {
    connection::Entity::find_by_id(connection_id)
        .filter(connection::Column::ClientId.eq(client_id))
        .one(conn)
        .await
}

/// Create or re-point the connection of `client_id` to `consumer_id`.
pub struct Upsert {
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    pub redirect_uri: String,
    pub actor: Actor,
}

pub enum Upserted {
    /// A new connection and its first secret: the only copy of the plaintext anywhere.
    Created {
        connection: connection::Model,
        secret: Plaintext,
    },
    /// The existing connection with its new `redirect_uri`; its secret is unchanged.
    Updated { connection: connection::Model },
}

/// Upsert on `(client_id, consumer_id)`. Concurrent upserts of the same pair create one
/// row: the loser of the insert race updates the winner's row instead.
///
/// The caller has checked that both clients exist.
pub async fn upsert(db: &DatabaseConnection, cmd: Upsert) -> Result<Upserted, ManageError> {
    let now = Utc::now();
    let secret = Plaintext::generate().map_err(ManageError::Secret)?;
    let created = connection::Model {
        id: Uuid::new_v4(),
        client_id: cmd.client_id,
        consumer_id: cmd.consumer_id,
        redirect_uri: cmd.redirect_uri.clone(),
        secret_hash: secret.digest().into_string(),
        previous_secret_hash: None,
        previous_secret_expires_at: None,
        secret_version: 0,
        inserted_at: now,
        updated_at: now,
    };

    let txn = db.begin().await?;
    // CAUTION: the insert is the transaction's first statement, so on SQLite it takes the
    // write lock before anything is read (see `lock_connection`); on PostgreSQL the
    // unique index decides the race and `DO NOTHING` hands the loser to the update below.
    // Every column of the model is written (an insert takes `Unchanged` values too).
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
                occurred_at: now,
            },
        )
        .await?;
        txn.commit().await?;
        return Ok(Upserted::Created {
            connection: created,
            secret,
        });
    }
    drop(secret);

    let existing = lock_pair(&txn, cmd.client_id, cmd.consumer_id)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the conflicting connection vanished".into()))?;
    let updated = repoint(&txn, existing, cmd.redirect_uri, &cmd.actor).await?;
    txn.commit().await?;
    Ok(Upserted::Updated {
        connection: updated,
    })
}

/// Re-points one connection; `None` when it does not exist for this client.
pub async fn update_redirect_uri(
    db: &DatabaseConnection,
    client_id: Uuid,
    connection_id: Uuid,
    redirect_uri: String,
    actor: &Actor,
) -> Result<Option<connection::Model>, DbErr> {
    let txn = db.begin().await?;
    let Some(current) = lock_connection(&txn, client_id, connection_id).await? else {
        return Ok(None);
    };
    let updated = repoint(&txn, current, redirect_uri, actor).await?;
    txn.commit().await?;
    Ok(Some(updated))
}

/// A committed delete.
pub struct Deleted {
    pub connection: connection::Model,
    pub event_id: Uuid,
    /// What every cache must forget, applied right after commit and again by the job.
    pub invalidation: Invalidation,
    /// The `invalidate_credentials` row, for the relay to push after commit.
    pub outbox_id: Uuid,
}

/// Deletes one connection, with its audit event and an `invalidate_credentials` outbox
/// row that retires both of its digests; `None` when it does not exist for this client.
pub async fn delete(
    db: &DatabaseConnection,
    client_id: Uuid,
    connection_id: Uuid,
    actor: &Actor,
) -> Result<Option<Deleted>, ManageError> {
    let txn = db.begin().await?;
    // Under the row lock, so a rotation committing meanwhile cannot leave a digest that
    // this delete does not retire.
    let Some(current) = lock_connection(&txn, client_id, connection_id).await? else {
        return Ok(None);
    };
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
            occurred_at: now,
        },
    )
    .await?;

    // CAUTION: every digest that authenticated this connection retires now, including a
    // previous secret still inside its grace period. The job is rotation's own
    // `InvalidateCredentials`, so the same worker handles it.
    let mut retire = vec![current.secret_hash.clone()];
    retire.extend(current.previous_secret_hash.clone());
    let invalidation = Invalidation {
        connection: view(&current),
        retire,
        still_valid: Vec::new(),
    };
    let job = InvalidateCredentials {
        event_id,
        invalidation: invalidation.clone(),
    };
    let outbox_id = Uuid::now_v7();
    let row = outbox_row(outbox_id, jobs::INVALIDATE_CREDENTIALS, &job, now)
        .map_err(|e| ManageError::Job(e.into()))?;
    outbox::Entity::insert(row)
        .exec_without_returning(&txn)
        .await?;
    txn.commit().await?;
    Ok(Some(Deleted {
        connection: current,
        event_id,
        invalidation,
        outbox_id,
    }))
}

/// Sets `redirect_uri` on a locked row and records the `updated` event.
async fn repoint(
    txn: &DatabaseTransaction,
    current: connection::Model,
    redirect_uri: String,
    actor: &Actor,
) -> Result<connection::Model, DbErr> {
    let now = Utc::now();
    connection::Entity::update_many()
        .col_expr(
            connection::Column::RedirectUri,
            Expr::value(redirect_uri.clone()),
        )
        .col_expr(connection::Column::UpdatedAt, Expr::value(now))
        .filter(connection::Column::Id.eq(current.id))
        .exec(txn)
        .await?;
    let updated = connection::Model {
        redirect_uri,
        updated_at: now,
        ..current
    };
    audit::record(
        txn,
        NewEvent {
            kind: kinds::UPDATED,
            connection_id: updated.id,
            client_id: updated.client_id,
            actor,
            secret_version: Some(updated.secret_version),
            grace_period: None,
            occurred_at: now,
        },
    )
    .await?;
    Ok(updated)
}

/// The row of `(client_id, consumer_id)`, locked like `lock_connection` locks by id.
async fn lock_pair(
    txn: &DatabaseTransaction,
    client_id: Uuid,
    consumer_id: Uuid,
) -> Result<Option<connection::Model>, DbErr> {
    let find = connection::Entity::find()
        .filter(connection::Column::ClientId.eq(client_id))
        .filter(connection::Column::ConsumerId.eq(consumer_id));
    match txn.get_database_backend() {
        // The failed insert already holds SQLite's write lock.
        DatabaseBackend::Sqlite => find.one(txn).await,
        _ => find.lock_exclusive().one(txn).await,
    }
}
