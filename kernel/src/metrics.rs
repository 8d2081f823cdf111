//! Metrics both binaries record: their names, and the sink the reminder ticker writes to
//! (the API's recorder when the workers run in `mithril serve`).

/// Where reminder metrics go: the application's recorder in `mithril serve`, the
/// process-global one (`metrics` macros) elsewhere.
pub trait ReminderMetrics: Send + Sync {
    /// Secrets that expire within `within` (a threshold's label) from now.
    fn secrets_expiring(&self, within: &str, count: u64);
    /// Secrets past their expiry.
    fn secrets_expired(&self, count: u64);
    /// One reminder sent, of `threshold` (a label, or `expired`).
    fn reminder_sent(&self, threshold: &str);
    /// One pass of the reminder ticker ended (whether or not it found work): a ticker
    /// that stopped ticking shows as a counter that stopped.
    fn ticked(&self);
}

pub const SECRETS_EXPIRING: &str = "mithril_secrets_expiring";
pub const SECRETS_EXPIRED: &str = "mithril_secrets_expired";
pub const REMINDERS: &str = "mithril_reminders_total";
pub const REMINDER_TICKS: &str = "mithril_reminder_ticks_total";
