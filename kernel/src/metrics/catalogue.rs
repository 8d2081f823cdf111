//! Every metric name either binary exposes, with its type and help text.

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
pub const SECRET_REFRESHES: &str = "secret_refreshes_total";
pub const OUTBOX_PENDING: &str = "mithril_outbox_pending";
pub const OUTBOX_BACKLOG: &str = "mithril_outbox_backlog";
pub const OUTBOX_BACKLOG_OLDEST: &str = "mithril_outbox_backlog_oldest_seconds";
pub const OUTBOX_DEAD: &str = "mithril_outbox_dead_total";
pub const OUTBOX_PUSH_FAILURES: &str = "mithril_outbox_push_failures_total";
pub const CREDENTIALS_CACHE: &str = "mithril_credentials_cache_total";
pub const VERIFY: &str = "mithril_verify_total";
/// 1 while the instance follows Redis's eviction channel, 0 while Redis is unreachable.
pub const REDIS_LINK_UP: &str = "mithril_redis_link_up";
pub const SECRETS_EXPIRING: &str = "mithril_secrets_expiring";
pub const SECRETS_EXPIRED: &str = "mithril_secrets_expired";
pub const REMINDERS: &str = "mithril_reminders_total";
pub const REMINDER_TICKS: &str = "mithril_reminder_ticks_total";
pub const JOBS: &str = "mithril_jobs_total";
pub const JOB_DURATION: &str = "mithril_job_duration_seconds";
pub const NOTICE_DELIVERY: &str = "mithril_notice_delivery_seconds";
pub const QUEUE_DEPTH: &str = "mithril_queue_depth";
pub const WORKER_READY: &str = "mithril_worker_ready";

/// What a metric is, for its `# TYPE` and the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric either binary exposes: name, type, help. The alert rules and the
/// dashboard in `deploy/` may name only these (`scripts/ops-check` checks).
pub const CATALOGUE: &[(&str, Kind, &str)] = &[
    (
        HTTP_REQUESTS,
        Kind::Counter,
        "HTTP requests answered, by method, route pattern and status.",
    ),
    (
        HTTP_REQUEST_DURATION,
        Kind::Histogram,
        "Time to answer an HTTP request, by method, route pattern and status.",
    ),
    (
        SECRET_REFRESHES,
        Kind::Counter,
        "refresh_secret calls by outcome: rotated, replayed, or the error type answered.",
    ),
    (
        OUTBOX_PENDING,
        Kind::Gauge,
        "Outbox rows written but not yet pushed to the job queue, as this instance's relay last saw.",
    ),
    (
        OUTBOX_BACKLOG,
        Kind::Gauge,
        "Undispatched outbox rows, as the sweeper last counted.",
    ),
    (
        OUTBOX_BACKLOG_OLDEST,
        Kind::Gauge,
        "Age of the oldest undispatched outbox row (0 when none), as the sweeper last counted.",
    ),
    (
        OUTBOX_DEAD,
        Kind::Counter,
        "Outbox rows that can never be pushed (payload of an unknown kind or shape).",
    ),
    (
        OUTBOX_PUSH_FAILURES,
        Kind::Counter,
        "Pushes of outbox rows the queue refused (retried by the sweeper).",
    ),
    (
        CREDENTIALS_CACHE,
        Kind::Counter,
        "Verifies by the layer that answered: local, unknown (negative cache), redis, store.",
    ),
    (
        VERIFY,
        Kind::Counter,
        "Verifies by outcome: ok, retired (a retired secret presented), expired, unknown.",
    ),
    (
        REDIS_LINK_UP,
        Kind::Gauge,
        "1 while the instance follows Redis's eviction channel, 0 while Redis is unreachable.",
    ),
    (
        SECRETS_EXPIRING,
        Kind::Gauge,
        "Current secrets expiring within each reminder threshold, as the reminder ticker last counted.",
    ),
    (
        SECRETS_EXPIRED,
        Kind::Gauge,
        "Current secrets past their expiry, as the reminder ticker last counted.",
    ),
    (
        REMINDERS,
        Kind::Counter,
        "Expiry reminders e-mailed, by threshold.",
    ),
    (
        REMINDER_TICKS,
        Kind::Counter,
        "Passes of the reminder ticker.",
    ),
    (
        JOBS,
        Kind::Counter,
        "Job attempts by job kind and outcome: ok, moot, duplicate, retry, dead.",
    ),
    (
        JOB_DURATION,
        Kind::Histogram,
        "Time one job attempt took, by job kind and outcome.",
    ),
    (
        NOTICE_DELIVERY,
        Kind::Histogram,
        "Time from the change a notice tells of (its commit; a reminder's push) to the mail server's acceptance, by kind: rotation, reminder, stale.",
    ),
    (
        QUEUE_DEPTH,
        Kind::Gauge,
        "Jobs waiting in the queue, by job kind.",
    ),
    (
        WORKER_READY,
        Kind::Gauge,
        "1 while this process's job workers reach their database and queue, else 0.",
    ),
];
