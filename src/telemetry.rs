//! The API's metrics: HTTP requests, refreshes, verifies and the outbox, recorded into
//! the application's `kernel::metrics::Registry` (which the in-process job workers share,
//! so `/metrics` shows theirs too). Names, help and the registry's upkeep live there.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use kernel::metrics::{
    CREDENTIALS_CACHE, HTTP_REQUEST_DURATION, HTTP_REQUESTS, OUTBOX_BACKLOG, OUTBOX_BACKLOG_OLDEST,
    OUTBOX_PENDING, REDIS_LINK_UP, REMINDER_TICKS, REMINDERS, Registry, SECRET_REFRESHES,
    SECRETS_EXPIRED, SECRETS_EXPIRING, UPKEEP_PERIOD, VERIFY,
};
use metrics::Label;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Verifies since the last summary, by outcome (the log's per-minute line).
    verifies: Arc<[AtomicU64; 4]>,
}

/// The outcomes of a verify, in the order of `Metrics::take_verify_summary`.
pub const VERIFY_OUTCOMES: [&str; 4] = ["ok", "retired", "expired", "unknown"];

/// The registry's own recording (`counter`, `gauge`, `histogram`, `render`, the job
/// workers' metrics) is reached through `Metrics` as through the registry.
impl std::ops::Deref for Metrics {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        &self.registry
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // From zero, so `increase()` sees the first expired or retired secret presented.
        for outcome in VERIFY_OUTCOMES {
            registry.counter(VERIFY, &[Label::from_static_parts("outcome", outcome)], 0);
        }
        Self {
            registry,
            verifies: Arc::new(Default::default()),
        }
    }

    /// The registry itself, for the in-process job workers.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One answered HTTP request. `route` is the matched route pattern (never the raw
    /// path, which holds ids), or `unmatched`.
    ///
    /// CAUTION: every label has a bounded set of values, so a caller cannot grow the
    /// metrics without limit: methods outside HTTP's own are `other`, paths outside the
    /// route table `unmatched`.
    pub fn http_request(&self, method: &str, route: &str, status: u16, latency: Duration) {
        const KNOWN: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
        ];
        let method = KNOWN.into_iter().find(|m| *m == method).unwrap_or("other");
        let labels = [
            Label::from_static_parts("method", method),
            Label::new("route", route.to_owned()),
            Label::new("status", status.to_string()),
        ];
        self.counter(HTTP_REQUESTS, &labels, 1);
        self.histogram(HTTP_REQUEST_DURATION, &labels, latency.as_secs_f64());
    }

    /// One refresh call's outcome: `rotated`, or the `error.type` it answered with.
    pub fn refresh(&self, outcome: &'static str) {
        self.counter(
            SECRET_REFRESHES,
            &[Label::from_static_parts("outcome", outcome)],
            1,
        );
    }

    /// Which layer answered a verify: `local`, `unknown` (the negative cache), `redis`,
    /// or `store` (a miss of every cache, answered by the database).
    pub fn credential_lookup(&self, layer: &'static str) {
        self.counter(
            CREDENTIALS_CACHE,
            &[Label::from_static_parts("layer", layer)],
            1,
        );
    }

    /// One verify's outcome: `ok`, `retired`, `expired` or `unknown`.
    pub fn verified(&self, outcome: &'static str) {
        self.counter(VERIFY, &[Label::from_static_parts("outcome", outcome)], 1);
        if let Some(i) = VERIFY_OUTCOMES.iter().position(|o| *o == outcome) {
            self.verifies[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Logs, once a minute, how many verifies there were by outcome (their successes are
    /// not logged one by one at info), for as long as the recorder is in use.
    pub fn summarize_verifies(&self) -> impl Future<Output = ()> + Send + 'static {
        let metrics = self.clone();
        async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            tick.tick().await;
            loop {
                tick.tick().await;
                let [ok, retired, expired, unknown] = metrics.take_verify_summary();
                if ok + retired + expired + unknown > 0 {
                    tracing::info!(ok, retired, expired, unknown, "verifies in the last minute");
                }
            }
        }
    }

    /// Verifies since the last call, by outcome (`VERIFY_OUTCOMES`'s order).
    pub fn take_verify_summary(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.verifies[i].swap(0, Ordering::Relaxed))
    }

    /// Outbox rows written but not yet pushed to the job queue.
    pub fn outbox_pending(&self, rows: u64) {
        // Exact below 2^53 rows, far beyond any backlog.
        self.gauge(OUTBOX_PENDING, &[], rows as f64);
    }

    /// The outbox's undispatched rows and the age of the oldest, as the sweeper counts.
    pub fn outbox_backlog(&self, rows: u64, oldest: Duration) {
        self.gauge(OUTBOX_BACKLOG, &[], rows as f64);
        self.gauge(OUTBOX_BACKLOG_OLDEST, &[], oldest.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_recorders_do_not_share_counters() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.refresh("rotated");
        a.http_request("GET", "/health/live", 200, Duration::from_millis(3));
        let rendered = a.render();
        assert!(
            rendered.contains(r#"secret_refreshes_total{outcome="rotated"} 1"#),
            "{rendered}"
        );
        assert!(
            rendered.contains("http_request_duration_seconds_bucket{"),
            "{rendered}"
        );
        assert!(!b.render().contains("secret_refreshes_total"));
    }

    #[test]
    fn the_in_process_workers_reminder_metrics_are_rendered() {
        let metrics = Metrics::new();
        metrics.secrets_expiring("14d", 3);
        metrics.secrets_expired(1);
        metrics.reminder_sent("3d");
        let rendered = metrics.render();
        for line in [
            r#"mithril_secrets_expiring{within="14d"} 3"#,
            "mithril_secrets_expired 1",
            r#"mithril_reminders_total{threshold="3d"} 1"#,
        ] {
            assert!(rendered.contains(line), "{rendered}");
        }
    }

    #[test]
    fn the_global_recorder_feeds_the_installed_application() {
        let app = Metrics::new();
        assert!(app.install_global());
        assert!(
            !Metrics::new().install_global(),
            "only the first one counts"
        );
        metrics::counter!("jobs_total", "outcome" => "done").increment(2);
        assert!(app.render().contains(r#"jobs_total{outcome="done"} 2"#));
    }
}
