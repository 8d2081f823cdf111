//! One rotation: a new secret, the old one kept for its grace period, the audit event,
//! the outbox rows and the retired digests, all written atomically.
use std::sync::Arc;

use actix::Message;
use chrono::{DateTime, Duration, Utc};
use entity::{connection, connection_event, outbox, retired_digest};
use kernel::jobs::NotifyOwner;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, DatabaseBackend, DatabaseConnection, EntityTrait as _,
    IntoActiveModel as _, QueryFilter as _, TransactionTrait as _, Value,
};
use uuid::Uuid;

use super::audit::{self, Initiator, NewEvent};
use super::effects::Committed;
use super::idempotency::{self, Answer, Ticket};
use super::{ConnectionError, compare_and_set, kinds, outbox_rows, retired, store, validity};
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
        let plan = Plan::new(&current, cmd, lifetime, Utc::now())?;
        if compare_and_set::apply(db, current.state_version, &plan).await? {
            return Ok(plan.into_rotated());
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
    let plan = Plan::new(&current, cmd, lifetime, Utc::now())?;
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
    Ok(plan.into_rotated())
}

/// Everything one rotation writes, worked out from the row it replaces: the same rows
/// whichever path writes them.
pub(super) struct Plan {
    pub(super) updated: connection::Model,
    secret: Plaintext,
    pub(super) event: connection_event::ActiveModel,
    pub(super) outbox: Vec<outbox::ActiveModel>,
    pub(super) retired: Vec<retired_digest::ActiveModel>,
    committed: Committed,
}

/// The columns a rotation sets.
const ROTATED_COLUMNS: [connection::Column; 7] = [
    connection::Column::SecretHash,
    connection::Column::PreviousSecretHash,
    connection::Column::PreviousSecretExpiresAt,
    connection::Column::SecretVersion,
    connection::Column::StateVersion,
    connection::Column::SecretExpiresAt,
    connection::Column::UpdatedAt,
];

impl Plan {
    fn new(
        current: &connection::Model,
        cmd: &Rotate,
        lifetime: SecretLifetime,
        now: DateTime<Utc>,
    ) -> Result<Self, ConnectionError> {
        let secret = Plaintext::generate().map_err(ConnectionError::Internal)?;
        // Validated against the maximum at the edge; checked again here, as arithmetic.
        let grace_ends = match cmd.grace_period {
            0 => None,
            seconds => Some(
                Duration::try_seconds(seconds)
                    .and_then(|grace| now.checked_add_signed(grace))
                    .ok_or_else(|| {
                        ConnectionError::Internal(anyhow::anyhow!("grace period out of range"))
                    })?,
            ),
        };
        // CAUTION: only one previous secret is kept. Without a grace period the old secret
        // retires now; with one it becomes the previous secret until the grace ends (or
        // its own expiry, if sooner), and a previous secret still inside an earlier grace
        // period is displaced (retired).
        let previous_until =
            validity::previous_valid_until(grace_ends, current.secret_expires_at, now);
        let updated = connection::Model {
            secret_hash: secret.digest().into_string(),
            previous_secret_hash: previous_until.map(|_| current.secret_hash.clone()),
            previous_secret_expires_at: previous_until,
            secret_version: current.secret_version + 1,
            state_version: current.state_version + 1,
            secret_expires_at: lifetime.expiry(now),
            updated_at: now,
            ..current.clone()
        };
        let (event_id, event) = audit::row(NewEvent {
            kind: kinds::SECRET_REFRESHED,
            connection_id: updated.id,
            client_id: updated.client_id,
            actor: &cmd.actor,
            secret_version: Some(updated.secret_version),
            grace_period: Some(cmd.grace_period),
            secret_expires_at: updated.secret_expires_at,
            occurred_at: now,
        });
        let change = validity::change(current, Some(&updated), now);
        let notify = NotifyOwner {
            event_id,
            connection_id: updated.id,
            client_id: updated.client_id,
            consumer_id: updated.consumer_id,
            actor_user_id: cmd.actor.user_id,
            request_id: cmd.actor.request_id.clone(),
            secret_version: updated.secret_version,
            grace_period: cmd.grace_period,
            occurred_at: now,
            previous_secret_ends_at: Some(previous_until.unwrap_or(now)),
            secret_expires_at: updated.secret_expires_at,
            traceparent: kernel::trace::traceparent(),
        };
        let (notify_id, notify) = outbox_rows::row(&notify, now)?;
        let (invalidate_id, invalidate) = outbox_rows::invalidation(event_id, &change, now)?;
        let retired = retired::rows(&change, retired::Cause::Rotation, now);
        Ok(Self {
            updated,
            secret,
            event,
            outbox: vec![notify, invalidate],
            retired,
            committed: Committed {
                change,
                outbox_ids: vec![notify_id, invalidate_id],
            },
        })
    }

    /// The rotated columns and their new values.
    pub(super) fn rotated_values(&self) -> impl Iterator<Item = (connection::Column, Value)> {
        let updated = self.updated.clone().into_active_model();
        ROTATED_COLUMNS.into_iter().filter_map(move |column| {
            updated
                .get(column)
                .into_value()
                .map(|value| (column, value))
        })
    }

    fn into_rotated(self) -> Rotated {
        Rotated {
            connection: self.updated,
            secret: self.secret,
            committed: self.committed,
        }
    }
}
