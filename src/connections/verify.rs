//! Looking a presented secret's digest up in the database, for the verify path.
use chrono::Utc;
use entity::connection;
use sea_orm::sea_query::Condition;
use sea_orm::{ColumnTrait as _, DatabaseConnection, DbErr, EntityTrait as _, QueryFilter as _};
use workers::credentials::{CachedCredential, ConnectionView};

use crate::secrets::SecretDigest;

pub fn view(c: &connection::Model) -> ConnectionView {
    ConnectionView {
        id: c.id,
        client_id: c.client_id,
        consumer_id: c.consumer_id,
        redirect_uri: c.redirect_uri.clone(),
    }
}

/// The cache entry for `digest`: the connection whose current secret, or previous secret
/// still inside its grace period, has it; `None` when no connection accepts it.
pub async fn lookup_credential(
    db: &DatabaseConnection,
    digest: &SecretDigest,
) -> Result<Option<CachedCredential>, DbErr> {
    let now = Utc::now();
    let found = connection::Entity::find()
        .filter(
            Condition::any()
                .add(connection::Column::SecretHash.eq(digest.as_str()))
                .add(
                    Condition::all()
                        .add(connection::Column::PreviousSecretHash.eq(digest.as_str()))
                        .add(connection::Column::PreviousSecretExpiresAt.gt(now)),
                ),
        )
        .one(db)
        .await?;
    Ok(found.and_then(|c| {
        // Compare again in constant time: the query matched on an index, this decides.
        if digest.matches(&c.secret_hash) {
            Some(CachedCredential::Valid {
                connection: view(&c),
                valid_until: None,
            })
        } else if c
            .previous_secret_hash
            .as_deref()
            .is_some_and(|p| digest.matches(p))
        {
            c.previous_secret_expires_at
                .filter(|at| *at > now)
                .map(|at| CachedCredential::Valid {
                    connection: view(&c),
                    valid_until: Some(at),
                })
        } else {
            None
        }
    }))
}
