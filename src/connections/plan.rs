//! What one rotation writes, worked out from the row it replaces: the new secret, the
//! old one kept for its grace period, the audit event, the outbox rows and the retired
//! digests. `rotation` writes it under the row lock or in one statement
//! (`compare_and_set`).
use chrono::{DateTime, Duration, Utc};
use entity::{connection, connection_event, outbox, retired_digest};
use kernel::jobs::NotifyOwner;
use sea_orm::{ActiveModelTrait as _, IntoActiveModel as _, Value};

use super::audit::{self, Initiator, NewEvent};
use super::effects::Committed;
use super::{ConnectionError, kinds, outbox_rows, retired, validity};
use crate::config::SecretLifetime;
use crate::secrets::Plaintext;

/// Everything one rotation writes, worked out from the row it replaces: the same rows
/// whichever path writes them.
pub(super) struct Plan {
    pub(super) updated: connection::Model,
    pub(super) secret: Plaintext,
    pub(super) event: connection_event::ActiveModel,
    pub(super) outbox: Vec<outbox::ActiveModel>,
    pub(super) retired: Vec<retired_digest::ActiveModel>,
    pub(super) committed: Committed,
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
    /// The rotation of `current` by `actor` at `now`, the previous secret kept for
    /// `grace_period` seconds.
    pub(super) fn new(
        current: &connection::Model,
        grace_period: i64,
        actor: &Initiator,
        lifetime: SecretLifetime,
        now: DateTime<Utc>,
    ) -> Result<Self, ConnectionError> {
        let secret = Plaintext::generate().map_err(ConnectionError::Internal)?;
        // Validated against the maximum at the edge; checked again here, as arithmetic.
        let grace_ends = match grace_period {
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
            actor,
            secret_version: Some(updated.secret_version),
            grace_period: Some(grace_period),
            secret_expires_at: updated.secret_expires_at,
            occurred_at: now,
        });
        let change = validity::change(current, Some(&updated), now);
        let notify = NotifyOwner {
            event_id,
            connection_id: updated.id,
            client_id: updated.client_id,
            consumer_id: updated.consumer_id,
            actor_user_id: actor.user_id,
            request_id: actor.request_id.clone(),
            secret_version: updated.secret_version,
            grace_period,
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
}
