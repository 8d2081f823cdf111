use crate::uuid_pk;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // No foreign keys: the audit trail outlives the connection it describes.
        manager
            .create_table(
                Table::create()
                    .table(ConnectionEvents::Table)
                    .if_not_exists()
                    .col(uuid_pk(ConnectionEvents::Id))
                    .col(
                        ColumnDef::new(ConnectionEvents::ConnectionId)
                            .uuid()
                            .not_null(),
                    )
                    .col(ColumnDef::new(ConnectionEvents::ClientId).uuid().not_null())
                    .col(ColumnDef::new(ConnectionEvents::Kind).string().not_null())
                    .col(
                        ColumnDef::new(ConnectionEvents::ActorUserId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ConnectionEvents::ActorClientId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ConnectionEvents::RequestId)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ConnectionEvents::RemoteAddress)
                            .string()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ConnectionEvents::SecretVersion)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ConnectionEvents::GracePeriod)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ConnectionEvents::OccurredAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("connection_events_connection_id_occurred_at_idx")
                    .table(ConnectionEvents::Table)
                    .col(ConnectionEvents::ConnectionId)
                    .col(ConnectionEvents::OccurredAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ConnectionEvents::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
pub enum ConnectionEvents {
    Table,
    Id,
    ConnectionId,
    ClientId,
    Kind,
    ActorUserId,
    ActorClientId,
    RequestId,
    RemoteAddress,
    SecretVersion,
    GracePeriod,
    OccurredAt,
}
