//! Schema migrations. One file per change, each with `down`; the same files run on
//! SQLite (embedded default) and PostgreSQL.
pub use sea_orm_migration::prelude::*;

mod m20261128_000001_create_users;
mod m20261128_000002_create_client_types;
mod m20261128_000003_create_clients;
mod m20261128_000004_create_connections;
mod m20261128_000005_create_tokens;
mod m20261128_000006_create_connection_events;
mod m20261128_000007_create_outbox;
mod m20261128_000008_create_sent_notifications;
mod m20261129_000009_add_connection_state_version;
mod m20261129_000010_add_notice_claims;
mod m20261129_000011_add_outbox_settlement;
mod m20261129_000012_add_secret_expiry;
mod m20261129_000013_create_secret_reminders;
mod m20261130_000014_create_retired_digests;
mod m20261130_000015_create_secret_sightings;
mod m20261203_000016_widen_outbox_notices_index;
mod m20261203_000017_create_idempotent_refreshes;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_users::Migration),
            Box::new(m20261128_000002_create_client_types::Migration),
            Box::new(m20261128_000003_create_clients::Migration),
            Box::new(m20261128_000004_create_connections::Migration),
            Box::new(m20261128_000005_create_tokens::Migration),
            Box::new(m20261128_000006_create_connection_events::Migration),
            Box::new(m20261128_000007_create_outbox::Migration),
            Box::new(m20261128_000008_create_sent_notifications::Migration),
            Box::new(m20261129_000009_add_connection_state_version::Migration),
            Box::new(m20261129_000010_add_notice_claims::Migration),
            Box::new(m20261129_000011_add_outbox_settlement::Migration),
            Box::new(m20261129_000012_add_secret_expiry::Migration),
            Box::new(m20261129_000013_create_secret_reminders::Migration),
            Box::new(m20261130_000014_create_retired_digests::Migration),
            Box::new(m20261130_000015_create_secret_sightings::Migration),
            Box::new(m20261203_000016_widen_outbox_notices_index::Migration),
            Box::new(m20261203_000017_create_idempotent_refreshes::Migration),
        ]
    }
}

/// Timestamps are stored with a time zone and always written in UTC.
pub(crate) fn timestamp(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

pub(crate) fn uuid_pk(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .uuid()
        .not_null()
        .primary_key()
        .to_owned()
}
