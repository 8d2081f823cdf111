//! The application under test: a fresh database per test, the real app on port 0, and
//! the database read back. Its calls are in `calls.rs`, its seed data in `seeding.rs`.
use std::sync::OnceLock;
use std::time::Duration;

use mithril::config::Config;
use mithril::{AppState, Application};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use uuid::Uuid;

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
