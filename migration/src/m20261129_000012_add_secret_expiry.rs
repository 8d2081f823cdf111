//! The lifetime policy: `connections.secret_expires_at`, when the current secret stops
//! verifying (null: never, as for every secret issued before the policy), and
//! `connection_events.secret_expires_at`, the expiry a rotation or creation gave its
//! secret. Existing rows keep null: nothing expires until `mithril secrets apply-policy`
//! says so.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Connections::Table)
                    .add_column(
                        ColumnDef::new(Connections::SecretExpiresAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ConnectionEvents::Table)
                    .add_column(
                        ColumnDef::new(ConnectionEvents::SecretExpiresAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        // The reminder ticker and its gauges look secrets up by expiry.
        manager
            .create_index(
                Index::create()
                    .name("connections_secret_expires_at_idx")
                    .table(Connections::Table)
                    .col(Connections::SecretExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("connections_secret_expires_at_idx")
                    .table(Connections::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ConnectionEvents::Table)
                    .drop_column(ConnectionEvents::SecretExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Connections::Table)
                    .drop_column(Connections::SecretExpiresAt)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Connections {
    Table,
    SecretExpiresAt,
}

#[derive(DeriveIden)]
enum ConnectionEvents {
    Table,
    SecretExpiresAt,
}
