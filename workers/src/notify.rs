//! The `NotifyOwner` handler: one e-mail per rotation to the client's owner.
use chrono::SecondsFormat;
use entity::{client, sent_notification, user};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait as _};

use crate::jobs::NotifyOwner;
use crate::mail::{DeliveryError, Locale, Mailer, NoticeFields, Templates, compose};

/// What sending a notice needs, shared by every job.
pub struct Notifier {
    pub db: DatabaseConnection,
    pub mailer: Mailer,
    pub templates: Templates,
    pub mail_from: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Notified {
    Sent,
    /// A redelivered job whose notice already went out.
    AlreadySent,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Retrying cannot help (no such owner, an address the server refuses): dead-letter.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Database, SMTP or file system trouble: retry with backoff.
    #[error("transient: {0}")]
    Transient(String),
}

impl From<sea_orm::DbErr> for NotifyError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Transient(format!("database: {e}"))
    }
}

impl Notifier {
    pub fn message_id(job: &NotifyOwner) -> String {
        format!("<{}@mithril>", job.event_id)
    }

    #[tracing::instrument(skip_all, fields(event_id = %job.event_id, connection_id = %job.connection_id))]
    pub async fn notify(&self, job: &NotifyOwner) -> Result<Notified, NotifyError> {
        if sent_notification::Entity::find_by_id(job.event_id)
            .one(&self.db)
            .await?
            .is_some()
        {
            return Ok(Notified::AlreadySent);
        }
        let client = client::Entity::find_by_id(job.client_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| {
                NotifyError::Permanent(format!("client {} no longer exists", job.client_id))
            })?;
        let owner = user::Entity::find_by_id(client.user_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| {
                NotifyError::Permanent(format!(
                    "owner {} of client {} not found",
                    client.user_id, client.id
                ))
            })?;
        let consumer_name = client::Entity::find_by_id(job.consumer_id)
            .one(&self.db)
            .await?
            .map(|c| c.name)
            .unwrap_or_else(|| job.consumer_id.to_string());
        let actor = user::Entity::find_by_id(job.actor_user_id)
            .one(&self.db)
            .await?
            .map(|u| u.email)
            .unwrap_or_else(|| job.actor_user_id.to_string());
        let at = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let fields = NoticeFields {
            client_name: client.name,
            consumer_name,
            connection_id: job.connection_id.to_string(),
            consumer_id: job.consumer_id.to_string(),
            occurred_at: at(job.occurred_at),
            actor,
            request_id: job.request_id.clone(),
            secret_version: job.secret_version,
            grace_period: job.grace_period,
            grace_ends_at: at(job.occurred_at + chrono::Duration::seconds(job.grace_period)),
        };
        let rendered = self
            .templates
            .render(Locale::parse(&owner.locale), &fields)
            .map_err(|e| NotifyError::Permanent(format!("rendering the notice: {e}")))?;
        let message = compose(
            &self.mail_from,
            &owner.email,
            &Self::message_id(job),
            rendered,
        )
        .map_err(permanence)?;
        self.mailer.send(message).await.map_err(permanence)?;

        // Recorded after sending: a crash in between re-sends (same Message-ID) rather
        // than losing the notice.
        sent_notification::Entity::insert(sent_notification::ActiveModel {
            event_id: Set(job.event_id),
            sent_at: Set(chrono::Utc::now()),
        })
        .on_conflict(
            OnConflict::column(sent_notification::Column::EventId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(Notified::Sent)
    }
}

fn permanence(e: DeliveryError) -> NotifyError {
    match e {
        DeliveryError::Permanent(m) => NotifyError::Permanent(m),
        DeliveryError::Transient(m) => NotifyError::Transient(m),
    }
}
