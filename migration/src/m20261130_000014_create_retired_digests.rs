//! `retired_digests`: which connection a retired secret's digest belonged to, when it
//! stopped verifying and why, kept for the sighting window (`MITHRIL_SIGHTING_WINDOW`),
//! so a system still presenting it is told apart from a wrong guess. Digests only.
//! No foreign key: a deleted connection's digests are remembered too.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RetiredDigests::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(RetiredDigests::Digest)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(RetiredDigests::ConnectionId)
                            .uuid()
                            .not_null(),
                    )
                    .col(ColumnDef::new(RetiredDigests::ClientId).uuid().not_null())
                    .col(ColumnDef::new(RetiredDigests::ConsumerId).uuid().not_null())
                    .col(
                        ColumnDef::new(RetiredDigests::RetiredAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RetiredDigests::Reason)
                            .string_len(32)
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // Pruning walks them by age.
        manager
            .create_index(
                Index::create()
                    .name("retired_digests_retired_at")
                    .table(RetiredDigests::Table)
                    .col(RetiredDigests::RetiredAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RetiredDigests::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum RetiredDigests {
    Table,
    Digest,
    ConnectionId,
    ClientId,
    ConsumerId,
    RetiredAt,
    Reason,
}
