//! The claim protocol every mail the workers send goes through (rotation and stale-secret
//! notices, reminders): claim in the database, send, then settle; written once, keyed by
//! what is claimed (`Claimable`), so a fix to the protocol is made once.
//!
//! CAUTION: the claim comes before the mail and `sent` after the server accepted it. Two
//! workers handed the same job never both send; a worker that dies between claim and
//! `sent` leaves a claim that lapses after its lease, and a retry (or the reconciler's or
//! ticker's re-push) sends again with the same `Message-ID`, rather than the mail being
//! lost. A claim is told from a later one by another worker by the lease it wrote.
use std::time::Duration;

pub use crate::failure::NotifyError;
use chrono::{DateTime, SubsecRound as _, Utc};
use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait as _, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
};

/// How many times a job waits for another worker's live claim to end before it hands
/// the mail back to the queue's retries.
const HELD_WAITS: usize = 3;

/// How many times the outcome of a send is written when the database fails in between:
/// the mail is gone, and a lost `sent` would have it mailed again once the lease ends.
const RECORD_TRIES: u32 = 5;

/// The states a claim row goes through (the same strings in every claim table).
pub mod state {
    pub use entity::secret_reminder::state::{DEAD, QUEUED, SENDING, SENT, SKIPPED};
}

/// One thing sent once, and its row in a claim table: the row's key, and the columns
/// every claim table has (`state`, `lease_until`, `sent_at`).
pub trait Claimable: Send + Sync {
    type Entity: EntityTrait;
    const STATE: <Self::Entity as EntityTrait>::Column;
    const LEASE_UNTIL: <Self::Entity as EntityTrait>::Column;
    const SENT_AT: <Self::Entity as EntityTrait>::Column;
    /// What it is, for messages (`notice`, `reminder`).
    const WHAT: &'static str;

    /// The key columns, as an `ON CONFLICT` names them.
    fn conflict() -> OnConflict;
    /// `query` narrowed to this row.
    fn filter<Q: QueryFilter>(&self, query: Q) -> Q;
    /// A new row in `state`.
    fn row(
        &self,
        state: &str,
        lease_until: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> <Self::Entity as EntityTrait>::ActiveModel;
    /// A row's state and lease.
    fn standing(model: &<Self::Entity as EntityTrait>::Model) -> (&str, Option<DateTime<Utc>>);
    /// What a claim is handed back as after a failure worth retrying: its state and lease.
    fn released(now: DateTime<Utc>) -> (&'static str, DateTime<Utc>);
}

/// What a claim attempt found.
pub enum Claim {
    /// This worker holds it until this lease ends (which also tells its claim from a
    /// later one by another worker).
    Ours(DateTime<Utc>),
    /// Settled already (sent, dead, skipped).
    Done,
    /// Another worker holds a live claim.
    Held,
}

/// `length` after `from`, to the microsecond, as PostgreSQL keeps it: a claim's lease is
/// compared for equality later, to tell that claim from another worker's.
pub fn lease_until(from: DateTime<Utc>, length: Duration) -> DateTime<Utc> {
    // Checked: a length past chrono's range (the settings' bounds keep it far from
    // that) is a lease that never ends, not a panic.
    chrono::Duration::from_std(length)
        .ok()
        .and_then(|length| from.checked_add_signed(length))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
        .trunc_subsecs(6)
}

/// The row's own column, as an `ON CONFLICT ... WHERE` needs it named.
fn existing<K: Claimable>(column: <K::Entity as EntityTrait>::Column) -> Expr {
    Expr::col((K::Entity::default(), column))
}

/// `sending` or `queued` whose lease has lapsed: free to take.
pub fn lapsed<K: Claimable>(now: DateTime<Utc>) -> Expr {
    existing::<K>(K::STATE)
        .is_in([state::QUEUED, state::SENDING])
        .and(existing::<K>(K::LEASE_UNTIL).lt(now))
}

/// `queued` (pushed, not yet taken by a worker), or a lapsed lease.
pub fn open<K: Claimable>(now: DateTime<Utc>) -> Expr {
    existing::<K>(K::STATE)
        .eq(state::QUEUED)
        .or(lapsed::<K>(now))
}

/// Claims, renewals and outcomes of one claim table, with one lease length.
pub struct Claims<'a> {
    pub db: &'a DatabaseConnection,
    /// How long a claim lasts before another worker may take the mail over.
    pub lease: Duration,
}

impl Claims<'_> {
    /// Writes `key`'s row as `state` (until `lease_until`): inserted if absent, else only
    /// where `replaces` holds of the row there; one statement, so of two writers racing
    /// for the same row only one wins. Returns whether this one did.
    pub async fn take<K: Claimable>(
        &self,
        key: &K,
        state: &str,
        lease_until: Option<DateTime<Utc>>,
        replaces: Expr,
    ) -> Result<bool, DbErr>
    where
        <K::Entity as EntityTrait>::ActiveModel: ActiveModelTrait<Entity = K::Entity> + Send,
    {
        let written = K::Entity::insert(key.row(state, lease_until, Utc::now()))
            .on_conflict(
                K::conflict()
                    .update_columns([K::STATE, K::LEASE_UNTIL, K::SENT_AT])
                    .action_and_where(replaces)
                    .to_owned(),
            )
            .exec_without_returning(self.db)
            .await?;
        Ok(written == 1)
    }

