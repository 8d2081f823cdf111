//! The outbox relay: after commit, push a change's outbox rows to the job queue and mark
//! them dispatched; a sweeper in every instance re-pushes rows left behind (the queue was
//! down, the process died); a reconciler re-pushes notices that a queue forgot.
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use entity::outbox;
use kernel::queue::{Backend, Queue, QueueError};
use sea_orm::sea_query::{Expr, ExprTrait as _, LockBehavior, LockType, SimpleExpr};
use sea_orm::{
    ColumnTrait as _, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr,
    EntityTrait as _, QueryFilter as _, QueryOrder as _, QuerySelect as _, Select,
    TransactionTrait as _,
};
use tracing::Instrument as _;
use uuid::Uuid;

mod reconcile;

/// Rows younger than this are left to the request that wrote them.
pub const SWEEP_AFTER: Duration = Duration::from_secs(3);
const SWEEP_BATCH: u64 = 200;

/// Committed batches waiting for the dispatcher at most; past it the sweeper takes over.
const DISPATCH_BACKLOG: usize = 4096;

#[derive(Clone)]
pub struct OutboxRelay {
    db: DatabaseConnection,
    queue: Queue,
    /// Rows just committed, gathered by `run_dispatcher` into batches; `None` until it
    /// runs (each dispatch then goes on a task of its own).
    dispatcher: Option<tokio::sync::mpsc::Sender<Vec<Uuid>>>,
    /// A notice row (`notify_owner`, `notify_stale_secret`) whose notice is neither sent nor dead this long after its
    /// dispatch is pushed again.
    reconcile_after: Duration,
}

/// The rows the relay owes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Backlog {
    pub rows: u64,
    /// How long the oldest has waited; zero when there is none.
    pub oldest: Duration,
}

/// What is done with claimed rows.
#[derive(Clone, Copy)]
enum Work {
    /// Push undispatched rows and mark them dispatched.
    Relay,
    /// Settle rows whose notice is done; push again those whose notice is lost (not
    /// claimed since `cutoff`).
    Reconcile { cutoff: DateTime<Utc> },
}

/// The outcome of pushing one row.
enum Pushed {
    Yes,
    /// The row can never be pushed: set aside.
    Dead,
}

impl OutboxRelay {
    pub fn new(db: DatabaseConnection, queue: Queue, reconcile_after: Duration) -> Self {
        Self {
            db,
            queue,
            dispatcher: None,
            reconcile_after,
        }
    }

    /// This relay with a dispatcher that pushes committed rows in batches; run the
    /// returned receiver with `run_dispatcher`.
    pub fn with_dispatcher(mut self) -> (Self, tokio::sync::mpsc::Receiver<Vec<Uuid>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(DISPATCH_BACKLOG);
        self.dispatcher = Some(tx);
        (self, rx)
    }

