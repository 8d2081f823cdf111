use crate::m20261128_000001_create_users::Users;
use crate::m20261128_000002_create_client_types::ClientTypes;
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
                    .table(Clients::Table)
                    .if_not_exists()
                    .col(uuid_pk(Clients::Id))
                    .col(
                        ColumnDef::new(Clients::Name)
                            .string()
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Clients::ClientTypeId).uuid().not_null())
                    .col(ColumnDef::new(Clients::UserId).uuid().not_null())
                    .col(
                        ColumnDef::new(Clients::IsBlocked)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(timestamp(Clients::InsertedAt))
                    .col(timestamp(Clients::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Clients::Table, Clients::ClientTypeId)
                            .to(ClientTypes::Table, ClientTypes::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Clients::Table, Clients::UserId)
                            .to(Users::Table, Users::Id),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Clients::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum Clients {
    Table,
    Id,
    Name,
    ClientTypeId,
    UserId,
    IsBlocked,
    InsertedAt,
    UpdatedAt,
}
