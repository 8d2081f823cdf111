//! The `NotifyOwner` handler: one e-mail per rotation to the client's owner, claimed in
//! the database before it is sent so that it goes once.
use std::time::Duration;

use chrono::{DateTime, SubsecRound as _, Utc};
use entity::sent_notification::{self, state};
use entity::{client, secret_sighting, user};
use lettre::Message;
use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter as _,
};
use uuid::Uuid;

use crate::jobs::{NotifyOwner, NotifyStaleSecret};
use crate::local_time::ShownTime;
use crate::mail::{
    DeliveryError, Locale, Mailer, NoticeFields, RenderedNotice, StaleFields, Templates, compose,
};

/// How long a worker's claim on a notice lasts by default: a little longer than an SMTP
/// command may take (the transport gives up after 10 s), and renewed every third of it
/// while the send goes on, so a claim outlives its send but not its worker: a notice
/// whose worker died mid-send goes out again within seconds of the lease's end.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How many times a job waits for another worker's live claim to end before it hands
/// the notice back to the queue's retries.
const HELD_WAITS: usize = 3;

/// How many times the outcome of a send is written when the database fails in between:
/// the mail is gone, and a lost `sent` would have the notice mailed again once the lease
/// ends.
const RECORD_TRIES: u32 = 5;

/// What sending a notice needs, shared by every job.
pub struct Notifier {
    pub db: DatabaseConnection,
    pub mailer: Mailer,
    pub templates: Templates,
    pub mail_from: String,
    /// How long a claim lasts before another worker may take the notice over.
    pub lease: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Notified {
    Sent,
    /// A redelivered job whose notice already went out, or was dead-lettered.
    AlreadyDone,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Retrying cannot help (no such owner, an address the server refuses): dead-letter.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Database, SMTP or file system trouble, or another worker holds the claim: retry
    /// with backoff.
    #[error("transient: {0}")]
    Transient(String),
}

impl From<sea_orm::DbErr> for NotifyError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Transient(format!("database: {e}"))
    }
}

/// What a claim attempt (on a notice or a reminder) found.
pub(crate) enum Claim {
    /// This worker holds it until this lease ends (which also tells its claim from a
    /// later one by another worker).
    Ours(DateTime<Utc>),
    /// Sent or dead-lettered already.
    Done,
    /// Another worker holds a live claim.
    Held,
}

/// `length` after `from`, to the microsecond, as PostgreSQL keeps it: a claim's lease is
/// compared for equality later, to tell that claim from another worker's.
pub(crate) fn lease_until(from: DateTime<Utc>, length: Duration) -> DateTime<Utc> {
    // Checked: a length past chrono's range (the settings' bounds keep it far from
    // that) is a lease that never ends, not a panic.
    chrono::Duration::from_std(length)
        .ok()
        .and_then(|length| from.checked_add_signed(length))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
        .trunc_subsecs(6)
}

/// The leases a claim may hold now: the one this worker last knows it wrote, and any
/// renewal whose answer was lost (it may have committed). Settling, releasing and
/// renewing match any of them; no other worker can have written these exact instants.
type Leases = std::sync::Mutex<Vec<DateTime<Utc>>>;

/// One renewal: moves a claim holding one of the leases to the new end; whether it did.
pub(crate) type Renewal =
    std::pin::Pin<Box<dyn Future<Output = Result<bool, sea_orm::DbErr>> + Send>>;

/// The leases `held` names now, for a statement's filter.
fn current(held: &Leases) -> Vec<DateTime<Utc>> {
    held.lock().map(|l| l.clone()).unwrap_or_default()
}

