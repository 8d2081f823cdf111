//! `mithril seed FILE` and `mithril seed --demo`: load users, clients, connections and
//! tokens, idempotently by id. Only digests of secrets and tokens are stored.
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use entity::{client, client_type, connection, token, user};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter as _,
};
use serde::Deserialize;
use serde_json::json;
use uuid::{Uuid, uuid};

use crate::config::SecretLifetime;
use crate::secrets::Plaintext;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    #[serde(default)]
    pub users: Vec<SeedUser>,
    #[serde(default)]
    pub clients: Vec<SeedClient>,
    #[serde(default)]
    pub connections: Vec<SeedConnection>,
    #[serde(default)]
    pub tokens: Vec<SeedToken>,
}

#[derive(Debug, Deserialize)]
pub struct SeedUser {
    pub id: Uuid,
    pub email: String,
    #[serde(default = "default_locale")]
    pub locale: String,
    #[serde(default)]
    pub is_blocked: bool,
}

#[derive(Debug, Deserialize)]
pub struct SeedClient {
    pub id: Uuid,
    pub name: String,
    pub client_type: String,
    pub user_id: Uuid,
    #[serde(default)]
    pub is_blocked: bool,
}

// No `Debug`: it may hold a plaintext secret.
#[derive(Deserialize)]
pub struct SeedConnection {
    pub id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    pub redirect_uri: String,
    pub secret: Option<String>,
}

// No `Debug`: it holds a plaintext token.
#[derive(Deserialize)]
pub struct SeedToken {
    pub value: String,
    pub user_id: Uuid,
    pub client_id: Uuid,
    pub scope: String,
    pub expires_at: DateTime<Utc>,
}

fn default_locale() -> String {
    "uk".to_owned()
}

/// A secret generated for a seeded connection that had none: shown once, never stored.
pub struct GeneratedSecret {
    pub connection_id: Uuid,
    pub secret: Plaintext,
}

/// What a load did with the file's connections.
#[derive(Default)]
pub struct Seeded {
    /// Secrets generated for new connections that the file gave none.
    pub generated: Vec<GeneratedSecret>,
    /// Connections that already existed and were left exactly as they were.
    pub kept: Vec<Uuid>,
}

/// Loads `seed` with the lifetime policy off: seeded secrets never expire.
pub async fn load(db: &DatabaseConnection, seed: SeedFile) -> anyhow::Result<Seeded> {
    load_with_lifetime(db, seed, SecretLifetime::OFF).await
}

