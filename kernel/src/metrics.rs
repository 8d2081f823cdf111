//! Metrics in Prometheus format: every name both binaries expose, with its help text,
//! and the `Registry` that records and renders them, one per process or application.
//!
//! The `metrics` crate's macros write to one process-global recorder, which would make
//! every application in a process (the test suite spawns dozens) share its counters.
//! Instead each `Application`, and each `mithril-workers` process, owns a `Registry`: a
//! Prometheus recorder called through the `metrics::Recorder` trait directly, with no
//! global state. The job workers record into the registry they are given, so their
//! metrics have the same names in `mithril serve` and in `mithril-workers`. Code that
//! wants a new metric adds its name to `CATALOGUE` (help text and type), so names stay
//! in one place and `promtool check metrics` finds help for each.
//!
//! CAUTION: a Prometheus histogram keeps each sample until upkeep folds it into the
//! buckets, and only a scrape or `run_upkeep` does that. An instance nobody scrapes (the
//! embedded default, a replica Prometheus has not found yet, an outage of Prometheus)
//! would grow by every request's sample: so upkeep runs every `UPKEEP_EVERY_SAMPLES`
//! samples on the recording path (a bound that holds at any rate), and on a timer
//! (`Registry::keep_up`) for the last few between quiet periods.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use metrics::{Key, KeyName, Label, Level, Metadata, Recorder as _, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

mod catalogue;

pub use catalogue::*;

/// Latency buckets, in seconds, for request histograms.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets, in seconds, of the delivery SLI and of job durations: around the 1 s goal
/// of a notice, up to the minute after which the alert pages.
const DELIVERY_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Histogram samples recorded between two upkeeps at most: 8 bytes each, so a few
/// dozen KiB held whatever the traffic, and an upkeep (a drain of every histogram, some
/// microseconds) every few thousand requests.
const UPKEEP_EVERY_SAMPLES: u64 = 4096;

/// How often `keep_up` folds samples in when traffic is too light to reach
/// `UPKEEP_EVERY_SAMPLES`: the exporter's own default upkeep period.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// One set of metrics, cheap to clone: every clone records into the same.
#[derive(Clone)]
pub struct Registry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    /// Histogram samples recorded since the last upkeep.
    unkept: Arc<AtomicU64>,
}