/// Runs `send` while renewing the claim every third of `length`, so the claim lasts as
/// long as the send and no longer than this worker. `renew(leases, next)` moves a claim
/// holding one of `leases` to `next` and says whether it did. The renewals run beside the
/// send, never holding it up. Returns what `send` gave and the leases the claim may hold.
pub(crate) async fn renewing<T, R, F>(
    length: Duration,
    lease: DateTime<Utc>,
    renew: R,
    send: F,
) -> (T, Vec<DateTime<Utc>>)
where
    F: Future<Output = T>,
    R: Fn(Vec<DateTime<Utc>>, DateTime<Utc>) -> Renewal,
{
    let held: Leases = std::sync::Mutex::new(vec![lease]);
    let every = (length / 3).max(Duration::from_millis(100));
    let renewals = async {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            ticks.tick().await;
            let next = lease_until(Utc::now(), length);
            match renew(current(&held), next).await {
                Ok(true) => {
                    if let Ok(mut leases) = held.lock() {
                        *leases = vec![next];
                    }
                }
                Ok(false) => {
                    // Another worker's now, or settled: nothing left to renew.
                    tracing::warn!("a claim ended while its send went on");
                    return;
                }
                Err(e) => {
                    // It may have committed: the claim may hold `next` now.
                    if let Ok(mut leases) = held.lock() {
                        leases.push(next);
                    }
                    tracing::warn!(error = %e, "renewing a claim failed");
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
    (done, current(&held))
}

impl From<DeliveryError> for NotifyError {
    fn from(e: DeliveryError) -> Self {
        match e {
            DeliveryError::Permanent(m) => Self::Permanent(m),
            DeliveryError::Transient(m) => Self::Transient(m),
        }
    }
}

impl Notifier {
    /// A notice's `Message-ID`: its event's, so a notice sent again carries the same.
    pub fn message_id(event_id: Uuid) -> String {
        format!("<{event_id}@mithril>")
    }

    /// A message to `owner`: what `render` makes of the templates in the owner's
    /// language (`what` names it in errors), under `message_id`. A message that cannot
    /// be rendered or addressed never will be: permanent.
    pub(crate) fn message(
        &self,
        owner: &user::Model,
        message_id: &str,
        what: &str,
        render: impl FnOnce(&Templates, Locale) -> Result<RenderedNotice, minijinja::Error>,
    ) -> Result<Message, NotifyError> {
        let rendered = render(&self.templates, Locale::parse(&owner.locale))
            .map_err(|e| NotifyError::Permanent(format!("rendering the {what}: {e}")))?;
        Ok(compose(
            &self.mail_from,
            &owner.email,
            message_id,
            rendered,
        )?)
    }

    /// Sends the notice of `job` unless it is sent, dead, or being sent by another worker.
    ///
    /// CAUTION: the claim comes before the mail and `sent` after the server accepted it.
    /// Two workers handed the same job never both send; a worker that dies between
    /// claim and `sent` leaves a claim that lapses after `lease`, and the retry (or the
    /// reconciler's re-push) sends again with the same `Message-ID`, rather than the
    /// notice being lost.
    #[tracing::instrument(skip_all, fields(event_id = %job.event_id, connection_id = %job.connection_id))]
    pub async fn notify(&self, job: &NotifyOwner) -> Result<Notified, NotifyError> {
        self.send_once(job.event_id, self.compose_rotation(job))
            .await
    }

    /// Sends the owner's notice that a retired secret of a connection is still
    /// presented: once, through the same claim as a rotation notice.
    #[tracing::instrument(skip_all, fields(event_id = %job.event_id, connection_id = %job.connection_id))]
    pub async fn notify_stale(&self, job: &NotifyStaleSecret) -> Result<Notified, NotifyError> {
        self.send_once(job.event_id, self.compose_stale(job)).await
    }

    /// Claims the notice `event_id`, then sends what `message` composes (composed only
    /// once the claim is this worker's), then records the outcome.
    async fn send_once(
        &self,
        event_id: Uuid,
        message: impl Future<Output = Result<Message, NotifyError>>,
    ) -> Result<Notified, NotifyError> {
        let lease = match self.claim_when_free(event_id).await? {
            Claim::Ours(lease) => lease,
            Claim::Done => return Ok(Notified::AlreadyDone),
            Claim::Held => {
                return Err(NotifyError::Transient(
                    "another worker is sending this notice".to_owned(),
                ));
            }
        };
        let send = async {
            match message.await {
                Ok(message) => self.mailer.send(message).await.map_err(NotifyError::from),
                Err(e) => Err(e),
            }
        };
        let (sent, lease) = renewing(self.lease, lease, self.renewer(event_id), send).await;
        match sent {
            Ok(()) => {
                self.record(event_id, &lease, state::SENT).await?;
                Ok(Notified::Sent)
            }
            Err(NotifyError::Permanent(reason)) => {
                self.record(event_id, &lease, state::DEAD).await?;
                Err(NotifyError::Permanent(reason))
            }
            Err(NotifyError::Transient(reason)) => {
                // The retry, here or on another worker, may claim it again at once.
                self.release(event_id, &lease).await?;
                Err(NotifyError::Transient(reason))
            }
        }
    }

    /// The notice will not be sent: its retries ran out. Marks it dead, so the
    /// reconciler leaves it alone, unless it was sent, or another worker holds a live
    /// claim on it (a duplicate job that may yet succeed).
    pub async fn give_up(&self, event_id: Uuid) -> Result<(), NotifyError> {
        let now = Utc::now();
        sent_notification::Entity::insert(sent_notification::ActiveModel {
            event_id: Set(event_id),
            sent_at: Set(now),
            state: Set(state::DEAD.to_owned()),
            lease_until: Set(None),
        })
        .on_conflict(
            OnConflict::column(sent_notification::Column::EventId)
                .update_columns([
                    sent_notification::Column::State,
                    sent_notification::Column::SentAt,
                    sent_notification::Column::LeaseUntil,
                ])
                .action_and_where({
                    let existing = |c| Expr::col((sent_notification::Entity, c));
                    let live_claim = existing(sent_notification::Column::State)
                        .eq(state::SENDING)
                        .and(existing(sent_notification::Column::LeaseUntil).gt(now));
                    existing(sent_notification::Column::State)
                        .ne(state::SENT)
                        .and(live_claim.not())
                })
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// Claims the notice; while another worker's live claim holds it, waits for that
    /// lease to end and tries again (a held claim is retried when its lease ends, not on
    /// the job's exponential clock), a few times before giving the job back.
    async fn claim_when_free(&self, event_id: Uuid) -> Result<Claim, NotifyError> {
        for _ in 0..HELD_WAITS {
            match self.claim(event_id).await? {
                Claim::Held => {
                    let until = sent_notification::Entity::find_by_id(event_id)
                        .one(&self.db)
                        .await?
                        .and_then(|row| row.lease_until);
                    let left = until
                        .and_then(|until| (until - Utc::now()).to_std().ok())
                        .unwrap_or_default();
                    // A renewed lease can be waited on again; never longer than one.
                    tokio::time::sleep(left.min(self.lease) + Duration::from_millis(50)).await;
                }
                other => return Ok(other),
            }
        }
        self.claim(event_id).await
    }

    /// Moves this worker's live claim (holding one of `leases`) to end at `next`.
    fn renewer(&self, event_id: Uuid) -> impl Fn(Vec<DateTime<Utc>>, DateTime<Utc>) -> Renewal {
        let db = self.db.clone();
        move |leases, next| {
            let db = db.clone();
            Box::pin(async move {
                let renewed = sent_notification::Entity::update_many()
                    .col_expr(sent_notification::Column::LeaseUntil, Expr::value(next))
                    .filter(sent_notification::Column::EventId.eq(event_id))
                    .filter(sent_notification::Column::State.eq(state::SENDING))
                    .filter(sent_notification::Column::LeaseUntil.is_in(leases))
                    .exec(&db)
                    .await?
                    .rows_affected;
                Ok(renewed == 1)
            })
        }
    }

    /// `settle`, tried again a few times while the database fails: the mail is already
    /// sent (or refused for good), and a lost outcome would have it sent again.
    async fn record(
        &self,
        event_id: Uuid,
        lease: &[DateTime<Utc>],
        outcome: &str,
    ) -> Result<(), NotifyError> {
        let mut pause = Duration::from_millis(200);
        for _ in 1..RECORD_TRIES {
            match self.settle(event_id, lease, outcome).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(%event_id, error = %e, "recording the outcome failed; trying again")
                }
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        self.settle(event_id, lease, outcome).await
    }

    /// Inserts a `sending` claim, or takes over one whose lease lapsed; one statement,
    /// so two workers cannot both win.
    ///
    // CAUTION: a claim whose insert committed but whose answer was lost (a connection cut
    // mid-statement) is still this worker's: the lease it wrote says so. Without that
    // check the job's retry would find its own claim "held" and wait out the lease.
    async fn claim(&self, event_id: Uuid) -> Result<Claim, NotifyError> {
        let now = Utc::now();
        let lease_until = lease_until(now, self.lease);
        match self.insert_claim(event_id, now, lease_until).await {
            Ok(claim) => Ok(claim),
            Err(e) => {
                let ours = sent_notification::Entity::find_by_id(event_id)
                    .one(&self.db)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|row| {
                        row.state == state::SENDING && row.lease_until == Some(lease_until)
                    });
                if ours {
                    Ok(Claim::Ours(lease_until))
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn insert_claim(
        &self,
        event_id: Uuid,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Claim, NotifyError> {
        let claimed = sent_notification::Entity::insert(sent_notification::ActiveModel {
            event_id: Set(event_id),
            sent_at: Set(now),
            state: Set(state::SENDING.to_owned()),
            lease_until: Set(Some(lease_until)),
        })
        .on_conflict(
            OnConflict::column(sent_notification::Column::EventId)
                .update_columns([
                    sent_notification::Column::SentAt,
                    sent_notification::Column::LeaseUntil,
                ])
                .action_and_where(
                    Expr::col((sent_notification::Entity, sent_notification::Column::State))
                        .eq(state::SENDING)
                        .and(
                            Expr::col((
                                sent_notification::Entity,
                                sent_notification::Column::LeaseUntil,
                            ))
                            .lt(now),
                        ),
                )
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        if claimed == 1 {
            return Ok(Claim::Ours(lease_until));
        }
        let current = sent_notification::Entity::find_by_id(event_id)
            .one(&self.db)
            .await?;
        Ok(match current.map(|row| row.state) {
            Some(s) if s == state::SENDING => Claim::Held,
            Some(_) => Claim::Done,
            // Deleted in between: nothing this code does. Let a retry look again.
            None => Claim::Held,
        })
    }

    /// Ends this worker's claim with `sent` or `dead`. Only its own claim: the lease it
    /// wrote tells it from another worker's after a takeover.
    async fn settle(
        &self,
        event_id: Uuid,
        lease: &[DateTime<Utc>],
        outcome: &str,
    ) -> Result<(), NotifyError> {
        sent_notification::Entity::update_many()
            .col_expr(sent_notification::Column::State, Expr::value(outcome))
            .col_expr(sent_notification::Column::SentAt, Expr::value(Utc::now()))
            .col_expr(
                sent_notification::Column::LeaseUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(sent_notification::Column::EventId.eq(event_id))
            .filter(sent_notification::Column::LeaseUntil.is_in(lease.iter().copied()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Lets this worker's claim lapse now, after a failure worth retrying.
    async fn release(&self, event_id: Uuid, lease: &[DateTime<Utc>]) -> Result<(), NotifyError> {
        sent_notification::Entity::update_many()
            .col_expr(
                sent_notification::Column::LeaseUntil,
                Expr::value(Utc::now()),
            )
            .filter(sent_notification::Column::EventId.eq(event_id))
            .filter(sent_notification::Column::State.eq(state::SENDING))
            .filter(sent_notification::Column::LeaseUntil.is_in(lease.iter().copied()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Who a message about a connection of `client_id` to `consumer_id` names and goes
    /// to: the client, its owner, and the consumer's name (its id, once it is gone). No
    /// client or owner: the message can never go.
    pub(crate) async fn parties(
        &self,
        client_id: Uuid,
        consumer_id: Uuid,
    ) -> Result<(client::Model, user::Model, String), NotifyError> {
        // The client and its owner in one round trip.
        let (client, owner) = client::Entity::find_by_id(client_id)
            .find_also_related(user::Entity)
            .one(&self.db)
            .await?
            .ok_or_else(|| {
                NotifyError::Permanent(format!("client {client_id} no longer exists"))
            })?;
        let owner = owner.ok_or_else(|| {
            NotifyError::Permanent(format!(
                "owner {} of client {} not found",
                client.user_id, client.id
            ))
        })?;
        let consumer_name = client::Entity::find_by_id(consumer_id)
            .one(&self.db)
            .await?
            .map(|c| c.name)
            .unwrap_or_else(|| consumer_id.to_string());
        Ok((client, owner, consumer_name))
    }

    async fn compose_rotation(&self, job: &NotifyOwner) -> Result<Message, NotifyError> {
        let (client, owner, consumer_name) = self.parties(job.client_id, job.consumer_id).await?;
        let actor = user::Entity::find_by_id(job.actor_user_id)
            .one(&self.db)
            .await?
            .map(|u| u.email)
            .unwrap_or_else(|| job.actor_user_id.to_string());
        // Jobs of releases before the lifetime policy say only how long the grace was.
        let previous_ends_at = job.previous_secret_ends_at.unwrap_or_else(|| {
            chrono::Duration::try_seconds(job.grace_period)
                .and_then(|grace| job.occurred_at.checked_add_signed(grace))
                .unwrap_or(job.occurred_at)
        });
        let fields = NoticeFields {
            client_name: client.name,
            consumer_name,
            connection_id: job.connection_id.to_string(),
            consumer_id: job.consumer_id.to_string(),
            occurred_at: ShownTime::of(job.occurred_at),
            actor,
            request_id: job.request_id.clone(),
            secret_version: job.secret_version,
            previous_ends_at: (previous_ends_at > job.occurred_at)
                .then(|| ShownTime::of(previous_ends_at)),
            secret_expires_at: job.secret_expires_at.map(ShownTime::of),
        };
        let message_id = Self::message_id(job.event_id);
        self.message(&owner, &message_id, "notice", |templates, locale| {
            templates.render(locale, &fields)
        })
    }

    /// The stale-secret notice, with the day's sightings as they stand when it goes.
    async fn compose_stale(&self, job: &NotifyStaleSecret) -> Result<Message, NotifyError> {
        let sighting = secret_sighting::Entity::find()
            .filter(secret_sighting::Column::ConnectionId.eq(job.connection_id))
            .filter(secret_sighting::Column::Day.eq(job.day))
            .filter(secret_sighting::Column::Reason.eq(secret_sighting::reason::RETIRED))
            .one(&self.db)
            .await?
            .ok_or_else(|| {
                NotifyError::Permanent(format!(
                    "no sighting of connection {} on {}",
                    job.connection_id, job.day
                ))
            })?;
        let (client, owner, consumer_name) = self.parties(job.client_id, job.consumer_id).await?;
        let fields = StaleFields {
            client_name: client.name,
            consumer_name,
            connection_id: job.connection_id.to_string(),
            consumer_id: job.consumer_id.to_string(),
            count: sighting.count,
            first_seen_at: ShownTime::of(sighting.first_seen_at),
            last_seen_at: ShownTime::of(sighting.last_seen_at),
            last_address: sighting.last_address,
        };
        let message_id = Self::message_id(job.event_id);
        self.message(&owner, &message_id, "notice", |templates, locale| {
            templates.render_stale(locale, &fields)
        })
    }
}
