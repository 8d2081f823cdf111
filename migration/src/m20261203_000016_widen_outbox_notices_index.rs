//! The reconciler's partial index `outbox_notices_unsettled` as it should be: over the
//! unsettled rows of both notice kinds (`notify_owner`, `notify_stale_secret`). Migration
//! 11 made it for rotation notices only, and databases that ran it keep that; this one
//! rebuilds it. An index only: no row is touched.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const WIDE: &str = "CREATE INDEX outbox_notices_unsettled ON outbox (dispatched_at) \
     WHERE kind IN ('notify_owner', 'notify_stale_secret') AND settled_at IS NULL";
const RELEASED: &str = "CREATE INDEX outbox_notices_unsettled ON outbox (dispatched_at) \
     WHERE kind = 'notify_owner' AND settled_at IS NULL";

/// One batch, so both statements run on one connection (SQLite's migrations otherwise
/// met the index still there).
async fn rebuild(manager: &SchemaManager<'_>, definition: &str) -> Result<(), DbErr> {
    manager
        .get_connection()
        .execute_unprepared(&format!(
            "DROP INDEX IF EXISTS outbox_notices_unsettled; {definition}"
        ))
        .await
        .map(drop)
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild(manager, WIDE).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild(manager, RELEASED).await
    }
}