    /// Pushes what requests committed, a batch at a time: the rows that arrive within
    /// `BATCH_WINDOW` of the first (at most `SWEEP_BATCH`), with one read and one update
    /// for all of them, instead of two statements and a commit per request (profiled
    /// under P1 of scripts/bench). Stops when `stop` turns true; what it has not pushed by
    /// then, the shutdown flush does.
    pub async fn run_dispatcher(
        self,
        mut committed: tokio::sync::mpsc::Receiver<Vec<Uuid>>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        const BATCH_WINDOW: Duration = Duration::from_millis(5);
        loop {
            let first = tokio::select! {
                ids = committed.recv() => ids,
                _ = stop.wait_for(|stopped| *stopped) => None,
            };
            let Some(mut batch) = first else {
                return;
            };
            let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
            while (batch.len() as u64) < SWEEP_BATCH {
                match tokio::time::timeout_at(deadline, committed.recv()).await {
                    Ok(Some(ids)) => batch.extend(ids),
                    Ok(None) | Err(_) => break,
                }
            }
            if let Err(e) = self.dispatch(&batch).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "outbox dispatch failed; the sweeper will retry"
                );
            }
        }
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
            .filter(outbox::Column::DeadAt.is_null())
            .filter(outbox::Column::Id.is_in(ids.iter().copied()))
            .order_by_asc(outbox::Column::CreatedAt)
            .all(&self.db)
            .await
            .context("outbox: select")?;
        self.push_rows(&rows, &self.db).await
    }

    /// `dispatch` on a task of its own; if the push fails, the sweeper pushes the
    /// committed rows later.
    pub fn dispatch_in_background(&self, ids: Vec<Uuid>) {
        if ids.is_empty() {
            return;
        }
        // With a dispatcher, the batch it gathers; without one (or once it has stopped,
        // when the flush takes over), a task of its own.
        let ids = match &self.dispatcher {
            Some(dispatcher) => match dispatcher.try_send(ids) {
                Ok(()) => return,
                // CAUTION: the rows are committed, so dropping their ids loses nothing:
                // the sweeper pushes them after `SWEEP_AFTER`. A dispatcher slower than
                // the commits (a slow queue) must not hold an ever longer backlog here.
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => return,
                Err(tokio::sync::mpsc::error::TrySendError::Closed(unsent)) => unsent,
            },
            None => ids,
        };
        let relay = self.clone();
        // CAUTION: Tokio's spawn, not actix's: a task on an HTTP worker's local set can be
        // dropped outside the runtime when the worker stops, and dropping a pooled
        // database connection there panics.
        tokio::spawn(async move {
            if let Err(e) = relay.dispatch(&ids).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "outbox dispatch failed; the sweeper will retry"
                );
            }
        });
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
        let queue = match self.queue.backend() {
            Backend::Redis(_) => self.queue.clone(),
            _ => Queue::connect(&db, None, &config.workers.queue_namespace).await?,
        };
        Ok(Self::new(db, queue, self.reconcile_after))
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

    /// Rows written but not yet pushed (nor set aside): the backlog the relay owes, and
    /// how long the oldest of them has waited.
    pub async fn backlog(&self) -> Result<Backlog, DbErr> {
        let (rows, oldest): (i64, Option<DateTime<Utc>>) = outbox::Entity::find()
            .select_only()
            .column_as(outbox::Column::Id.count(), "rows")
            .column_as(outbox::Column::CreatedAt.min(), "oldest")
            .filter(outbox::Column::DispatchedAt.is_null())
            .filter(outbox::Column::DeadAt.is_null())
            .into_tuple()
            .one(&self.db)
            .await?
            .unwrap_or((0, None));
        Ok(Backlog {
            rows: u64::try_from(rows).unwrap_or(0),
            oldest: oldest
                .and_then(|at| (Utc::now() - at).to_std().ok())
                .unwrap_or_default(),
        })
    }

    /// Runs `sweep` every second, and `reconcile` every `reconcile_every`, until `stop`
    /// turns true (or its sender is gone).
    pub async fn run_sweeper(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        let mut reconcile = tokio::time::interval(self.reconcile_every());
        loop {
            // Chosen first, done after: the stop's watch guard must not live across
            // the work's awaits.
            let reconciling = tokio::select! {
                _ = sweep.tick() => false,
                _ = reconcile.tick() => true,
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            if reconciling {
                match self.reconcile().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(rows = n, "outbox reconciler re-pushed notices a queue lost")
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "outbox reconcile failed; will retry"
                        )
                    }
                }
            } else {
                match self.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "outbox sweeper re-pushed rows"),
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "outbox sweep failed; will retry")
                    }
                }
            }
        }
    }

    async fn relay(&self, which: SimpleExpr, limit: u64) -> anyhow::Result<usize> {
        // CAUTION: only the kinds this release can push. A row of a kind it does not
        // know may be a newer release's, during a rolling upgrade: it is left for an
        // instance that knows it, rather than set aside for good.
        let select = outbox::Entity::find()
            .filter(outbox::Column::DispatchedAt.is_null())
            .filter(outbox::Column::DeadAt.is_null())
            .filter(outbox::Column::Kind.is_in(Queue::KINDS))
            .filter(which)
            .order_by_asc(outbox::Column::CreatedAt)
            .limit(limit);
        Ok(self.claimed(select, Work::Relay).await?.1)
    }

    /// Does `work` on the rows `select` finds, claimed for this instance alone where
    /// the database can say so. Returns how many rows it found, and what `work` did.
    async fn claimed(
        &self,
        select: Select<outbox::Entity>,
        work: Work,
    ) -> anyhow::Result<(usize, usize)> {
        match self.db.get_database_backend() {
            // CAUTION: several instances sweep and reconcile at once; SKIP LOCKED gives
            // each row to one of them.
            DatabaseBackend::Postgres => {
                let txn = self.db.begin().await.context("outbox: begin")?;
                let rows = select
                    .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                    .all(&txn)
                    .await
                    .context("outbox: select")?;
                let done = self.work(work, &rows, &txn).await;
                txn.commit().await.context("outbox: commit")?;
                Ok((rows.len(), done?))
            }
            // SQLite has one writer and the embedded queue writes through another
            // connection, so no transaction may span the push. A row pushed twice (a
            // sweep racing the request) costs a duplicate job, and both jobs are
            // idempotent.
            _ => {
                let rows = select.all(&self.db).await.context("outbox: select")?;
                Ok((rows.len(), self.work(work, &rows, &self.db).await?))
            }
        }
    }

    async fn work(
        &self,
        work: Work,
        rows: &[outbox::Model],
        db: &impl ConnectionTrait,
    ) -> anyhow::Result<usize> {
        match work {
            Work::Relay => self.push_rows(rows, db).await,
            Work::Reconcile { cutoff } => self.reconcile_rows(rows, cutoff, db).await,
        }
    }

    /// Pushes `rows` in order and marks the pushed ones dispatched in one update. At the
    /// first refusal the queue is taken to be down: that row's attempt is counted and the
    /// rest are left to the next sweep.
    async fn push_rows(
        &self,
        rows: &[outbox::Model],
        db: &impl ConnectionTrait,
    ) -> anyhow::Result<usize> {
        let mut pushed = Vec::with_capacity(rows.len());
        let mut failure = None;
        for row in rows {
            match self.push(row, db).await {
                Ok(Pushed::Yes) => pushed.push(row.id),
                Ok(Pushed::Dead) => {}
                Err(e) => {
                    failure = Some((row.id, e));
                    break;
                }
            }
        }
        if !pushed.is_empty() {
            mark_dispatched(db, outbox::Column::Id.is_in(pushed.iter().copied())).await?;
        }
        if let Some((id, e)) = failure {
            count_attempt(db, id).await?;
            return Err(e);
        }
        Ok(pushed.len())
    }

    /// Pushes one row. A row that can never be pushed (its payload does not decode as
    /// its kind) is set aside, logged and counted, so that it does not stop every later
    /// row behind it; a queue that refuses is an error.
    async fn push(&self, row: &outbox::Model, db: &impl ConnectionTrait) -> anyhow::Result<Pushed> {
        // The dispatch of a row joins the trace of the request that wrote it.
        let span = if kernel::trace::enabled() {
            let span = tracing::info_span!("outbox.dispatch", outbox_id = %row.id, kind = row.kind);
            kernel::trace::follow(&span, row.payload["traceparent"].as_str());
            span
        } else {
            tracing::Span::none()
        };
        let pushed = self
            .queue
            .push(&row.kind, row.payload.clone())
            .instrument(span)
            .await;
        match pushed {
            Ok(()) => Ok(Pushed::Yes),
            Err(e @ (QueueError::UnknownKind(_) | QueueError::Payload(_))) => {
                tracing::error!(outbox_id = %row.id, kind = row.kind, error = %e, "outbox row can never be pushed; set aside");
                metrics::counter!(kernel::metrics::OUTBOX_DEAD).increment(1);
                outbox::Entity::update_many()
                    .col_expr(outbox::Column::DeadAt, Expr::value(Utc::now()))
                    .filter(outbox::Column::Id.eq(row.id))
                    .exec(db)
                    .await
                    .context("outbox: set aside")?;
                Ok(Pushed::Dead)
            }
            Err(e @ QueueError::Push(_)) => {
                metrics::counter!(kernel::metrics::OUTBOX_PUSH_FAILURES).increment(1);
                Err(e).context("outbox: pushing to the queue")
            }
        }
    }
}

async fn mark_dispatched(db: &impl ConnectionTrait, which: SimpleExpr) -> anyhow::Result<()> {
    outbox::Entity::update_many()
        .col_expr(
            outbox::Column::Attempts,
            Expr::col(outbox::Column::Attempts).add(1),
        )
        .col_expr(outbox::Column::DispatchedAt, Expr::value(Utc::now()))
        .filter(which)
        .exec(db)
        .await
        .context("outbox: mark")?;
    Ok(())
}

async fn count_attempt(db: &impl ConnectionTrait, id: Uuid) -> anyhow::Result<()> {
    outbox::Entity::update_many()
        .col_expr(
            outbox::Column::Attempts,
            Expr::col(outbox::Column::Attempts).add(1),
        )
        .filter(outbox::Column::Id.eq(id))
        .filter(outbox::Column::DispatchedAt.is_null())
        .exec(db)
        .await
        .context("outbox: mark")?;
    Ok(())
}
