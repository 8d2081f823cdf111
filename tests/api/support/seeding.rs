//! Seed data for a test: clients, connections and tokens, loaded through `mithril seed`'s
//! own loader.
use chrono::{DateTime, Utc};
use mithril::seed::{self, SeedClient, SeedConnection, SeedFile, SeedToken, SeedUser};
use uuid::Uuid;

use super::{ALL_SCOPES, TestApp};

impl TestApp {
    /// A user who owns a new client of `client_type`.
    pub async fn client(&self, client_type: &str) -> Uuid {
        self.client_owned_by(client_type, "uk").await.0
    }

    /// A client of `client_type` whose owner reads notices in `locale`; returns the
    /// client id and the owner's e-mail.
    pub async fn client_owned_by(&self, client_type: &str, locale: &str) -> (Uuid, String) {
        let owner = Uuid::new_v4();
        let client = Uuid::new_v4();
        let mut owner_user = user(owner, false);
        owner_user.locale = locale.to_owned();
        let email = owner_user.email.clone();
        self.load(SeedFile {
            users: vec![owner_user],
            clients: vec![SeedClient {
                id: client,
                name: format!("{client_type} {client}"),
                client_type: client_type.to_owned(),
                user_id: owner,
                is_blocked: false,
            }],
            ..SeedFile::default()
        })
        .await;
        (client, email)
    }

    /// A connection of `client_id` to a new MIS consumer, with a known secret.
    pub async fn connection(&self, client_id: Uuid) -> (Uuid, String) {
        let consumer = self.client("MIS").await;
        let id = Uuid::new_v4();
        let secret = format!("seeded-{}", Uuid::new_v4().simple());
        self.load(SeedFile {
            connections: vec![SeedConnection {
                id,
                client_id,
                consumer_id: consumer,
                redirect_uri: "https://mis.example.org/cb".to_owned(),
                secret: Some(secret.clone()),
            }],
            ..SeedFile::default()
        })
        .await;
        (id, secret)
    }

    /// A token for a new user acting through `client_id`.
    pub async fn token(&self, client_id: Uuid, scope: &str) -> String {
        self.token_with(
            client_id,
            scope,
            Utc::now() + chrono::Duration::hours(1),
            false,
        )
        .await
    }

    pub async fn token_with(
        &self,
        client_id: Uuid,
        scope: &str,
        expires_at: DateTime<Utc>,
        user_blocked: bool,
    ) -> String {
        let user_id = Uuid::new_v4();
        let value = format!("token-{}", Uuid::new_v4().simple());
        self.load(SeedFile {
            users: vec![user(user_id, user_blocked)],
            tokens: vec![SeedToken {
                value: value.clone(),
                user_id,
                client_id,
                scope: scope.to_owned(),
                expires_at,
            }],
            ..SeedFile::default()
        })
        .await;
        value
    }

    /// The scope list of a client type, as an operator would set it.
    pub async fn set_type_scopes(&self, client_type: &str, scopes: &str) {
        use sea_orm::sea_query::Expr;
        use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _};
        entity::client_type::Entity::update_many()
            .col_expr(entity::client_type::Column::Scope, Expr::value(scopes))
            .filter(entity::client_type::Column::Name.eq(client_type))
            .exec(&self.db)
            .await
            .unwrap();
    }

    pub async fn load(&self, seed: SeedFile) {
        seed::load(&self.db, seed).await.unwrap();
    }
}

impl TestApp {
    pub async fn owned(&self, client_type: &str) -> Owned {
        let client_id = self.client(client_type).await;
        let (connection_id, secret) = self.connection(client_id).await;
        let token = self.token(client_id, ALL_SCOPES).await;
        Owned {
            client_id,
            connection_id,
            secret,
            token,
        }
    }
}

/// A client with one connection and a token carrying every connection scope.
pub struct Owned {
    pub client_id: Uuid,
    pub connection_id: Uuid,
    pub secret: String,
    pub token: String,
}

fn user(id: Uuid, is_blocked: bool) -> SeedUser {
    SeedUser {
        id,
        email: format!("owner-{}@example.org", id.simple()),
        locale: "uk".to_owned(),
        is_blocked,
    }
}
