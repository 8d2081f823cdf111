//! `secret_reminders`: one row per reminder of one secret (a connection's secret version)
//! and one threshold (`14d`, `3d`, `1d`, ..., `expired`), so however many worker
//! processes run, each reminder is queued, claimed and sent once. Deleting the connection
//! deletes its rows; a rotation starts a new secret version, with no rows.
use sea_orm_migration::prelude::*;

use crate::m20261128_000004_create_connections::Connections;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SecretReminders::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(SecretReminders::ConnectionId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SecretReminders::SecretVersion)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SecretReminders::Threshold)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(ColumnDef::new(SecretReminders::State).string().not_null())
                    .col(
                        ColumnDef::new(SecretReminders::LeaseUntil)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(SecretReminders::SentAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(SecretReminders::ConnectionId)
                            .col(SecretReminders::SecretVersion)
                            .col(SecretReminders::Threshold),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(SecretReminders::Table, SecretReminders::ConnectionId)
                            .to(Connections::Table, Connections::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SecretReminders::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum SecretReminders {
    Table,
    ConnectionId,
    SecretVersion,
    Threshold,
    State,
    LeaseUntil,
    SentAt,
}
