//! Issue "What operators run it with": `mithril-workers` answers probes and serves
//! `/metrics` on `MITHRIL_WORKERS_BIND`, with the same names as `mithril serve`'s
//! in-process workers, the delivery SLI among them.
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::notices::sent_rotation_notices;
use crate::operations::sample as value;
use crate::support::proxy::CutProxy;
use crate::support::smtp::{SmtpServer, SmtpState};
use crate::support::{TestApp, eventually, free_port, is_postgres, workers_binary};

const DEADLINE: Duration = Duration::from_secs(30);

/// One `mithril-workers` on the queue in `database_url` (no Redis), its probes on
/// `port`; killed when dropped.
struct Worker {
    child: Child,
    base: String,
}

impl Worker {
    fn start(app: &TestApp, database_url: &str, smtp_url: &str) -> Self {
        let port = free_port();
        let child = Command::new(workers_binary())
            .env_remove("REDIS_URL")
            .env("DATABASE_URL", database_url)
            .env("SMTP_URL", smtp_url)
            .env(
                "MITHRIL_QUEUE_NAMESPACE",
                &app.state.config.workers.queue_namespace,
            )
            .env("MITHRIL_WORKERS_BIND", format!("127.0.0.1:{port}"))
            .env("MITHRIL_WORKER_POLL_MS", "50")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::get(format!("{}{path}", self.base)).await.ok()?;
        Some((response.status().as_u16(), response.text().await.ok()?))
    }

    /// Waits for `path` to answer `status`.
    async fn answers(&self, path: &str, status: u16, within: Duration) -> bool {
        eventually(within, || async {
            self.get(path).await.is_some_and(|(got, _)| got == status)
        })
        .await
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The metric families of a scrape (its `# TYPE` lines); each must have its `# HELP`.
fn families(scrape: &str) -> BTreeSet<String> {
    let typed: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    for family in &typed {
        assert!(
            scrape.contains(&format!("# HELP {family} ")),
            "{family} has no help text:\n{scrape}"
        );
    }
    typed
}

/// What both topologies must show once one rotation's notice went out.
const WORKER_FAMILIES: [&str; 5] = [
    "mithril_jobs_total",
    "mithril_job_duration_seconds",
    "mithril_notice_delivery_seconds",
    "mithril_queue_depth",
    "mithril_worker_ready",
];

fn assert_worker_metrics(scrape: &str) {
    let families = families(scrape);
    for family in WORKER_FAMILIES {
        assert!(families.contains(family), "{family} missing:\n{scrape}");
    }
    assert_eq!(
        value(
            scrape,
            r#"mithril_notice_delivery_seconds_count{kind="rotation"}"#
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        value(
            scrape,
            r#"mithril_notice_delivery_seconds_bucket{kind="rotation",le="60"}"#
        ),
        Some(1.0),
        "the SLI's buckets reach a minute: {scrape}"
    );
    assert_eq!(
        value(
            scrape,
            r#"mithril_jobs_total{job="notify_owner",outcome="ok"}"#
        ),
        Some(1.0),
        "{scrape}"
    );
    assert!(
        value(
            scrape,
            r#"mithril_job_duration_seconds_count{job="notify_owner",outcome="ok"}"#
        )
        .is_some(),
        "{scrape}"
    );
    assert_eq!(
        value(scrape, r#"mithril_queue_depth{job="notify_owner"}"#),
        Some(0.0),
        "nothing left waiting: {scrape}"
    );
    assert_eq!(
        value(scrape, "mithril_worker_ready "),
        Some(1.0),
        "{scrape}"
    );
}

#[actix_web::test]
async fn mithril_workers_answers_its_probes_and_serves_the_same_metrics_as_serve() {
    let smtp = SmtpServer::start(SmtpState::default(), 0).await;
    // Apart: the API runs no workers; one `mithril-workers` sends the notice.
    let api = TestApp::spawn_with(|c| c.run_workers = false).await;
    let worker = Worker::start(&api, &api.state.config.database.url, &smtp.url());
    assert!(worker.answers("/health/live", 200, DEADLINE).await, "live");
    assert!(
        worker.answers("/health/ready", 200, DEADLINE).await,
        "ready"
    );
    let me = api.owned("MSP").await;
    let (status, body) = api.refresh(me.client_id, me.connection_id, &me.token).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(DEADLINE, || async {
            sent_rotation_notices(&api).await == 1
        })
        .await
    );
    let (status, apart) = worker.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_worker_metrics(&apart);
    for value in [me.token.as_str(), me.secret.as_str()] {
        assert!(!apart.contains(value), "a secret in /metrics");
    }
    // The API without workers shows its own backlog, not the workers'.
    let (_, api_scrape) = api.get_text("/metrics").await;
    let api_families = families(&api_scrape);
    assert!(
        api_families.contains("mithril_outbox_backlog"),
        "{api_scrape}"
    );
    assert!(api_families.contains("mithril_outbox_backlog_oldest_seconds"));
    assert!(!api_families.contains("mithril_worker_ready"));

    // Together: `mithril serve` with its workers shows the same names.
    let serve = TestApp::spawn_with(|c| c.mail.smtp_url = Some(smtp.url())).await;
    let me = serve.owned("MSP").await;
    let (status, _) = serve
        .refresh(me.client_id, me.connection_id, &me.token)
        .await;
    assert_eq!(status, 200);
    assert!(
        eventually(DEADLINE, || async {
            sent_rotation_notices(&serve).await == 1
        })
        .await
    );
    let (_, together) = serve.get_text("/metrics").await;
    assert_worker_metrics(&together);
    let missing: Vec<_> = families(&apart)
        .difference(&families(&together))
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "names of mithril-workers that serve lacks: {missing:?}"
    );
}

#[actix_web::test]
#[ignore = "needs PostgreSQL: set MITHRIL_TEST_POSTGRES_URL, run with --include-ignored"]
async fn a_killed_database_makes_the_workers_unready_until_it_returns() {
    let app = TestApp::spawn_with(|c| c.run_workers = false).await;
    assert!(
        is_postgres(&app),
        "MITHRIL_TEST_POSTGRES_URL is not set: this test needs PostgreSQL"
    );
    // The worker reaches PostgreSQL (its database and its queue) through a proxy that
    // the test cuts: the machine's PostgreSQL itself keeps running for the others.
    let url = &app.state.config.database.url;
    let (scheme_user, rest) = url.split_once('@').unwrap();
    let (host, database) = rest.split_once('/').unwrap();
    let proxy = CutProxy::start(host.to_owned()).await;
    let through = format!("{scheme_user}@127.0.0.1:{}/{database}", proxy.port);
    let smtp = SmtpServer::start(SmtpState::default(), 0).await;
    let worker = Worker::start(&app, &through, &smtp.url());
    assert!(worker.answers("/health/ready", 200, DEADLINE).await);

    proxy.cut();
    assert!(
        worker.answers("/health/ready", 503, DEADLINE).await,
        "unready without its database"
    );
    assert!(
        worker.answers("/health/live", 200, DEADLINE).await,
        "still live"
    );
    let (_, scrape) = worker.get("/metrics").await.unwrap();
    assert_eq!(
        value(&scrape, "mithril_worker_ready "),
        Some(0.0),
        "{scrape}"
    );

    proxy.restore();
    assert!(
        worker.answers("/health/ready", 200, DEADLINE).await,
        "ready again once the database is back"
    );
}
