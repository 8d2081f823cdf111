//! Database connection and migrations, for SQLite and PostgreSQL alike.
use anyhow::Context as _;
use migration::{Migrator, MigratorTrait as _};
use sea_orm::{ConnectionTrait as _, DatabaseBackend, DatabaseConnection, TransactionTrait as _};

use crate::config::Config;

/// The advisory lock that serializes migrations on PostgreSQL (an arbitrary constant,
/// the same in every release).
const MIGRATION_LOCK: i64 = 0x006d_6974_6872_696c;

pub async fn connect(config: &Config) -> anyhow::Result<DatabaseConnection> {
    kernel::db::connect(&config.database.url, config.database.max_connections).await
}

/// Applies pending migrations.
///
/// CAUTION: every API instance migrates on start, and a rollout on PostgreSQL starts
/// several at once. They take turns: the migrations run inside one transaction
/// (PostgreSQL's DDL is transactional) that first takes a transaction-scoped advisory
/// lock; the first instance applies them, the others then find nothing pending. The
/// embedded SQLite database serves one instance.
pub async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    if db.get_database_backend() != DatabaseBackend::Postgres {
        return Migrator::up(db, None).await.context("applying migrations");
    }
    let txn = db.begin().await.context("beginning the migration")?;
    txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        .await
        .context("waiting for the migration lock")?;
    Migrator::up(&txn, None)
        .await
        .context("applying migrations")?;
    txn.commit().await.context("committing the migrations")
}
