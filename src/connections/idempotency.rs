//! A refresh a caller can safely retry: `Idempotency-Key`. The first request with a key
//! marks it `running` (so a second, on any instance, gets 409); its rotation marks it
//! `done` in the rotation's own transaction, with the answer sealed; a retry with the
//! same key and body gets that answer again, and nothing rotates.
//!
//! CAUTION: nothing stored opens without the caller's key. A row is found by a digest of
//! the key and the path's ids (`lookup`), never by the key; the answer is sealed with
//! ChaCha20-Poly1305 under a key derived from the caller's key by HKDF-SHA256 (the path's
//! ids as context), with the lookup as associated data. Neither the key nor the secret
//! reaches the database, Redis, logs, metrics or errors.
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit as _};
use chrono::{DateTime, Utc};
use entity::idempotent_refresh::{self, state};
use hkdf::Hkdf;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait as _, QueryFilter as _,
};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::ConnectionError;
use crate::secrets::{hex_sha256, random_bytes};

/// How long a `running` marker holds before another request may take the key over: its
/// first request died (an instance killed mid-refresh). A rotation takes milliseconds; one
/// still running after this loses its key to the retry and rolls back (409 to its caller).
pub const RUNNING_LEASE: Duration = Duration::from_secs(60);

const LOOKUP_LABEL: &[u8] = b"mithril refresh idempotency-key lookup v1\0";
const SEALING_SALT: &[u8] = b"mithril refresh idempotency-key sealing v1";
const NONCE_BYTES: usize = 12;

/// What the caller's key gives, for one connection of one client: where its row is, and
/// the key that seals and opens its answer. Never printed.
pub struct KeyMaterial {
    lookup: String,
    sealing: Zeroizing<[u8; 32]>,
    client_id: Uuid,
    connection_id: Uuid,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("lookup", &self.lookup)
            .finish_non_exhaustive()
    }
}

impl KeyMaterial {
    /// Derives the lookup and the sealing key of `key` (the header's characters) on the
    /// connection `connection_id` of `client_id`: the same key elsewhere is another key.
    pub fn derive(
        key: &str,
        client_id: Uuid,
        connection_id: Uuid,
    ) -> Result<Self, ConnectionError> {
        let lookup = hex_sha256(&[
            LOOKUP_LABEL,
            client_id.as_bytes(),
            connection_id.as_bytes(),
            key.as_bytes(),
        ]);
        let mut context = [0u8; 32];
        context[..16].copy_from_slice(client_id.as_bytes());
        context[16..].copy_from_slice(connection_id.as_bytes());
        let mut sealing = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit (255 × 32); were it ever refused, the
        // all-zero key must not seal anything, so the refusal is an error.
        Hkdf::<Sha256>::new(Some(SEALING_SALT), key.as_bytes())
            .expand(&context, sealing.as_mut())
            .map_err(|e| {
                ConnectionError::Internal(anyhow::anyhow!("deriving a sealing key: {e}"))
            })?;
        Ok(Self {
            lookup,
            sealing,
            client_id,
            connection_id,
        })
    }

    /// The row's key in `idempotent_refreshes`: a digest, never the key.
    pub fn lookup(&self) -> &str {
        &self.lookup
    }

    fn cipher(&self) -> Result<ChaCha20Poly1305, ConnectionError> {
        ChaCha20Poly1305::new_from_slice(self.sealing.as_ref())
            .map_err(|e| ConnectionError::Internal(anyhow::anyhow!("sealing key: {e}")))
    }

    /// `answer`, sealed: base64 of a random nonce and the ciphertext.
    fn seal(&self, answer: &Answer) -> Result<String, ConnectionError> {
        let plain = Zeroizing::new(serde_json::to_vec(answer)?);
        let nonce = random_bytes::<NONCE_BYTES>().map_err(ConnectionError::Internal)?;
        let sealed = self
            .cipher()?
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &plain,
                    aad: self.lookup.as_bytes(),
                },
            )
            .map_err(|_| ConnectionError::Internal(anyhow::anyhow!("sealing an answer")))?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        Ok(STANDARD.encode(stored))
    }

    /// The answer `sealed` holds, if this key seals it.
    fn open(&self, sealed: &str) -> Option<Answer> {
        let stored = STANDARD.decode(sealed).ok()?;
        if stored.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, ciphertext) = stored.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().ok()?;
        let plain = Zeroizing::new(
            self.cipher()
                .ok()?
                .decrypt(
                    &nonce.into(),
                    Payload {
                        msg: ciphertext,
                        aad: self.lookup.as_bytes(),
                    },
                )
                .ok()?,
        );
        serde_json::from_slice(&plain).ok()
    }
}

