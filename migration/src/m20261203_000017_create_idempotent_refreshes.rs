//! `idempotent_refreshes`: one row per `Idempotency-Key` of a refresh, found by a digest
//! of the key (never the key): `running` while its first request runs, then `done` with
//! the answer sealed under a key derived from the caller's key. A new table: nothing of
//! the previous release changes.
use sea_orm_migration::prelude::*;

use crate::timestamp;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IdempotentRefreshes::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(IdempotentRefreshes::Lookup)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(IdempotentRefreshes::ClientId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotentRefreshes::ConnectionId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotentRefreshes::Fingerprint)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotentRefreshes::State)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotentRefreshes::Attempt)
                            .uuid()
                            .not_null(),
                    )
                    .col(ColumnDef::new(IdempotentRefreshes::Sealed).text().null())
                    .col(
                        ColumnDef::new(IdempotentRefreshes::LeaseUntil)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(timestamp(IdempotentRefreshes::ExpiresAt))
                    .col(timestamp(IdempotentRefreshes::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idempotent_refreshes_expiry")
                    .table(IdempotentRefreshes::Table)
                    .col(IdempotentRefreshes::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(IdempotentRefreshes::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum IdempotentRefreshes {
    Table,
    Lookup,
    ClientId,
    ConnectionId,
    Fingerprint,
    State,
    Attempt,
    Sealed,
    LeaseUntil,
    ExpiresAt,
    CreatedAt,
}
