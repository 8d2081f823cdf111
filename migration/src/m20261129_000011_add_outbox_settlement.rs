//! `outbox.dead_at`: a row that can never be pushed (its payload does not decode, its
//! kind is unknown) is set aside instead of blocking every later sweep.
//! `outbox.settled_at`: the reconciler's mark on a `notify_owner` row whose notice was
//! sent or dead-lettered, so it is not looked at again.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Outbox::DeadAt, Outbox::SettledAt] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Outbox::Table)
                        .add_column(ColumnDef::new(column).timestamp_with_time_zone().null())
                        .to_owned(),
                )
                .await?;
        }
        // The reconciler scans dispatched, unsettled rows by dispatch time.
        manager
            .create_index(
                Index::create()
                    .name("outbox_unsettled")
                    .table(Outbox::Table)
                    .col(Outbox::SettledAt)
                    .col(Outbox::DispatchedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("outbox_unsettled")
                    .table(Outbox::Table)
                    .to_owned(),
            )
            .await?;
        for column in [Outbox::SettledAt, Outbox::DeadAt] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Outbox::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    DispatchedAt,
    DeadAt,
    SettledAt,
}