/// Loads `seed`; each secret it issues (given in the file, or generated) expires
/// `lifetime` after now, in the same statement that stores it. Users, clients and tokens
/// are upserted by id; a connection is only ever created (see `insert_connection`).
pub async fn load_with_lifetime(
    db: &DatabaseConnection,
    seed: SeedFile,
    lifetime: SecretLifetime,
) -> anyhow::Result<Seeded> {
    let now = Utc::now();
    for u in seed.users {
        user::Entity::insert(user::ActiveModel {
            id: Set(u.id),
            email: Set(u.email),
            locale: Set(u.locale),
            is_blocked: Set(u.is_blocked),
            inserted_at: Set(now),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(user::Column::Id)
                .update_columns([
                    user::Column::Email,
                    user::Column::Locale,
                    user::Column::IsBlocked,
                    user::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .with_context(|| format!("seeding user {}", u.id))?;
    }
    for c in seed.clients {
        let client_type_id = client_type_id(db, &c.client_type).await?;
        client::Entity::insert(client::ActiveModel {
            id: Set(c.id),
            name: Set(c.name),
            client_type_id: Set(client_type_id),
            user_id: Set(c.user_id),
            is_blocked: Set(c.is_blocked),
            inserted_at: Set(now),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(client::Column::Id)
                .update_columns([
                    client::Column::Name,
                    client::Column::ClientTypeId,
                    client::Column::UserId,
                    client::Column::IsBlocked,
                    client::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .with_context(|| format!("seeding client {}", c.id))?;
    }
    let mut seeded = Seeded::default();
    for mut c in seed.connections {
        let id = c.id;
        let (secret, generated) = match c.secret.take() {
            Some(given) => (Plaintext::from_received(given), false),
            None => (Plaintext::generate()?, true),
        };
        let created = insert_connection(db, c, &secret, lifetime.expiry(now))
            .await
            .with_context(|| format!("seeding connection {id}"))?;
        if !created {
            seeded.kept.push(id);
        } else if generated {
            seeded.generated.push(GeneratedSecret {
                connection_id: id,
                secret,
            });
        }
    }
    for t in seed.tokens {
        let value = Plaintext::from_received(t.value);
        token::Entity::insert(token::ActiveModel {
            id: Set(Uuid::now_v7()),
            name: Set("seed".to_owned()),
            value_hash: Set(value.digest().into_string()),
            user_id: Set(t.user_id),
            details: Set(
                json!({"client_id": t.client_id, "scope": t.scope, "grant_type": "password"}),
            ),
            expires_at: Set(t.expires_at),
            inserted_at: Set(now),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(token::Column::ValueHash)
                .update_columns([
                    token::Column::UserId,
                    token::Column::Details,
                    token::Column::ExpiresAt,
                    token::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .context("seeding a token")?;
    }
    Ok(seeded)
}

/// Creates the connection unless one with its id exists; `false` when it did.
///
// CAUTION: a connection that exists is left exactly as it is: its secret, its version, its
// retired secret, its `redirect_uri`. Re-seeding a file (or seeding an old copy of one)
// must never make a retired secret current again, nor race a rotation for the row; the
// API is the one way to change a connection. One conditional insert, no read before it.
async fn insert_connection(
    db: &DatabaseConnection,
    c: SeedConnection,
    secret: &Plaintext,
    secret_expires_at: Option<DateTime<Utc>>,
) -> anyhow::Result<bool> {
    let now = Utc::now();
    let inserted = connection::Entity::insert(connection::ActiveModel {
        id: Set(c.id),
        client_id: Set(c.client_id),
        consumer_id: Set(c.consumer_id),
        redirect_uri: Set(c.redirect_uri),
        secret_hash: Set(secret.digest().into_string()),
        previous_secret_hash: Set(None),
        previous_secret_expires_at: Set(None),
        secret_version: Set(0),
        state_version: Set(0),
        secret_expires_at: Set(secret_expires_at),
        inserted_at: Set(now),
        updated_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(connection::Column::Id)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(inserted == 1)
}

/// The client type's id by name; a type the migrations did not seed is created with no
/// scopes (the context rule treats unknown types as restricted).
async fn client_type_id(db: &DatabaseConnection, name: &str) -> anyhow::Result<Uuid> {
    if let Some(found) = client_type::Entity::find()
        .filter(client_type::Column::Name.eq(name))
        .one(db)
        .await?
    {
        return Ok(found.id);
    }
    let id = Uuid::now_v7();
    let now = Utc::now();
    client_type::Entity::insert(client_type::ActiveModel {
        id: Set(id),
        name: Set(name.to_owned()),
        scope: Set(String::new()),
        inserted_at: Set(now),
        updated_at: Set(now),
    })
    .exec_without_returning(db)
    .await
    .with_context(|| format!("creating client type {name}"))?;
    Ok(id)
}

pub const DEMO_OWNER_ID: Uuid = uuid!("0b6a3b5e-8f3c-4c1e-9d2a-1f0c5e7a0001");
pub const DEMO_CLINIC_ID: Uuid = uuid!("0b6a3b5e-8f3c-4c1e-9d2a-1f0c5e7a0002");
pub const DEMO_MIS_ID: Uuid = uuid!("0b6a3b5e-8f3c-4c1e-9d2a-1f0c5e7a0003");
pub const DEMO_CONNECTION_ID: Uuid = uuid!("0b6a3b5e-8f3c-4c1e-9d2a-1f0c5e7a0004");

/// What `seed --demo` hands a newcomer: a fresh token and the connection to rotate.
pub struct Demo {
    pub token: Plaintext,
    pub client_id: Uuid,
    pub connection_id: Uuid,
}

/// A clinic (MSP) owned by a demo user, connected to a MIS, and a new token for the
/// clinic with every connection scope. Re-running keeps the data and adds a token. A
/// secret it generates expires `lifetime` after now.
pub async fn load_demo(db: &DatabaseConnection, lifetime: SecretLifetime) -> anyhow::Result<Demo> {
    let token = Plaintext::generate()?;
    let seed = SeedFile {
        users: vec![SeedUser {
            id: DEMO_OWNER_ID,
            email: "owner@clinic.example.org".to_owned(),
            locale: "uk".to_owned(),
            is_blocked: false,
        }],
        clients: vec![
            SeedClient {
                id: DEMO_CLINIC_ID,
                name: "Demo Clinic".to_owned(),
                client_type: "MSP".to_owned(),
                user_id: DEMO_OWNER_ID,
                is_blocked: false,
            },
            SeedClient {
                id: DEMO_MIS_ID,
                name: "Demo MIS".to_owned(),
                client_type: "MIS".to_owned(),
                user_id: DEMO_OWNER_ID,
                is_blocked: false,
            },
        ],
        connections: vec![SeedConnection {
            id: DEMO_CONNECTION_ID,
            client_id: DEMO_CLINIC_ID,
            consumer_id: DEMO_MIS_ID,
            redirect_uri: "https://mis.example.org/auth/callback".to_owned(),
            secret: None,
        }],
        tokens: vec![SeedToken {
            value: token.expose().to_owned(),
            user_id: DEMO_OWNER_ID,
            client_id: DEMO_CLINIC_ID,
            scope: "connection:refresh_secret connection:read connection:write connection:delete"
                .to_owned(),
            expires_at: Utc::now() + chrono::Duration::days(30),
        }],
    };
    load_with_lifetime(db, seed, lifetime).await?;
    Ok(Demo {
        token,
        client_id: DEMO_CLINIC_ID,
        connection_id: DEMO_CONNECTION_ID,
    })
}

impl Demo {
    /// The ready `curl` for the refresh call against a server bound at `bind`.
    pub fn curl(&self, bind: &str) -> String {
        format!(
            "curl -sS -X PATCH http://{bind}/api/clients/{}/connections/{}/actions/refresh_secret \\\n  -H 'Authorization: Bearer {}'",
            self.client_id,
            self.connection_id,
            self.token.expose()
        )
    }
}
