//! The outbox relay: after commit, push a change's outbox rows to the job queue and mark
//! them dispatched; a sweeper in every instance re-pushes rows left behind (the queue was
//! down, the process died).
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use entity::outbox;
use sea_orm::sea_query::{Expr, ExprTrait as _, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait as _, DatabaseBackend, DatabaseConnection, EntityTrait as _, QueryFilter as _,
    QueryOrder as _, QuerySelect as _, TransactionTrait as _,
};
use uuid::Uuid;
use workers::queue::Queue;

/// Rows younger than this are left to the request that wrote them.
pub const SWEEP_AFTER: Duration = Duration::from_secs(3);
const SWEEP_BATCH: u64 = 200;

#[derive(Clone)]
pub struct OutboxRelay {
    db: DatabaseConnection,
    queue: Queue,
}

impl OutboxRelay {
    pub fn new(db: DatabaseConnection, queue: Queue) -> Self {
        Self { db, queue }
    }

    /// Pushes the given rows, if still undispatched. Errors leave them to the sweeper.
    ///
    /// These are the rows a request has just committed, and the sweeper leaves rows alone
    /// for `SWEEP_AFTER`, so no row lock is taken: one read, the pushes, and one update
    /// marking them all, instead of a locking transaction with an update per row (profiled
    /// under P1 of scripts/bench: five round trips and a second commit per refresh). A
    /// dispatch slower than `SWEEP_AFTER` may race a sweep and push a row twice; that
    /// costs a duplicate job, and both jobs are idempotent (as on SQLite, below).
    pub async fn dispatch(&self, ids: &[Uuid]) -> anyhow::Result<usize> {
        let rows = outbox::Entity::find()
            .filter(outbox::Column::DispatchedAt.is_null())
            .filter(outbox::Column::Id.is_in(ids.iter().copied()))
            .order_by_asc(outbox::Column::CreatedAt)
            .all(&self.db)
            .await
            .context("outbox: select")?;
        let mut pushed = Vec::with_capacity(rows.len());
        let mut failure = None;
        for row in &rows {
            match self.queue.push(&row.kind, row.payload.clone()).await {
                Ok(()) => pushed.push(row.id),
                Err(e) => {
                    failure = Some((row.id, e));
                    break;
                }
            }
        }
        if !pushed.is_empty() {
            outbox::Entity::update_many()
                .col_expr(
                    outbox::Column::Attempts,
                    Expr::col(outbox::Column::Attempts).add(1),
                )
                .col_expr(outbox::Column::DispatchedAt, Expr::value(Utc::now()))
                .filter(outbox::Column::Id.is_in(pushed.iter().copied()))
                .filter(outbox::Column::DispatchedAt.is_null())
                .exec(&self.db)
                .await
                .context("outbox: mark")?;
        }
        if let Some((id, e)) = failure {
            // The queue is down: count the attempt and leave the rest to the sweeper.
            outbox::Entity::update_many()
                .col_expr(
                    outbox::Column::Attempts,
                    Expr::col(outbox::Column::Attempts).add(1),
                )
                .filter(outbox::Column::Id.eq(id))
                .filter(outbox::Column::DispatchedAt.is_null())
                .exec(&self.db)
                .await
                .context("outbox: mark")?;
            metrics::counter!("mithril_outbox_push_failures_total").increment(1);
            return Err(e).context("outbox: pushing to the queue");
        }
        Ok(pushed.len())
    }

    /// Pushes rows left undispatched for longer than `SWEEP_AFTER`.
    pub async fn sweep(&self) -> anyhow::Result<usize> {
        let cutoff = Utc::now() - chrono::Duration::from_std(SWEEP_AFTER).unwrap_or_default();
        self.relay(outbox::Column::CreatedAt.lt(cutoff), SWEEP_BATCH)
            .await
    }