/// The answer a refresh gave, as it is given again: its `data` (which holds the secret)
/// and when that secret expires.
#[derive(Serialize, Deserialize)]
pub struct Answer {
    pub data: serde_json::Value,
    pub secret_expires_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answer").finish_non_exhaustive()
    }
}

/// What a request with a key finds.
#[derive(Debug)]
pub enum Begun {
    /// The key is this request's now: rotate, and remember the answer with `Ticket`.
    Fresh(Ticket),
    /// The first request finished with 200: its answer.
    Replay(Answer),
    /// The first request is still running.
    InProgress,
    /// The key was used with another body.
    OtherBody,
}

/// A request's hold on its key, for its rotation to settle.
#[derive(Debug)]
pub struct Ticket {
    pub key: KeyMaterial,
    attempt: Uuid,
    ttl: Duration,
}

/// The canonical form of a refresh's body: the grace period asked for (none is 0).
pub fn fingerprint(grace_period: i64) -> String {
    hex_sha256(&[format!("grace_period={grace_period}").as_bytes()])
}

fn after(now: DateTime<Utc>, length: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(length)
        .ok()
        .and_then(|length| now.checked_add_signed(length))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// When a `running` marker may be forgotten: never before its lease ends, however short
/// the TTL, or a retry (or the pruner) would take the key from a rotation still running.
fn running_until(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    after(now, ttl.max(RUNNING_LEASE))
}

/// Finds `key`'s row and says what this request is to do; takes the key when it is free
/// (no row, a row past its TTL, or a `running` marker whose lease lapsed).
pub async fn begin(
    db: &DatabaseConnection,
    key: KeyMaterial,
    fingerprint: String,
    ttl: Duration,
) -> Result<Begun, ConnectionError> {
    // A few times at most: a row that changed between the read and the write is read
    // again.
    for _ in 0..3 {
        let now = Utc::now();
        let row = idempotent_refresh::Entity::find_by_id(key.lookup.clone())
            .one(db)
            .await?;
        let attempt = Uuid::now_v7();
        let taken = match row {
            None => insert_running(db, &key, &fingerprint, attempt, ttl, now).await?,
            Some(row) if row.expires_at <= now => {
                // Forgotten: the key rotates again.
                // CAUTION: only while it is still expired. A request that completed in
                // between moved `expires_at` on (keeping its attempt): its answer stays.
                idempotent_refresh::Entity::delete_many()
                    .filter(idempotent_refresh::Column::Lookup.eq(&key.lookup))
                    .filter(idempotent_refresh::Column::Attempt.eq(row.attempt))
                    .filter(idempotent_refresh::Column::ExpiresAt.lte(now))
                    .exec(db)
                    .await?;
                continue;
            }
            Some(row)
                if row.state == state::RUNNING
                    && row.lease_until.is_none_or(|until| until <= now) =>
            {
                // Its first request died before it rotated: the key is free, whatever
                // body that request had.
                take_over(db, &key, &fingerprint, row.attempt, attempt, ttl, now).await?
            }
            Some(row) if row.fingerprint != fingerprint => return Ok(Begun::OtherBody),
            Some(row) if row.state == state::DONE => {
                let answer = row.sealed.as_deref().and_then(|sealed| key.open(sealed));
                return match answer {
                    Some(answer) => Ok(Begun::Replay(answer)),
                    // Only the caller's key opens it, and the lookup is derived from that
                    // key: a record that does not open was tampered with.
                    None => Err(ConnectionError::Internal(anyhow::anyhow!(
                        "a remembered answer does not open"
                    ))),
                };
            }
            Some(_) => return Ok(Begun::InProgress),
        };
        if taken {
            return Ok(Begun::Fresh(Ticket { key, attempt, ttl }));
        }
    }
    Ok(Begun::InProgress)
}

async fn insert_running(
    db: &DatabaseConnection,
    key: &KeyMaterial,
    fingerprint: &str,
    attempt: Uuid,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let inserted = idempotent_refresh::Entity::insert(idempotent_refresh::ActiveModel {
        lookup: Set(key.lookup.clone()),
        client_id: Set(key.client_id),
        connection_id: Set(key.connection_id),
        fingerprint: Set(fingerprint.to_owned()),
        state: Set(state::RUNNING.to_owned()),
        attempt: Set(attempt),
        sealed: Set(None),
        lease_until: Set(Some(after(now, RUNNING_LEASE))),
        expires_at: Set(running_until(now, ttl)),
        created_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(idempotent_refresh::Column::Lookup)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(inserted == 1)
}

/// Takes over a `running` marker whose first request died, unless another request did
/// first.
async fn take_over(
    db: &DatabaseConnection,
    key: &KeyMaterial,
    fingerprint: &str,
    previous: Uuid,
    attempt: Uuid,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let taken = idempotent_refresh::Entity::update_many()
        .col_expr(
            idempotent_refresh::Column::Attempt,
            sea_orm::sea_query::Expr::value(attempt),
        )
        .col_expr(
            idempotent_refresh::Column::LeaseUntil,
            sea_orm::sea_query::Expr::value(Some(after(now, RUNNING_LEASE))),
        )
        .col_expr(
            idempotent_refresh::Column::ExpiresAt,
            sea_orm::sea_query::Expr::value(running_until(now, ttl)),
        )
        .col_expr(
            idempotent_refresh::Column::Fingerprint,
            sea_orm::sea_query::Expr::value(fingerprint),
        )
        .filter(idempotent_refresh::Column::Lookup.eq(&key.lookup))
        .filter(idempotent_refresh::Column::Attempt.eq(previous))
        .filter(idempotent_refresh::Column::State.eq(state::RUNNING))
        .exec(db)
        .await?
        .rows_affected;
    Ok(taken == 1)
}

/// Marks the key `done` with `answer` sealed, inside the rotation's transaction `txn`.
///
/// CAUTION: only while the key is still this request's. If another request took it over
/// (this one outlived `RUNNING_LEASE`), the rotation must roll back: two rotations for one
/// key would hand out two secrets.
pub async fn complete(
    txn: &impl ConnectionTrait,
    ticket: &Ticket,
    answer: &Answer,
) -> Result<(), ConnectionError> {
    let now = Utc::now();
    let sealed = ticket.key.seal(answer)?;
    let done = idempotent_refresh::Entity::update_many()
        .col_expr(
            idempotent_refresh::Column::State,
            sea_orm::sea_query::Expr::value(state::DONE),
        )
        .col_expr(
            idempotent_refresh::Column::Sealed,
            sea_orm::sea_query::Expr::value(Some(sealed)),
        )
        .col_expr(
            idempotent_refresh::Column::LeaseUntil,
            sea_orm::sea_query::Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(
            idempotent_refresh::Column::ExpiresAt,
            sea_orm::sea_query::Expr::value(after(now, ticket.ttl)),
        )
        .filter(idempotent_refresh::Column::Lookup.eq(&ticket.key.lookup))
        .filter(idempotent_refresh::Column::Attempt.eq(ticket.attempt))
        .filter(idempotent_refresh::Column::State.eq(state::RUNNING))
        .exec(txn)
        .await?
        .rows_affected;
    if done == 1 {
        Ok(())
    } else {
        Err(ConnectionError::KeyTakenOver)
    }
}

/// Lets the key go after a request that did not rotate (an error, or a caller who left
/// before its turn): the key may be used again at once. Best effort: should it fail, the
/// marker's lease lets the key go a minute later.
pub async fn release(db: &DatabaseConnection, ticket: &Ticket) {
    let released = idempotent_refresh::Entity::delete_many()
        .filter(idempotent_refresh::Column::Lookup.eq(&ticket.key.lookup))
        .filter(idempotent_refresh::Column::Attempt.eq(ticket.attempt))
        .filter(idempotent_refresh::Column::State.eq(state::RUNNING))
        .exec(db)
        .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "letting an idempotency key go failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        Answer {
            data: serde_json::json!({"secret": "s3cr3t"}),
            secret_expires_at: None,
        }
    }

    #[test]
    fn only_the_callers_key_opens_its_answer() {
        let (client, connection) = (Uuid::new_v4(), Uuid::new_v4());
        let key = KeyMaterial::derive("a-key-of-sixteen-chars", client, connection).unwrap();
        let sealed = key.seal(&answer()).unwrap();
        assert!(!sealed.contains("s3cr3t"));
        assert_eq!(key.open(&sealed).unwrap().data, answer().data);
        let other = KeyMaterial::derive("a-key-of-sixteen-chars!", client, connection).unwrap();
        assert!(other.open(&sealed).is_none(), "another key opens nothing");
        let elsewhere =
            KeyMaterial::derive("a-key-of-sixteen-chars", client, Uuid::new_v4()).unwrap();
        assert!(
            elsewhere.open(&sealed).is_none(),
            "nor the same key elsewhere"
        );
        assert_ne!(key.lookup, elsewhere.lookup);
        let mut bytes = STANDARD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(
            key.open(&STANDARD.encode(bytes)).is_none(),
            "tampering shows"
        );
    }

    #[test]
    fn the_lookup_and_the_debug_output_hold_no_key() {
        let key = KeyMaterial::derive("my-idempotency-key-123", Uuid::nil(), Uuid::nil()).unwrap();
        assert!(!key.lookup.contains("my-idempotency"));
        assert!(!format!("{key:?}").contains("my-idempotency"));
        assert_eq!(fingerprint(0), fingerprint(0));
        assert_ne!(fingerprint(0), fingerprint(60));
    }
}
