//! `secret_sightings`: a retired or expired secret that some system still presents, per
//! connection, day and reason: how many times, first and last seen, and from which
//! address last. One row a connection a day however many presentations, written in
//! batches. Never the secret, nor its digest.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SecretSightings::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(SecretSightings::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(SecretSightings::ConnectionId)
                            .uuid()
                            .not_null(),
                    )
                    .col(ColumnDef::new(SecretSightings::ClientId).uuid().not_null())
                    .col(
                        ColumnDef::new(SecretSightings::ConsumerId)
                            .uuid()
                            .not_null(),
                    )
                    .col(ColumnDef::new(SecretSightings::Day).date().not_null())
                    .col(
                        ColumnDef::new(SecretSightings::Reason)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SecretSightings::Count)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SecretSightings::FirstSeenAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SecretSightings::LastSeenAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(SecretSightings::LastAddress).string().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("secret_sightings_once_a_day")
                    .table(SecretSightings::Table)
                    .col(SecretSightings::ConnectionId)
                    .col(SecretSightings::Day)
                    .col(SecretSightings::Reason)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SecretSightings::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum SecretSightings {
    Table,
    Id,
    ConnectionId,
    ClientId,
    ConsumerId,
    Day,
    Reason,
    Count,
    FirstSeenAt,
    LastSeenAt,
    LastAddress,
}
