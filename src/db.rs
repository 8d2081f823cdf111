//! Database connection and migrations, for SQLite and PostgreSQL alike.
use anyhow::Context as _;
use migration::{Migrator, MigratorTrait as _};
use sea_orm::DatabaseConnection;

use crate::config::Config;

pub async fn connect(config: &Config) -> anyhow::Result<DatabaseConnection> {
    workers::db::connect(&config.database_url, config.db_max_connections).await
}

pub async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    Migrator::up(db, None).await.context("applying migrations")
}
