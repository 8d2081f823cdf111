use crate::m20261128_000003_create_clients::Clients;
use crate::{timestamp, uuid_pk};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Connections::Table)
                    .if_not_exists()
                    .col(uuid_pk(Connections::Id))
                    .col(ColumnDef::new(Connections::ClientId).uuid().not_null())
                    .col(ColumnDef::new(Connections::ConsumerId).uuid().not_null())
                    .col(ColumnDef::new(Connections::RedirectUri).text().not_null())
                    // SHA-256 digests, hex: the plaintext secret is never stored.
                    .col(
                        ColumnDef::new(Connections::SecretHash)
                            .string_len(64)
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(Connections::PreviousSecretHash)
                            .string_len(64)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Connections::PreviousSecretExpiresAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Connections::SecretVersion)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(timestamp(Connections::InsertedAt))
                    .col(timestamp(Connections::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Connections::Table, Connections::ClientId)
                            .to(Clients::Table, Clients::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Connections::Table, Connections::ConsumerId)
                            .to(Clients::Table, Clients::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("connections_client_id_consumer_id_key")
                    .table(Connections::Table)
                    .col(Connections::ClientId)
                    .col(Connections::ConsumerId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // The verify path looks a presented secret up by either digest.
        manager
            .create_index(
                Index::create()
                    .name("connections_previous_secret_hash_idx")
                    .table(Connections::Table)
                    .col(Connections::PreviousSecretHash)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Connections::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum Connections {
    Table,
    Id,
    ClientId,
    ConsumerId,
    RedirectUri,
    SecretHash,
    PreviousSecretHash,
    PreviousSecretExpiresAt,
    SecretVersion,
    InsertedAt,
    UpdatedAt,
}
