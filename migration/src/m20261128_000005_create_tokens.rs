use crate::m20261128_000001_create_users::Users;
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
                    .table(Tokens::Table)
                    .if_not_exists()
                    .col(uuid_pk(Tokens::Id))
                    .col(ColumnDef::new(Tokens::Name).string().not_null())
                    .col(
                        ColumnDef::new(Tokens::ValueHash)
                            .string_len(64)
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Tokens::UserId).uuid().not_null())
                    .col(ColumnDef::new(Tokens::Details).json().not_null())
                    .col(timestamp(Tokens::ExpiresAt))
                    .col(timestamp(Tokens::InsertedAt))
                    .col(timestamp(Tokens::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Tokens::Table, Tokens::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Tokens::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum Tokens {
    Table,
    Id,
    Name,
    ValueHash,
    UserId,
    Details,
    ExpiresAt,
    InsertedAt,
    UpdatedAt,
}
