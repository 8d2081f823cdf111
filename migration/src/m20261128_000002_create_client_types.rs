use crate::{timestamp, uuid_pk};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The seven eHealth client types and the scopes a token issued through each may carry.
/// Ids are fixed so that every database, embedded or not, agrees on them.
pub const CLIENT_TYPES: [(&str, &str, &str); 7] = [
    (
        "4a3f2f6e-3c1a-4f0e-9d51-000000000001",
        "MSP",
        "connection:read connection:write connection:delete connection:refresh_secret legal_entity:read employee:read",
    ),
    (
        "4a3f2f6e-3c1a-4f0e-9d51-000000000002",
        "PHARMACY",
        "connection:read connection:write connection:delete connection:refresh_secret legal_entity:read",
    ),
    (
        "4a3f2f6e-3c1a-4f0e-9d51-000000000003",
        "MSP_PHARMACY",
        "connection:read connection:write connection:delete connection:refresh_secret legal_entity:read employee:read",
    ),
    (
        "4a3f2f6e-3c1a-4f0e-9d51-000000000004",
        "MIS",
        "connection:read connection:write connection:delete connection:refresh_secret",
    ),
    (
        "4a3f2f6e-3c1a-4f0e-9d51-000000000005",
        "MSP_LIMITED",
        "connection:read",
    ),
    (
        "4a3f2f6e-3c1a-4f0e-9d51-000000000006",
        "NHS",
        "connection:read connection:write connection:delete connection:refresh_secret legal_entity:read",
    ),
    (
        "4a3f2f6e-3c1a-4f0e-9d51-000000000007",
        "CABINET",
        "connection:read connection:write connection:delete connection:refresh_secret",
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ClientTypes::Table)
                    .if_not_exists()
                    .col(uuid_pk(ClientTypes::Id))
                    .col(
                        ColumnDef::new(ClientTypes::Name)
                            .string()
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(ClientTypes::Scope).text().not_null())
                    .col(timestamp(ClientTypes::InsertedAt))
                    .col(timestamp(ClientTypes::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        let now = Expr::current_timestamp();
        let mut insert = Query::insert()
            .into_table(ClientTypes::Table)
            .columns([
                ClientTypes::Id,
                ClientTypes::Name,
                ClientTypes::Scope,
                ClientTypes::InsertedAt,
                ClientTypes::UpdatedAt,
            ])
            .to_owned();
        for (id, name, scope) in CLIENT_TYPES {
            let id = uuid::Uuid::parse_str(id).map_err(|e| DbErr::Custom(e.to_string()))?;
            insert.values_panic([
                id.into(),
                name.into(),
                scope.into(),
                now.clone(),
                now.clone(),
            ]);
        }
        manager.exec_stmt(insert).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ClientTypes::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum ClientTypes {
    Table,
    Id,
    Name,
    Scope,
    InsertedAt,
    UpdatedAt,
}
