//! The job types. The API writes them as outbox rows in the rotation's transaction and
//! the relay pushes them to the queue; payloads carry ids and digests, never a secret.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::credentials::CredentialChange;

/// Outbox `kind` of each job type.
pub const NOTIFY_OWNER: &str = "notify_owner";
pub const INVALIDATE_CREDENTIALS: &str = "invalidate_credentials";
/// Pushed by the reminder ticker, not through the outbox (nothing commits with it).
pub const REMIND_OWNER: &str = "remind_owner";
pub const NOTIFY_STALE_SECRET: &str = "notify_stale_secret";

/// E-mail the client's owner that some system still presents a retired secret of one of
/// its connections: at most once a connection a day (the sightings' flush writes it
/// with the day's first sighting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyStaleSecret {
    /// The notice's claim key and `Message-ID`: one per connection and day.
    pub event_id: Uuid,
    pub connection_id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    /// The UTC day of the sightings it tells of.
    pub day: chrono::NaiveDate,
    /// When the flush that found the day's first sighting committed: the delivery SLI
    /// counts from it. Absent in jobs of releases before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
    /// The W3C `traceparent` of the span that wrote it (see `kernel::trace`), so the
    /// worker's spans join the request's trace. Absent when traces are not exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl NotifyStaleSecret {
    /// The one notice of a connection's stale-secret sightings on `day`.
    pub fn event_id(connection_id: Uuid, day: chrono::NaiveDate) -> Uuid {
        Uuid::new_v5(&connection_id, format!("stale-secret:{day}").as_bytes())
    }
}

/// E-mail the client's owner that a connection's secret was rotated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyOwner {
    /// The audit event; also the notice's `Message-ID` and its idempotency key.
    pub event_id: Uuid,
    pub connection_id: Uuid,
    pub client_id: Uuid,
    pub consumer_id: Uuid,
    pub actor_user_id: Uuid,
    pub request_id: String,
    pub secret_version: i64,
    pub grace_period: i64,
    pub occurred_at: DateTime<Utc>,
    /// When the previous secret stops verifying: the end of its grace period, or of its
    /// own lifetime if sooner; `occurred_at` when it stopped at once. Absent in jobs of
    /// releases before the lifetime policy (then `occurred_at + grace_period`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_ends_at: Option<DateTime<Utc>>,
    /// When the new secret expires under the lifetime policy; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_expires_at: Option<DateTime<Utc>>,
    /// The W3C `traceparent` of the span that wrote it (see `kernel::trace`), so the
    /// worker's spans join the request's trace. Absent when traces are not exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Bring every cache up to what a rotation, re-point or delete changed. Idempotent, and
/// safe in any order (see `CachedCredential::may_replace`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidateCredentials {
    pub event_id: Uuid,
    #[serde(rename = "invalidation")]
    pub change: CredentialChange,
    /// The W3C `traceparent` of the span that wrote it (see `kernel::trace`), so the
    /// worker's spans join the request's trace. Absent when traces are not exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// E-mail the client's owner that a connection's secret expires within `threshold`, or
/// (`threshold` = `expired`) has expired. One per (connection, secret version,
/// threshold): claimed in `secret_reminders` before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemindOwner {
    pub connection_id: Uuid,
    /// The secret this reminder is about: a rotation since makes it moot.
    pub secret_version: i64,
    /// A configured threshold's label (`14d`, `3d`, `1d`, ...) or `expired`.
    pub threshold: String,
    /// The expiry the ticker saw, for the logs; the handler reads the row again.
    pub expires_at: DateTime<Utc>,
    /// When the ticker pushed it: a reminder has no commit, so the delivery SLI counts
    /// from the push. Absent in jobs of releases before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<DateTime<Utc>>,
}

/// A job type: its kind names its outbox rows and its queue.
pub trait Job: Serialize + serde::de::DeserializeOwned + Send + Sync + Unpin + 'static {
    const KIND: &'static str;
}

impl Job for NotifyOwner {
    const KIND: &'static str = NOTIFY_OWNER;
}

impl Job for InvalidateCredentials {
    const KIND: &'static str = INVALIDATE_CREDENTIALS;
}

impl Job for RemindOwner {
    const KIND: &'static str = REMIND_OWNER;
}

impl Job for NotifyStaleSecret {
    const KIND: &'static str = NOTIFY_STALE_SECRET;
}
