//! `sent_notifications` becomes the claim of a notice: a worker inserts `sending` with a
//! lease before it mails, turns it `sent` once the mail server accepted, or `dead` when
//! the notice can never go. Rows of earlier releases were written after sending: `sent`.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(SentNotifications::Table)
                    .add_column(
                        ColumnDef::new(SentNotifications::State)
                            .string()
                            .not_null()
                            .default("sent"),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(SentNotifications::Table)
                    .add_column(
                        ColumnDef::new(SentNotifications::LeaseUntil)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [SentNotifications::LeaseUntil, SentNotifications::State] {
            manager
                .alter_table(
                    Table::alter()
                        .table(SentNotifications::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum SentNotifications {
    Table,
    State,
    LeaseUntil,
}
