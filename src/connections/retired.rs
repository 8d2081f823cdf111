//! Retired digests, remembered for the sighting window: which connection a digest that no
//! longer verifies belonged to, since when and why, so that verify can tell a system
//! still presenting an old secret from a wrong guess.
use chrono::{DateTime, Utc};
use entity::retired_digest::{self, reason};
use kernel::credentials::{ConnectionIds, CredentialChange};
use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, ConnectionTrait, DbErr, EntityTrait as _, QueryFilter as _,
};

use crate::secrets::SecretDigest;

/// Why a write retires digests at once.
#[derive(Clone, Copy)]
pub enum Cause {
    Rotation,
    Delete,
}

/// Records, in the write's own transaction, every digest `change` retires (see `rows`).
pub async fn record(
    conn: &impl ConnectionTrait,
    change: &CredentialChange,
    cause: Cause,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let rows = rows(change, cause, now);
    if rows.is_empty() {
        return Ok(());
    }
    retired_digest::Entity::insert_many(rows)
        .on_conflict(keep_earlier_end())
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

/// The rows of every digest `change` retires: those it retires now (for `cause`), and
/// those it keeps only until a grace period ends (then). Insert them with
/// `keep_earlier_end`.
pub fn rows(
    change: &CredentialChange,
    cause: Cause,
    now: DateTime<Utc>,
) -> Vec<retired_digest::ActiveModel> {
    let now_reason = match cause {
        Cause::Rotation => reason::ROTATED,
        Cause::Delete => reason::DELETED,
    };
    let retiring = change
        .retire
        .iter()
        .map(|digest| (digest, now, now_reason))
        .chain(change.still_valid.iter().filter_map(|still| {
            still
                .valid_until
                .map(|until| (&still.digest, until, reason::GRACE_ENDED))
        }));
    retiring
        .map(|(digest, at, why)| retired_digest::ActiveModel {
            digest: Set(digest.clone()),
            connection_id: Set(change.connection.id),
            client_id: Set(change.connection.client_id),
            consumer_id: Set(change.connection.consumer_id),
            retired_at: Set(at),
            reason: Set(why.to_owned()),
        })
        .collect()
}

/// A digest recorded before keeps the earlier of its two ends.
pub fn keep_earlier_end() -> OnConflict {
    OnConflict::column(retired_digest::Column::Digest)
        .update_columns([
            retired_digest::Column::RetiredAt,
            retired_digest::Column::Reason,
        ])
        .action_and_where(
            Expr::col((retired_digest::Entity, retired_digest::Column::RetiredAt))
                .gt(Expr::cust("excluded.retired_at")),
        )
        .to_owned()
}

/// The connection `digest` belonged to, if it retired (by `now`) within the window.
pub async fn find(
    conn: &impl ConnectionTrait,
    digest: &SecretDigest,
    now: DateTime<Utc>,
) -> Result<Option<ConnectionIds>, DbErr> {
    Ok(retired_digest::Entity::find_by_id(digest.as_str())
        .filter(retired_digest::Column::RetiredAt.lte(now))
        .one(conn)
        .await?
        .map(|row| ConnectionIds {
            connection_id: row.connection_id,
            client_id: row.client_id,
            consumer_id: row.consumer_id,
        }))
}

/// Forgets digests retired before `before`; returns how many.
pub async fn prune(conn: &impl ConnectionTrait, before: DateTime<Utc>) -> Result<u64, DbErr> {
    Ok(retired_digest::Entity::delete_many()
        .filter(retired_digest::Column::RetiredAt.lt(before))
        .exec(conn)
        .await?
        .rows_affected)
}