    /// Claims `key`; while another worker's live claim holds it, waits for that lease to
    /// end and tries again (a held claim is retried when its lease ends, not on the
    /// job's exponential clock), a few times before giving the job back.
    pub async fn claim_when_free<K: Claimable>(&self, key: &K) -> Result<Claim, NotifyError>
    where
        <K::Entity as EntityTrait>::ActiveModel: ActiveModelTrait<Entity = K::Entity> + Send,
    {
        for _ in 0..HELD_WAITS {
            match self.claim(key).await? {
                Claim::Held => {
                    let until = self.standing(key).await?.and_then(|(_, until)| until);
                    let left = until
                        .and_then(|until| (until - Utc::now()).to_std().ok())
                        .unwrap_or_default();
                    // A renewed lease can be waited on again; never longer than one.
                    tokio::time::sleep(left.min(self.lease) + Duration::from_millis(50)).await;
                }
                other => return Ok(other),
            }
        }
        self.claim(key).await
    }

    /// A new `sending` claim, or one over a queued row or a lapsed claim.
    ///
    // CAUTION: a claim whose insert committed but whose answer was lost (a connection cut
    // mid-statement) is still this worker's: the lease it wrote says so. Without that
    // check the job's retry would find its own claim "held" and wait out the lease.
    pub async fn claim<K: Claimable>(&self, key: &K) -> Result<Claim, NotifyError>
    where
        <K::Entity as EntityTrait>::ActiveModel: ActiveModelTrait<Entity = K::Entity> + Send,
    {
        let now = Utc::now();
        let until = lease_until(now, self.lease);
        match self
            .take(key, state::SENDING, Some(until), open::<K>(now))
            .await
        {
            Ok(true) => Ok(Claim::Ours(until)),
            Ok(false) => Ok(match self.standing(key).await? {
                Some((s, _)) if s == state::SENDING || s == state::QUEUED => Claim::Held,
                Some(_) => Claim::Done,
                // Deleted in between: nothing this code does. Let a retry look again.
                None => Claim::Held,
            }),
            Err(e) => {
                let ours = self
                    .standing(key)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|(s, lease)| s == state::SENDING && lease == Some(until));
                if ours {
                    Ok(Claim::Ours(until))
                } else {
                    Err(e.into())
                }
            }
        }
    }

    /// The row's state and lease, if it has a row.
    async fn standing<K: Claimable>(
        &self,
        key: &K,
    ) -> Result<Option<(String, Option<DateTime<Utc>>)>, DbErr> {
        Ok(key
            .filter(K::Entity::find())
            .one(self.db)
            .await?
            .map(|row| {
                let (state, lease) = K::standing(&row);
                (state.to_owned(), lease)
            }))
    }

    /// Runs `send` while renewing the claim on `key` every third of the lease, so the
    /// claim lasts as long as the send and no longer than this worker; then records what
    /// came of it: `sent`, `dead` on a permanent failure, or handed back (`released`)
    /// on a transient one, the error returned for the job's retries.
    pub async fn send<K, F>(
        &self,
        key: &K,
        lease: DateTime<Utc>,
        send: F,
    ) -> Result<(), NotifyError>
    where
        K: Claimable,
        F: Future<Output = Result<(), NotifyError>>,
    {
        let (sent, leases) = self.renewing(key, lease, send).await;
        match sent {
            Ok(()) => self.record(key, &leases, state::SENT).await,
            Err(NotifyError::Permanent(reason)) => {
                self.record(key, &leases, state::DEAD).await?;
                Err(NotifyError::Permanent(reason))
            }
            Err(NotifyError::Transient(reason)) => {
                // The retry, here or on another worker, may claim it again at once.
                self.release(key, &leases).await?;
                Err(NotifyError::Transient(reason))
            }
        }
    }

    /// Runs `send` beside the renewals of `key`'s claim, never held up by them. Returns
    /// what `send` gave and the leases the claim may hold: the one this worker last
    /// knows it wrote, and any renewal whose answer was lost (it may have committed).
    /// Settling, releasing and renewing match any of them; no other worker can have
    /// written these exact instants.
    async fn renewing<K, T, F>(
        &self,
        key: &K,
        lease: DateTime<Utc>,
        send: F,
    ) -> (T, Vec<DateTime<Utc>>)
    where
        K: Claimable,
        F: Future<Output = T>,
    {
        let held = std::sync::Mutex::new(vec![lease]);
        let current = || held.lock().map(|l| l.clone()).unwrap_or_default();
        let every = (self.lease / 3).max(Duration::from_millis(100));
        let renewals = async {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                ticks.tick().await;
                let next = lease_until(Utc::now(), self.lease);
                match self.renew(key, current(), next).await {
                    Ok(true) => {
                        if let Ok(mut leases) = held.lock() {
                            *leases = vec![next];
                        }
                    }
                    Ok(false) => {
                        // Another worker's now, or settled: nothing left to renew.
                        tracing::warn!(what = K::WHAT, "a claim ended while its send went on");
                        return;
                    }
                    Err(e) => {
                        // It may have committed: the claim may hold `next` now.
                        if let Ok(mut leases) = held.lock() {
                            leases.push(next);
                        }
                        tracing::warn!(what = K::WHAT, error = %e, "renewing a claim failed");
                    }
                }
            }
        };
        tokio::pin!(send);
        tokio::pin!(renewals);
        let done = tokio::select! {
            done = &mut send => done,
            () = &mut renewals => send.await,
        };
        (done, current())
    }

    /// Moves this worker's live claim (holding one of `leases`) to end at `next`.
    async fn renew<K: Claimable>(
        &self,
        key: &K,
        leases: Vec<DateTime<Utc>>,
        next: DateTime<Utc>,
    ) -> Result<bool, DbErr> {
        let renewed = key
            .filter(K::Entity::update_many())
            .filter(K::STATE.eq(state::SENDING))
            .filter(K::LEASE_UNTIL.is_in(leases))
            .col_expr(K::LEASE_UNTIL, Expr::value(next))
            .exec(self.db)
            .await?
            .rows_affected;
        Ok(renewed == 1)
    }

    /// `settle`, tried again a few times while the database fails: the mail is already
    /// sent (or refused for good), and a lost outcome would have it sent again.
    async fn record<K: Claimable>(
        &self,
        key: &K,
        leases: &[DateTime<Utc>],
        outcome: &str,
    ) -> Result<(), NotifyError> {
        let mut pause = Duration::from_millis(200);
        for _ in 1..RECORD_TRIES {
            match self.settle(key, leases, outcome).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(
                    what = K::WHAT,
                    error = %e,
                    "recording the outcome failed; trying again"
                ),
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        Ok(self.settle(key, leases, outcome).await?)
    }

    /// Ends this worker's claim with `sent` or `dead`. Only its own claim: the lease it
    /// wrote tells it from another worker's after a takeover.
    async fn settle<K: Claimable>(
        &self,
        key: &K,
        leases: &[DateTime<Utc>],
        outcome: &str,
    ) -> Result<(), DbErr> {
        key.filter(K::Entity::update_many())
            .filter(K::LEASE_UNTIL.is_in(leases.iter().copied()))
            .col_expr(K::STATE, Expr::value(outcome))
            .col_expr(K::SENT_AT, Expr::value(Utc::now()))
            .col_expr(K::LEASE_UNTIL, Expr::value(Option::<DateTime<Utc>>::None))
            .exec(self.db)
            .await?;
        Ok(())
    }

    /// Hands this worker's claim back after a failure worth retrying, as `K::released`
    /// says (a notice's lease lapses now; a reminder is queued again).
    async fn release<K: Claimable>(
        &self,
        key: &K,
        leases: &[DateTime<Utc>],
    ) -> Result<(), NotifyError> {
        let (state, until) = K::released(Utc::now());
        key.filter(K::Entity::update_many())
            .filter(K::STATE.eq(state::SENDING))
            .filter(K::LEASE_UNTIL.is_in(leases.iter().copied()))
            .col_expr(K::STATE, Expr::value(state))
            .col_expr(K::LEASE_UNTIL, Expr::value(until))
            .exec(self.db)
            .await?;
        Ok(())
    }

    /// The mail will not be sent: its retries ran out. Marks it dead, so the reconciler
    /// and the ticker leave it alone, unless it was sent, or another worker holds a live
    /// claim on it (a duplicate job that may yet succeed).
    pub async fn give_up<K: Claimable>(&self, key: &K) -> Result<(), NotifyError>
    where
        <K::Entity as EntityTrait>::ActiveModel: ActiveModelTrait<Entity = K::Entity> + Send,
    {
        let live_claim = existing::<K>(K::STATE)
            .eq(state::SENDING)
            .and(existing::<K>(K::LEASE_UNTIL).gt(Utc::now()));
        let givable = existing::<K>(K::STATE)
            .ne(state::SENT)
            .and(live_claim.not());
        self.take(key, state::DEAD, None, givable).await?;
        Ok(())
    }
}
