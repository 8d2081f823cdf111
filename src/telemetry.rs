//! Metrics in Prometheus format, one recorder per `Application`.
//!
//! The `metrics` crate's macros write to one process-global recorder, which would make
//! every application in a process (the test suite spawns dozens) share its counters.
//! Instead each `Application` owns a `Metrics`: a Prometheus recorder that handlers call
//! through the `metrics::Recorder` trait directly, with no global state. Code that wants
//! a new metric adds a method here, so names and labels stay in one place. `mithril serve`
//! also installs its recorder as the global one (`Metrics::install_global`), for code that
//! can only reach the `metrics` macros.
//!
//! CAUTION: a Prometheus histogram keeps each sample until upkeep folds it into the
//! buckets, and only a scrape or `run_upkeep` does that. An instance nobody scrapes (the
//! embedded default, a replica Prometheus has not found yet, an outage of Prometheus)
//! would grow by every request's sample: so upkeep runs every `UPKEEP_EVERY_SAMPLES`
//! samples on the recording path (a bound that holds at any rate), and on a timer
//! (`Metrics::keep_up`) for the last few between quiet periods.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use kernel::metrics::ReminderMetrics;
use metrics::{Key, Label, Level, Metadata, Recorder as _};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
pub const SECRET_REFRESHES: &str = "secret_refreshes_total";
pub const OUTBOX_PENDING: &str = "mithril_outbox_pending";
pub const CREDENTIALS_CACHE: &str = "mithril_credentials_cache_total";
pub const VERIFY: &str = "mithril_verify_total";
/// 1 while the instance follows Redis's eviction channel, 0 while Redis is unreachable.
pub const REDIS_LINK_UP: &str = "mithril_redis_link_up";
/// The lifetime policy's gauges and counter, named where `mithril-workers` records them.
pub use kernel::metrics::{REMINDER_TICKS, REMINDERS, SECRETS_EXPIRED, SECRETS_EXPIRING};

/// Latency buckets, in seconds, for request histograms.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Histogram samples recorded between two upkeeps at most: 8 bytes each, so a few
/// dozen KiB held whatever the traffic, and an upkeep (a drain of every histogram, some
/// microseconds) every few thousand requests.
const UPKEEP_EVERY_SAMPLES: u64 = 4096;

/// How often `keep_up` folds samples in when traffic is too light to reach
/// `UPKEEP_EVERY_SAMPLES`: the exporter's own default upkeep period.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// Verifies since the last summary, by outcome (the log's per-minute line).
    verifies: Arc<[AtomicU64; 4]>,
    /// Histogram samples recorded since the last upkeep.
    unkept: Arc<AtomicU64>,
}

/// The outcomes of a verify, in the order of `Metrics::take_verify_summary`.
pub const VERIFY_OUTCOMES: [&str; 4] = ["ok", "retired", "expired", "unknown"];

impl Metrics {
    pub fn new() -> Self {
        // CAUTION: without buckets the exporter renders summaries, not histograms.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            // Only an empty bucket list is refused; summaries then, rather than no metrics.
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Self {
            recorder: Arc::new(recorder),
            handle,
            verifies: Arc::new(Default::default()),
            unkept: Arc::new(AtomicU64::new(0)),
        }
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

    /// Adds `value` to the counter `name` with `labels`.
    pub fn counter(&self, name: &'static str, labels: &[Label], value: u64) {
        self.recorder
            .register_counter(&Key::from_parts(name, labels.to_vec()), &METADATA)
            .increment(value);
    }

    /// Records one sample of the histogram `name` with `labels`, and folds the samples
    /// held so far into their buckets every `UPKEEP_EVERY_SAMPLES`.
    pub fn histogram(&self, name: &'static str, labels: &[Label], value: f64) {
        self.recorder
            .register_histogram(&Key::from_parts(name, labels.to_vec()), &METADATA)
            .record(value);
        if self.unkept.fetch_add(1, Ordering::Relaxed) + 1 >= UPKEEP_EVERY_SAMPLES {
            self.upkeep();
        }
    }

    /// Folds the histogram samples held so far into their buckets, as a scrape would.
    pub fn upkeep(&self) {
        self.unkept.store(0, Ordering::Relaxed);
        self.handle.run_upkeep();
    }

    /// Runs `upkeep` every `UPKEEP_PERIOD` for as long as this recorder is in use, so the
    /// samples of a quiet spell are folded in too. Ends once every clone is dropped.
    pub fn keep_up(&self) -> impl Future<Output = ()> + Send + 'static {
        let recorder: Weak<PrometheusRecorder> = Arc::downgrade(&self.recorder);
        let unkept = Arc::downgrade(&self.unkept);
        async move {
            let mut tick = tokio::time::interval(UPKEEP_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(recorder), Some(unkept)) = (recorder.upgrade(), unkept.upgrade()) else {
                    return;
                };
                unkept.store(0, Ordering::Relaxed);
                recorder.handle().run_upkeep();
            }
        }
    }

    /// Sets the gauge `name` with `labels` (queue depth and the like).
    pub fn gauge(&self, name: &'static str, labels: &[Label], value: f64) {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels.to_vec()), &METADATA)
            .set(value);
    }

    /// Makes this recorder the process-global one too, so the `metrics::counter!` family,
    /// used where no `AppState` is at hand (the in-process job workers), lands at
    /// `/metrics`. The facade keeps the first recorder set in a process: `mithril serve`
    /// calls this once; tests never do, so their applications stay apart. Returns whether
    /// this call installed it.
    pub fn install_global(&self) -> bool {
        metrics::set_global_recorder(self.recorder.clone()).is_ok()
    }

    /// Everything recorded so far, in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The in-process workers' reminder metrics, recorded here so `/metrics` shows them.
impl ReminderMetrics for Metrics {
    /// Secrets that expire within `within` (a reminder threshold, `14d`) from now, as
    /// the reminder ticker last counted.
    fn secrets_expiring(&self, within: &str, count: u64) {
        self.gauge(
            SECRETS_EXPIRING,
            &[Label::new("within", within.to_owned())],
            count as f64,
        );
    }

    /// Secrets past their expiry, as the reminder ticker last counted.
    fn secrets_expired(&self, count: u64) {
        self.gauge(SECRETS_EXPIRED, &[], count as f64);
    }

    /// One reminder e-mailed, of `threshold` (`14d`, ..., `expired`).
    fn reminder_sent(&self, threshold: &str) {
        self.counter(
            REMINDERS,
            &[Label::new("threshold", threshold.to_owned())],
            1,
        );
    }

    fn ticked(&self) {
        self.counter(REMINDER_TICKS, &[], 1);
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
