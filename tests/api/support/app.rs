//! The application under test: a fresh database per test, the real app on port 0, seed
//! data, and the database read back.
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mithril::config::Config;
use mithril::seed::{self, SeedClient, SeedConnection, SeedFile, SeedToken, SeedUser};
use mithril::{AppState, Application};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::Value;
use uuid::Uuid;

use super::into_parts;

pub const ALL_SCOPES: &str =
    "connection:refresh_secret connection:read connection:write connection:delete";

/// Where the test databases live, decided once per test binary.
enum Backend {
    Sqlite,
    Postgres(String),
}

fn backend() -> &'static Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    BACKEND.get_or_init(|| match std::env::var("MITHRIL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Backend::Postgres(url),
        _ => Backend::Sqlite,
    })
}

/// `MITHRIL_TEST_LOG=debug` (any filter) shows the app's logs while debugging a test.
fn init_logs() {
    static LOGS: OnceLock<()> = OnceLock::new();
    LOGS.get_or_init(|| {
        if let Ok(filter) = std::env::var("MITHRIL_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

pub fn is_postgres(app: &TestApp) -> bool {
    app.db.get_database_backend() == sea_orm::DatabaseBackend::Postgres
}

/// A database of its own for one test, and a directory for its files (the SQLite
/// database, mail); files go away with the guard.
pub struct TestDatabase {
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl TestDatabase {
    pub async fn new() -> Self {
        match backend() {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/mithril.db?mode=rwc", dir.path().display());
                Self { url, dir }
            }
            // CAUTION: configured but unreachable is a failure, never a silent skip.
            Backend::Postgres(base) => {
                let admin = Database::connect(base.as_str()).await.unwrap_or_else(|e| {
                    panic!("MITHRIL_TEST_POSTGRES_URL is set but unreachable: {e}")
                });
                let name = format!("mithril_test_{}", Uuid::new_v4().simple());
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap();
                admin.close().await.unwrap();
                let (prefix, _) = base
                    .rsplit_once('/')
                    .expect("postgres URL with a database path");
                Self {
                    url: format!("{prefix}/{name}"),
                    dir: tempfile::tempdir().unwrap(),
                }
            }
        }
    }
}

pub fn test_config(database: &TestDatabase) -> Config {
    let mut config = Config::embedded(database.url.clone());
    config.http.bind = "127.0.0.1:0".to_owned();
    config.http.workers = 2;
    config.database.max_connections = 10;
    config.workers.mail_dir = database.dir.path().join("mail");
    config.workers.retries = 5;
    config.workers.retry_min_ms = 50;
    config.workers.retry_max_ms = 500;
    config.workers.poll_interval_ms = 50;
    // Tests stop their apps from outside, not by signal; the drain delay is for
    // balancers.
    config.shutdown.drain_delay = Duration::ZERO;
    // Storms of refreshes are the point of many tests; the budget has tests of its own.
    config.rotation.refresh_limit = None;
    config.verify.sighting_flush = Duration::from_millis(200);
    config
}

pub struct TestApp {
    pub address: String,
    pub db: DatabaseConnection,
    pub state: actix_web::web::Data<AppState>,
    pub http: reqwest::Client,
    pub database: std::sync::Arc<TestDatabase>,
    server: actix_web::dev::ServerHandle,
    running: actix_web::rt::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let database = std::sync::Arc::new(TestDatabase::new().await);
        Self::spawn_on(database, adjust).await
    }

    /// Another instance on the same database, as behind a load balancer.
    pub async fn spawn_on(
        database: std::sync::Arc<TestDatabase>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        init_logs();
        let mut config = test_config(&database);
        adjust(&mut config);
        let app = Application::build(config).await.expect("the app builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let state = app.state();
        let db = app.db();
        let server = app.handle();
        let running = actix_web::rt::spawn(app.run_until_stopped());
        Self {
            address,
            db,
            state,
            http: reqwest::Client::new(),
            database,
            server,
            running,
        }
    }

    /// A graceful stop, as on SIGTERM; returns once the application has drained.
    pub async fn stop(self) {
        self.server.stop(true).await;
        self.running
            .await
            .expect("the application task")
            .expect("the application stops cleanly");
    }

    pub fn refresh_url(&self, client_id: &str, connection_id: &str) -> String {
        format!("{}{}", self.address, refresh_path(client_id, connection_id))
    }

    /// PATCH refresh_secret with an optional bearer token and raw body.
    pub async fn refresh_raw(
        &self,
        client_id: &str,
        connection_id: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let path = refresh_path(client_id, connection_id);
        self.call(reqwest::Method::PATCH, &path, token, body).await
    }

    pub async fn refresh(&self, client_id: Uuid, connection_id: Uuid, token: &str) -> (u16, Value) {
        self.refresh_raw(
            &client_id.to_string(),
            &connection_id.to_string(),
            Some(token),
            None,
        )
        .await
    }

    pub async fn refresh_with_grace(
        &self,
        client_id: Uuid,
        connection_id: Uuid,
        token: &str,
        grace: u64,
    ) -> (u16, Value) {
        let body = format!(r#"{{"grace_period": {grace}}}"#);
        self.refresh_raw(
            &client_id.to_string(),
            &connection_id.to_string(),
            Some(token),
            Some(&body),
        )
        .await
    }

    pub async fn verify(&self, secret: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/connections/actions/verify", self.address))
            .header("api-key", secret)
            .send()
            .await
            .unwrap();
        into_parts(response).await
    }

    pub async fn verifies(&self, secret: &str) -> bool {
        self.verify(secret).await.0 == 200
    }

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

    pub async fn query_i64(&self, sql: &str) -> i64 {
        let row = self
            .db
            .query_one_raw(Statement::from_string(self.db.get_database_backend(), sql))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }

    /// Every row of every table as text, to search for values that must not be stored.
    pub async fn dump_database(&self) -> String {
        let backend = self.db.get_database_backend();
        let tables_sql = match backend {
            // The queue's own tables (schema `apalis`) hold job payloads: scanned too.
            sea_orm::DatabaseBackend::Postgres => {
                "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM information_schema.tables \
                 WHERE table_schema IN ('public', 'apalis') AND table_type = 'BASE TABLE'"
            }
            _ => "SELECT name FROM sqlite_master WHERE type = 'table'",
        };
        let tables = self
            .db
            .query_all_raw(Statement::from_string(backend, tables_sql))
            .await
            .unwrap();
        let mut dump = String::new();
        for table in tables {
            let name: String = table.try_get_by_index(0).unwrap();
            let rows_sql = match backend {
                sea_orm::DatabaseBackend::Postgres => {
                    format!("SELECT CAST(t AS text) FROM {name} t")
                }
                _ => {
                    let columns = self
                        .db
                        .query_all_raw(Statement::from_string(
                            backend,
                            format!("SELECT name FROM pragma_table_info('{name}')"),
                        ))
                        .await
                        .unwrap();
                    let columns: Vec<String> = columns
                        .iter()
                        .map(|c| {
                            let c = c.try_get_by_index::<String>(0).unwrap();
                            format!("CASE typeof(\"{c}\") WHEN 'blob' THEN hex(\"{c}\") ELSE COALESCE(CAST(\"{c}\" AS TEXT), '') END")
                        })
                        .collect();
                    format!("SELECT {} FROM \"{name}\"", columns.join(" || '|' || "))
                }
            };
            for row in self
                .db
                .query_all_raw(Statement::from_string(backend, rows_sql))
                .await
                .unwrap()
            {
                dump.push_str(&row.try_get_by_index::<String>(0).unwrap());
                dump.push('\n');
            }
        }
        dump
    }
}

fn user(id: Uuid, is_blocked: bool) -> SeedUser {
    SeedUser {
        id,
        email: format!("owner-{}@example.org", id.simple()),
        locale: "uk".to_owned(),
        is_blocked,
    }
}

/// The refresh_secret path of one connection.
pub fn refresh_path(
    client_id: impl std::fmt::Display,
    connection_id: impl std::fmt::Display,
) -> String {
    format!("/api/clients/{client_id}/connections/{connection_id}/actions/refresh_secret")
}

/// A client with one connection and a token carrying every connection scope.
pub struct Owned {
    pub client_id: Uuid,
    pub connection_id: Uuid,
    pub secret: String,
    pub token: String,
}

/// Two instances on one database, sharing `redis_url` under a queue namespace of their
/// own (so no other test's workers take their jobs).
pub async fn two_instances_on_redis(redis_url: &str) -> (TestApp, TestApp) {
    let namespace = crate::support::fresh_namespace();
    let first = TestApp::spawn_with(|c| {
        c.redis_url = Some(redis_url.to_owned());
        c.workers.queue_namespace = namespace.clone();
    })
    .await;
    let second = TestApp::spawn_on(first.database.clone(), |c| {
        c.redis_url = Some(redis_url.to_owned());
        c.workers.queue_namespace = namespace.clone();
    })
    .await;
    (first, second)
}

/// Verifies `secret` twice on each instance, so every cache layer holds it.
pub async fn warm(apps: &[&TestApp], secret: &str) {
    for app in apps {
        for _ in 0..2 {
            assert!(app.verifies(secret).await);
        }
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
