//! The reconciler: re-pushes notices that a queue forgot (dispatched, yet neither sent
//! nor dead after `reconcile_after`), and settles the rows whose notice is done.
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use entity::{outbox, sent_notification};
use kernel::jobs;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait as _, ConnectionTrait, EntityTrait as _, QueryFilter as _, QueryOrder as _,
    QuerySelect as _,
};
use uuid::Uuid;

use super::{OutboxRelay, Pushed, SWEEP_BATCH, Work, mark_dispatched};

/// The most batches one reconcile pass looks at (the rest wait for the next pass).
const RECONCILE_BATCHES: usize = 50;

/// The event a notice row's notice is for.
fn event_id(row: &outbox::Model) -> Option<Uuid> {
    row.payload
        .get("event_id")
        .and_then(|v| v.as_str())
        .and_then(|s| Uuid::parse_str(s).ok())
}

impl OutboxRelay {
    /// How often to look for lost notices: often enough to find one soon after its
    /// window ends, never more than once a minute or less than ten times a second.
    pub(super) fn reconcile_every(&self) -> Duration {
        (self.reconcile_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    /// Re-pushes notice rows (`notify_owner`, `notify_stale_secret`) dispatched more than `reconcile_after` ago whose
    /// notice is neither sent nor dead: the queue lost the job (Redis restarted without
    /// persistence, say). A row whose notice is done is settled and not looked at again.
    /// Safe on many instances: on PostgreSQL each row goes to one of them; elsewhere a
    /// row pushed twice costs a duplicate job, which the notice's claim makes harmless.
    pub async fn reconcile(&self) -> anyhow::Result<usize> {
        // A window past chrono's range (hundreds of millions of years) finds nothing.
        let Some(cutoff) = chrono::Duration::from_std(self.reconcile_after)
            .ok()
            .and_then(|window| Utc::now().checked_sub_signed(window))
        else {
            return Ok(0);
        };
        // CAUTION: every row a batch looks at leaves the scan (settled, pushed again, or,
        // still in a worker's hands, looked at again after another window), so the next
        // batch reaches further: notices that keep retrying cannot hold the head of the
        // scan and starve lost ones behind them.
        let mut pushed = 0;
        for _ in 0..RECONCILE_BATCHES {
            let select = outbox::Entity::find()
                .filter(outbox::Column::Kind.is_in([jobs::NOTIFY_OWNER, jobs::NOTIFY_STALE_SECRET]))
                .filter(outbox::Column::SettledAt.is_null())
                .filter(outbox::Column::DeadAt.is_null())
                .filter(outbox::Column::DispatchedAt.lt(cutoff))
                .order_by_asc(outbox::Column::DispatchedAt)
                .limit(SWEEP_BATCH);
            let (rows, done) = self.claimed(select, Work::Reconcile { cutoff }).await?;
            pushed += done;
            if rows < SWEEP_BATCH as usize {
                break;
            }
        }
        Ok(pushed)
    }

    pub(super) async fn reconcile_rows(
        &self,
        rows: &[outbox::Model],
        cutoff: DateTime<Utc>,
        db: &impl ConnectionTrait,
    ) -> anyhow::Result<usize> {
        let events: Vec<Uuid> = rows.iter().filter_map(event_id).collect();
        let notices: std::collections::HashMap<Uuid, sent_notification::Model> =
            sent_notification::Entity::find()
                .filter(sent_notification::Column::EventId.is_in(events))
                .all(db)
                .await
                .context("outbox: notices")?
                .into_iter()
                .map(|n| (n.event_id, n))
                .collect();
        let mut settled = Vec::new();
        let mut alive = Vec::new();
        let mut lost = Vec::new();
        for row in rows {
            match event_id(row).and_then(|id| notices.get(&id)) {
                Some(notice) if notice.state != sent_notification::state::SENDING => {
                    settled.push(row)
                }
                // A worker claimed it within the window: slow (retrying through an SMTP
                // outage, say), not lost. Each attempt claims again, so a notice whose
                // job is alive never looks lost. Looked at again after another window.
                Some(notice) if notice.sent_at > cutoff => alive.push(row.id),
                _ => lost.push(row),
            }
        }
        if !alive.is_empty() {
            // Not an attempt: only its place in the scan moves.
            outbox::Entity::update_many()
                .col_expr(outbox::Column::DispatchedAt, Expr::value(Utc::now()))
                .filter(outbox::Column::Id.is_in(alive))
                .exec(db)
                .await
                .context("outbox: look again later")?;
        }
        if !settled.is_empty() {
            outbox::Entity::update_many()
                .col_expr(outbox::Column::SettledAt, Expr::value(Utc::now()))
                .filter(outbox::Column::Id.is_in(settled.iter().map(|r| r.id)))
                .exec(db)
                .await
                .context("outbox: settle")?;
        }
        let mut pushed = 0;
        for row in lost {
            match self.push(row, db).await? {
                Pushed::Yes => {
                    // Dispatched again now: looked at once more after another window.
                    mark_dispatched(db, outbox::Column::Id.eq(row.id)).await?;
                    tracing::warn!(outbox_id = %row.id, "a notice the queue lost was pushed again");
                    pushed += 1;
                }
                Pushed::Dead => {}
            }
        }
        Ok(pushed)
    }
}
