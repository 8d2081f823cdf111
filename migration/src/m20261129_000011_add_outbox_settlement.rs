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
        // The reconciler scans unsettled notices by dispatch time; partial, so the
        // invalidations and settled notices that pile up in the outbox cost it nothing.
        // (The same SQL on both databases.)
        // CAUTION: as released. Migration 16 widens it to stale-secret notices; a
        // released migration is never edited, as databases that ran it keep its result.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS outbox_notices_unsettled ON outbox (dispatched_at) \
                 WHERE kind = 'notify_owner' AND settled_at IS NULL",
            )
            .await
            .map(drop)
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS outbox_notices_unsettled")
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
    DeadAt,
    SettledAt,
}
