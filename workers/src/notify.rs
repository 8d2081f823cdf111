//! The owner's notices: one e-mail per rotation (`NotifyOwner`) and per connection and
//! day a retired secret is still presented (`NotifyStaleSecret`), each claimed in
//! `sent_notifications` before it is sent so that it goes once (see `claim`).
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::sent_notification;
use entity::{client, secret_sighting, user};
use lettre::Message;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter,
};
use uuid::Uuid;

pub use crate::claim::NotifyError;
use crate::claim::{Claim, Claimable, Claims};
use crate::local_time::ShownTime;
use crate::mail::{
    DeliveryError, Locale, Mailer, NoticeFields, Outgoing, RenderedNotice, StaleFields, Templates,
};
use kernel::jobs::{NotifyOwner, NotifyStaleSecret};
use kernel::metrics::Registry;

/// How long ago `at` was (zero for a time in the future: clocks of two hosts disagree).
pub(crate) fn since(at: DateTime<Utc>) -> Duration {
    (Utc::now() - at).to_std().unwrap_or_default()
}

/// What sending a notice needs, shared by every job.
pub struct Notifier {
    pub db: DatabaseConnection,
    /// Where the delivery SLI goes.
    pub metrics: Registry,
    pub mailer: Mailer,
    pub templates: Templates,
    /// The sender, its automatic-mail headers and its DKIM signature.
    pub outgoing: Outgoing,
    /// How long a claim lasts before another worker may take the notice over.
    pub lease: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Notified {
    Sent,
    /// A redelivered job whose notice already went out, or was dead-lettered.
    AlreadyDone,
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
        Ok(self.outgoing.compose(&owner.email, message_id, rendered)?)
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
        let since = Some(job.occurred_at);
        self.send_once(
            job.event_id,
            ("rotation", since),
            self.compose_rotation(job),
        )
        .await
    }

    /// Sends the owner's notice that a retired secret of a connection is still
    /// presented: once, through the same claim as a rotation notice.
    #[tracing::instrument(skip_all, fields(event_id = %job.event_id, connection_id = %job.connection_id))]
    pub async fn notify_stale(&self, job: &NotifyStaleSecret) -> Result<Notified, NotifyError> {
        let since = job.occurred_at;
        self.send_once(job.event_id, ("stale", since), self.compose_stale(job))
            .await
    }

    /// Claims the notice `event_id`, then sends what `message` composes (composed only
    /// once the claim is this worker's), then records the outcome, and the time since
    /// the change it tells of (the SLI's `kind`, and the change's time where the job has it).
    async fn send_once(
        &self,
        event_id: Uuid,
        (kind, changed_at): (&'static str, Option<DateTime<Utc>>),
        message: impl Future<Output = Result<Message, NotifyError>>,
    ) -> Result<Notified, NotifyError> {
        let claims = self.claims();
        let notice = Notice(event_id);
        let lease = match claims.claim_when_free(&notice).await? {
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
        claims.send(&notice, lease, send).await?;
        if let Some(changed_at) = changed_at {
            self.metrics.notice_delivered(kind, since(changed_at));
        }
        Ok(Notified::Sent)
    }

    /// The notice will not be sent: its retries ran out (see `Claims::give_up`).
    pub async fn give_up(&self, event_id: Uuid) -> Result<(), NotifyError> {
        self.claims().give_up(&Notice(event_id)).await
    }

    /// The claims of this notifier's mail, with its lease.
    pub(crate) fn claims(&self) -> Claims<'_> {
        Claims {
            db: &self.db,
            lease: self.lease,
        }
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

/// A notice (rotation or stale secret), by its event: one row in `sent_notifications`.
struct Notice(Uuid);

impl Claimable for Notice {
    type Entity = sent_notification::Entity;
    const STATE: sent_notification::Column = sent_notification::Column::State;
    const LEASE_UNTIL: sent_notification::Column = sent_notification::Column::LeaseUntil;
    const SENT_AT: sent_notification::Column = sent_notification::Column::SentAt;
    const WHAT: &'static str = "notice";

    fn conflict() -> OnConflict {
        OnConflict::column(sent_notification::Column::EventId)
    }

    fn filter<Q: QueryFilter>(&self, query: Q) -> Q {
        query.filter(sent_notification::Column::EventId.eq(self.0))
    }

    fn row(
        &self,
        state: &str,
        lease_until: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> sent_notification::ActiveModel {
        sent_notification::ActiveModel {
            event_id: Set(self.0),
            sent_at: Set(at),
            state: Set(state.to_owned()),
            lease_until: Set(lease_until),
        }
    }

    fn standing(row: &sent_notification::Model) -> (&str, Option<DateTime<Utc>>) {
        (&row.state, row.lease_until)
    }

    /// The claim lapses now: the job's retry, here or on another worker, may take it at
    /// once.
    fn released(now: DateTime<Utc>) -> (&'static str, DateTime<Utc>) {
        (crate::claim::state::SENDING, now)
    }
}
