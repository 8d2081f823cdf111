//! One rotation: a new secret, the old one kept for its grace period, the audit event,
//! the outbox rows and the retired digests, all written atomically.
use std::sync::Arc;

use actix::Message;
use chrono::Utc;
use entity::{connection, connection_event, outbox, retired_digest};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait as _, DatabaseBackend, DatabaseConnection, EntityTrait as _, QueryFilter as _,
    TransactionTrait as _,
};
use uuid::Uuid;

use super::audit::Initiator;
use super::effects::Committed;
use super::idempotency::{self, Answer, Ticket};
use super::plan::Plan;
use super::{ConnectionError, compare_and_set, retired, store};
use crate::config::SecretLifetime;
use crate::secrets::Plaintext;

/// Rotate the secret of one connection of one client.
#[derive(Clone, Debug)]
pub struct Rotate {
    pub client_id: Uuid,
    pub connection_id: Uuid,
    /// Seconds the previous secret keeps working; already validated against the maximum.
    pub grace_period: i64,
    pub actor: Initiator,
    /// A refresh with an `Idempotency-Key`: its answer is remembered in the rotation's
    /// own transaction.
    pub remember: Option<Remember>,
    /// The row as the caller read it a moment ago, if it did: on PostgreSQL the rotation
    /// is worked out from it instead of reading the row again, and if another write has
    /// changed the row since, the rotation notices and takes the row lock.
    pub seen: Option<connection::Model>,
    /// The span of the request that asked (the actor runs it on another task): the
    /// rotation's span is its child. `Span::none()` when traces are not exported.
    pub span: tracing::Span,
}

/// The answer's `data` for a connection and its new secret (the HTTP layer's view).
pub type RenderAnswer =
    Arc<dyn Fn(&connection::Model, &str) -> serde_json::Result<serde_json::Value> + Send + Sync>;

/// How a rotation remembers its answer: the key it holds, and how the answer's `data`
/// reads (the HTTP layer's view of the connection and its new secret).
#[derive(Clone)]
pub struct Remember {
    pub ticket: Arc<Ticket>,
    pub render: RenderAnswer,
    /// Set by the actor as it takes the rotation (see `Service::rotate_once`).
    pub started: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Remember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remember")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl Message for Rotate {
    type Result = Result<Rotated, ConnectionError>;
}

/// The committed outcome. `secret` is the only copy of the new plaintext anywhere.
pub struct Rotated {
    pub connection: connection::Model,
    pub secret: Plaintext,
    /// What every cache must learn (applied right after commit and again by the job),
    /// and the outbox rows written with the rotation.
    pub committed: Committed,
}

/// Runs one rotation, atomically, worked out from `seen` (the row as last read or
/// written) when given and still current. Safe under any concurrency, on one instance or many:
/// on PostgreSQL a rotation without an `Idempotency-Key` is one compare-and-set
/// statement (see `compare_and_set`), and any other write of the row that came first
/// sends it down the locking path, where the row lock orders concurrent rotations of the
/// same connection. The new secret expires `lifetime` after now (never, when the policy
/// is off).
pub async fn rotate(
    db: &DatabaseConnection,
    cmd: &Rotate,
    seen: Option<&connection::Model>,
    lifetime: SecretLifetime,
) -> Result<Rotated, ConnectionError> {
    // CAUTION: keyed rotations stay on the locking path: their answer is sealed into the
    // same transaction (`idempotency::complete`), which the one statement does not write.
    if db.get_database_backend() == DatabaseBackend::Postgres && cmd.remember.is_none() {
        let current = match seen {
            Some(row) if row.id == cmd.connection_id && row.client_id == cmd.client_id => {
                row.clone()
            }
            // A connection id is never reused, so a row that is not there now never
            // will be.
            _ => store::find(db, cmd.client_id, cmd.connection_id)
                .await?
                .ok_or(ConnectionError::NotFound)?,
        };
        let plan = Plan::new(&current, cmd.grace_period, &cmd.actor, lifetime, Utc::now())?;
        if compare_and_set::apply(db, current.state_version, &plan).await? {
            return Ok(finished(plan));
        }
        // Another write of the row came between the read and the statement (another
        // instance's rotation, a re-point, a delete): nothing was written; take the lock.
    }
    rotate_locked(db, cmd, lifetime).await
}

/// One rotation in one transaction, under the row lock.
async fn rotate_locked(
    db: &DatabaseConnection,
    cmd: &Rotate,
    lifetime: SecretLifetime,
) -> Result<Rotated, ConnectionError> {
    let txn = db.begin().await?;
    let current = store::lock(&txn, cmd.client_id, cmd.connection_id)
        .await?
        .ok_or(ConnectionError::NotFound)?;
    let plan = Plan::new(&current, cmd.grace_period, &cmd.actor, lifetime, Utc::now())?;
    let mut update = connection::Entity::update_many();
    for (column, value) in plan.rotated_values() {
        update = update.col_expr(column, Expr::value(value));
    }
    update
        .filter(connection::Column::Id.eq(plan.updated.id))
        .exec(&txn)
        .await?;
    connection_event::Entity::insert(plan.event.clone())
        .exec_without_returning(&txn)
        .await?;
    outbox::Entity::insert_many(plan.outbox.clone())
        .exec_without_returning(&txn)
        .await?;
    if !plan.retired.is_empty() {
        retired_digest::Entity::insert_many(plan.retired.clone())
            .on_conflict(retired::keep_earlier_end())
            .exec_without_returning(&txn)
            .await?;
    }
    if let Some(remember) = &cmd.remember {
        let answer = Answer {
            data: (remember.render)(&plan.updated, plan.secret.expose())?,
            secret_expires_at: plan.updated.secret_expires_at,
        };
        idempotency::complete(&txn, &remember.ticket, &answer).await?;
    }
    txn.commit().await?;
    Ok(finished(plan))
}

/// The committed outcome of `plan`.
fn finished(plan: Plan) -> Rotated {
    Rotated {
        connection: plan.updated,
        secret: plan.secret,
        committed: plan.committed,
    }
}