    /// This relay on a pool opened now, on the calling runtime: for the flush on the way
    /// out. A PostgreSQL connection belongs to the runtime that opened it, and most of
    /// the shared pool's were opened by HTTP workers, whose runtimes are shutting down
    /// by then; a query on one fails ("A Tokio 1.x context was found, but it is being
    /// shutdown"), as a benchmark's stop showed. SQLite connections run on threads of
    /// their own, so there the relay is kept as it is. The queue is rebuilt on the new
    /// pool when it lives in the database; a Redis queue is kept.
    pub async fn reopened(&self, config: &crate::config::Config) -> anyhow::Result<Self> {
        if self.db.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(self.clone());
        }
        let db = crate::db::connect(config).await?;
        let queue = match &self.queue {
            Queue::Redis(_) => self.queue.clone(),
            _ => Queue::connect(&db, None, &config.queue_namespace).await?,
        };
        Ok(Self::new(db, queue))
    }

    /// Pushes every undispatched row, whatever its age: on the way out. Batch after
    /// batch, so a backlog larger than one batch is not left to the next start; rows
    /// written after the flush began are not waited for.
    pub async fn flush(&self) -> anyhow::Result<usize> {
        let until = Utc::now();
        let mut total = 0;
        loop {
            let pushed = self
                .relay(outbox::Column::CreatedAt.lte(until), SWEEP_BATCH)
                .await?;
            total += pushed;
            if (pushed as u64) < SWEEP_BATCH {
                return Ok(total);
            }
        }
    }

    /// Runs `sweep` every second until `stop` turns true (or its sender is gone).
    pub async fn run_sweeper(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "outbox sweeper re-pushed rows"),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "outbox sweep failed; will retry")
                }
            }
        }
    }

    async fn relay(
        &self,
        which: sea_orm::sea_query::SimpleExpr,
        limit: u64,
    ) -> anyhow::Result<usize> {
        let select = outbox::Entity::find()
            .filter(outbox::Column::DispatchedAt.is_null())
            .filter(which)
            .order_by_asc(outbox::Column::CreatedAt)
            .limit(limit);
        match self.db.get_database_backend() {
            // CAUTION: several instances sweep at once; SKIP LOCKED gives each row to one.
            DatabaseBackend::Postgres => {
                let txn = self.db.begin().await.context("outbox: begin")?;
                let rows = select
                    .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                    .all(&txn)
                    .await
                    .context("outbox: select")?;
                let pushed = self.push_and_mark(&rows, &txn).await;
                txn.commit().await.context("outbox: commit")?;
                pushed
            }
            // SQLite has one writer and the embedded queue writes through another
            // connection, so no transaction may span the push. A row pushed twice (a
            // sweep racing the request) costs a duplicate job, and both jobs are
            // idempotent.
            _ => {
                let rows = select.all(&self.db).await.context("outbox: select")?;
                self.push_and_mark(&rows, &self.db).await
            }
        }
    }

    async fn push_and_mark(
        &self,
        rows: &[outbox::Model],
        db: &impl sea_orm::ConnectionTrait,
    ) -> anyhow::Result<usize> {
        let mut pushed = 0;
        for row in rows {
            let result = self.queue.push(&row.kind, row.payload.clone()).await;
            let mut update = outbox::Entity::update_many()
                .col_expr(
                    outbox::Column::Attempts,
                    Expr::col(outbox::Column::Attempts).add(1),
                )
                .filter(outbox::Column::Id.eq(row.id))
                .filter(outbox::Column::DispatchedAt.is_null());
            if result.is_ok() {
                update = update.col_expr(outbox::Column::DispatchedAt, Expr::value(Utc::now()));
            }
            update.exec(db).await.context("outbox: mark")?;
            match result {
                Ok(()) => pushed += 1,
                Err(e) => {
                    // The queue is down: stop here and leave the rest to the next sweep.
                    metrics::counter!("mithril_outbox_push_failures_total").increment(1);
                    return Err(e).context("outbox: pushing to the queue");
                }
            }
        }
        Ok(pushed)
    }
}
