//! Verification of a presented connection secret, for gateways.
use chrono::Utc;
use entity::connection;
use sea_orm::sea_query::Condition;
use sea_orm::{ColumnTrait as _, DatabaseConnection, DbErr, EntityTrait as _, QueryFilter as _};
use uuid::Uuid;

use crate::secrets::SecretDigest;

/// What a gateway learns from a valid secret: never the secret itself.
#[derive(Clone, Debug)]
pub struct VerifiedConnection {
    pub id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    pub redirect_uri: String,
}

/// The connection whose current secret, or previous secret still inside its grace
/// period, has this digest.
pub async fn verify(
    db: &DatabaseConnection,
    digest: &SecretDigest,
) -> Result<Option<VerifiedConnection>, DbErr> {
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
    Ok(found
        .filter(|c| accepts(c, digest, now))
        .map(|c| VerifiedConnection {
            id: c.id,
            client_id: c.client_id,
            consumer_id: c.consumer_id,
            redirect_uri: c.redirect_uri,
        }))
}

/// CAUTION: the grace period ends by the clock, whatever a query or cache returned.
fn accepts(c: &connection::Model, digest: &SecretDigest, now: chrono::DateTime<Utc>) -> bool {
    let current = digest.matches(&c.secret_hash);
    let previous = c
        .previous_secret_hash
        .as_deref()
        .is_some_and(|p| digest.matches(p))
        && c.previous_secret_expires_at.is_some_and(|at| at > now);
    current | previous
}
