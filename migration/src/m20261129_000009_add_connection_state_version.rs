//! `connections.state_version`: bumped by every write that changes what verify answers
//! for a connection's secrets (a rotation, a re-point, a delete), so cache entries can be
//! ordered. `secret_version` keeps counting rotations only. Backfilled from it.
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
                        ColumnDef::new(Connections::StateVersion)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        // CAUTION: a row's state version starts at or above its secret version, so no
        // entry a previous release cached can outrank one written from now on.
        manager
            .exec_stmt(
                Query::update()
                    .table(Connections::Table)
                    .value(
                        Connections::StateVersion,
                        Expr::col(Connections::SecretVersion),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Connections::Table)
                    .drop_column(Connections::StateVersion)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Connections {
    Table,
    SecretVersion,
    StateVersion,
}