impl Registry {
    pub fn new() -> Self {
        // CAUTION: without buckets the exporter renders summaries, not histograms. The
        // full-name matches win over the suffix one.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(NOTICE_DELIVERY.to_owned()),
                    DELIVERY_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(JOB_DURATION.to_owned()), DELIVERY_BUCKETS)
            })
            // Only an empty bucket list is refused; summaries then, rather than no metrics.
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        for &(name, kind, help) in CATALOGUE {
            let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            match kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let handle = recorder.handle();
        Self {
            recorder: Arc::new(recorder),
            handle,
            unkept: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Adds `value` to the counter `name` with `labels`.
    pub fn counter(&self, name: &'static str, labels: &[Label], value: u64) {
        self.recorder
            .register_counter(&Key::from_parts(name, labels.to_vec()), &METADATA)
            .increment(value);
    }

    /// Sets the gauge `name` with `labels`.
    pub fn gauge(&self, name: &'static str, labels: &[Label], value: f64) {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels.to_vec()), &METADATA)
            .set(value);
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

    /// Runs `upkeep` every `UPKEEP_PERIOD` for as long as this registry is in use, so the
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

    /// Makes this registry the process-global recorder too, so the `metrics::counter!`
    /// family lands here. The facade keeps the first recorder set in a process: each
    /// binary calls this once; tests never do, so their applications stay apart.
    /// Returns whether this call installed it.
    pub fn install_global(&self) -> bool {
        metrics::set_global_recorder(self.recorder.clone()).is_ok()
    }

    /// Everything recorded so far, in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Secrets that expire within `within` (a reminder threshold's label, `14d`) from
    /// now, as the reminder ticker last counted.
    pub fn secrets_expiring(&self, within: &str, count: u64) {
        // Exact below 2^53 secrets.
        self.gauge(
            SECRETS_EXPIRING,
            &[Label::new("within", within.to_owned())],
            count as f64,
        );
    }

    /// Current secrets past their expiry, as the reminder ticker last counted.
    pub fn secrets_expired(&self, count: u64) {
        self.gauge(SECRETS_EXPIRED, &[], count as f64);
    }

    /// One reminder e-mailed, of `threshold` (`14d`, ..., `expired`).
    pub fn reminder_sent(&self, threshold: &str) {
        self.counter(
            REMINDERS,
            &[Label::new("threshold", threshold.to_owned())],
            1,
        );
    }

    /// One pass of the reminder ticker ended (whether or not it found work): a ticker
    /// that stopped ticking shows as a counter that stopped.
    pub fn ticked(&self) {
        self.counter(REMINDER_TICKS, &[], 1);
    }

    /// One attempt of a `job` (its kind) came to `outcome` after `took`.
    pub fn job_done(&self, job: &'static str, outcome: &'static str, took: Duration) {
        let labels = [
            Label::from_static_parts("job", job),
            Label::from_static_parts("outcome", outcome),
        ];
        self.counter(JOBS, &labels, 1);
        self.histogram(JOB_DURATION, &labels, took.as_secs_f64());
    }

    /// Shows the job counters of `kinds` at zero for the outcomes an alert watches, so
    /// that `increase()` sees a process's first retried or dead job (a series first
    /// scraped at 1 has no increase).
    pub fn jobs_from_zero(&self, kinds: &[&'static str]) {
        for &job in kinds {
            for outcome in ["ok", "retry", "dead"] {
                let labels = [
                    Label::from_static_parts("job", job),
                    Label::from_static_parts("outcome", outcome),
                ];
                self.counter(JOBS, &labels, 0);
            }
        }
    }

    /// A notice of `kind` (`rotation`, `reminder`, `stale`) was accepted by the mail
    /// server `after` the change it tells of.
    pub fn notice_delivered(&self, kind: &'static str, after: Duration) {
        self.histogram(
            NOTICE_DELIVERY,
            &[Label::from_static_parts("kind", kind)],
            after.as_secs_f64(),
        );
    }

    /// Jobs of `job` (a kind) waiting in the queue.
    pub fn queue_depth(&self, job: &'static str, waiting: u64) {
        self.gauge(
            QUEUE_DEPTH,
            &[Label::from_static_parts("job", job)],
            waiting as f64,
        );
    }

    /// Whether this process's workers reach their database and queue.
    pub fn worker_ready(&self, ready: bool) {
        self.gauge(WORKER_READY, &[], if ready { 1.0 } else { 0.0 });
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_catalogued_once_with_its_conventional_suffix() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|(name, ..)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len(), "a name catalogued twice");
        for &(name, kind, help) in CATALOGUE {
            assert!(!help.is_empty(), "{name} has no help");
            assert_eq!(name.ends_with("_total"), kind == Kind::Counter, "{name}");
            if kind == Kind::Histogram {
                assert!(name.ends_with("_seconds"), "{name}: base unit");
            }
        }
    }

    #[test]
    fn the_delivery_sli_has_its_own_buckets_and_help() {
        let registry = Registry::new();
        registry.notice_delivered("rotation", Duration::from_millis(300));
        registry.job_done("notify_owner", "ok", Duration::from_millis(40));
        registry.upkeep();
        let rendered = registry.render();
        for line in [
            "# HELP mithril_notice_delivery_seconds Time from the change",
            r#"mithril_notice_delivery_seconds_bucket{kind="rotation",le="0.5"} 1"#,
            r#"mithril_notice_delivery_seconds_bucket{kind="rotation",le="60"} 1"#,
            r#"mithril_job_duration_seconds_bucket{job="notify_owner",outcome="ok",le="0.05"} 1"#,
            r#"mithril_jobs_total{job="notify_owner",outcome="ok"} 1"#,
        ] {
            assert!(rendered.contains(line), "{line} in {rendered}");
        }
    }
}
