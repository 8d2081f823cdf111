//! `/health/live`, `/health/ready` and `/metrics`.
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use mithril::Application;
use mithril::readiness::ReadinessCheck;

use crate::support::{TestApp, TestDatabase, assert_error, test_config};

#[actix_web::test]
async fn live_and_ready_answer_200_in_the_envelope() {
    let app = TestApp::spawn().await;
    let (status, text) = app.get_text("/health/live").await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["data"]["status"], "live");
    assert_eq!(body["meta"]["code"], 200);

    let (status, text) = app.get_text("/health/ready").await;
    assert_eq!(status, 200, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["data"]["status"], "ready");
    assert_eq!(body["data"]["checks"]["database"], "ok");
}

/// Redis is asked where it is configured (CI sets `MITHRIL_TEST_REDIS_URL`), and only there.
#[actix_web::test]
async fn ready_asks_redis_only_where_it_is_configured() {
    let redis_url = std::env::var("MITHRIL_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let app = TestApp::spawn_with(|c| c.redis_url = redis_url.clone()).await;
    let (status, text) = app.get_text("/health/ready").await;
    assert_eq!(status, 200, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    match redis_url {
        Some(_) => assert_eq!(body["data"]["checks"]["redis"], "ok", "{body}"),
        None => assert!(body["data"]["checks"].get("redis").is_none(), "{body}"),
    }
}

#[actix_web::test]
async fn ready_is_503_once_the_database_is_gone_and_live_stays_200() {
    let app = TestApp::spawn().await;
    app.db.close_by_ref().await.unwrap();
    let (status, text) = app.get_text("/health/ready").await;
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_error(&(status, body.clone()), 503, "service_unavailable", None);
    assert!(
        !text.to_lowercase().contains("pool"),
        "no internals in the body: {text}"
    );
    let (status, _) = app.get_text("/health/live").await;
    assert_eq!(status, 200);
}

/// A backing service that never answers, as a Redis check would be when Redis hangs.
struct Hangs;

impl ReadinessCheck for Hangs {
    fn name(&self) -> &'static str {
        "hangs"
    }
    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(std::future::pending())
    }
}

struct Fails;

impl ReadinessCheck for Fails {
    fn name(&self) -> &'static str {
        "fails"
    }
    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Err(anyhow::anyhow!("connection refused")) })
    }
}

#[actix_web::test]
async fn ready_is_503_within_the_timeout_when_an_added_check_hangs_or_fails() {
    let database = TestDatabase::new().await;
    for check in [Arc::new(Hangs) as Arc<dyn ReadinessCheck>, Arc::new(Fails)] {
        let mut config = test_config(&database);
        config.http.readiness_timeout = Duration::from_millis(300);
        let db = mithril::db::connect(&config).await.unwrap();
        mithril::db::migrate(&db).await.unwrap();
        let app = Application::build_with_checks(config, db, vec![check])
            .await
            .unwrap();
        let address = format!("http://127.0.0.1:{}", app.port());
        actix_web::rt::spawn(app.run_until_stopped());

        let started = std::time::Instant::now();
        let response = reqwest::get(format!("{address}/health/ready"))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let got = crate::support::into_parts(response).await;
        assert_error(
            &got,
            503,
            "service_unavailable",
            Some("Service unavailable"),
        );
        assert!(
            !got.1.to_string().contains("refused"),
            "the cause stays in the log"
        );
    }
}

/// The value of the first line of a scrape that starts with `line_start`.
pub fn sample(metrics: &str, line_start: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[actix_web::test]
async fn metrics_count_requests_by_route_pattern_and_refreshes_by_outcome() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let refresh_route =
        r#"route="/api/clients/{id}/connections/{connection_id}/actions/refresh_secret""#;
    let ok_line = format!(r#"http_requests_total{{method="PATCH",{refresh_route},status="200"}}"#);

    let (_, before) = app.get_text("/metrics").await;
    assert_eq!(sample(&before, &ok_line), None);

    for _ in 0..2 {
        let (status, _) = app.refresh(me.client_id, me.connection_id, &me.token).await;
        assert_eq!(status, 200);
    }
    let (status, _) = app
        .refresh(me.client_id, uuid::Uuid::new_v4(), &me.token)
        .await;
    assert_eq!(status, 404);
    let (status, _) = app.list(me.client_id, "", &me.token).await;
    assert_eq!(status, 200);

    let (status, after) = app.get_text("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&after, &ok_line), Some(2.0), "{after}");
    assert_eq!(
        sample(
            &after,
            &format!(r#"http_requests_total{{method="PATCH",{refresh_route},status="404"}}"#)
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, r#"secret_refreshes_total{outcome="rotated"}"#),
        Some(2.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, r#"secret_refreshes_total{outcome="not_found"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            r#"http_requests_total{method="GET",route="/api/clients/{id}/connections",status="200"}"#
        ),
        Some(1.0)
    );
    assert!(
        after.contains("http_request_duration_seconds_bucket{"),
        "latency histograms"
    );
    // The backlog gauge: both refreshes wrote outbox rows (dispatched or not by now).
    assert!(
        sample(&after, "mithril_outbox_pending").is_some(),
        "{after}"
    );
    assert!(
        after.contains(&format!(r#"http_request_duration_seconds_count{{method="PATCH",{refresh_route},status="200"}} 2"#)),
        "{after}"
    );
    // Route patterns only: no id, token or secret reaches a label.
    for value in [
        me.client_id.to_string(),
        me.connection_id.to_string(),
        me.token.clone(),
        me.secret.clone(),
    ] {
        assert!(!after.contains(&value), "{value} leaked into /metrics");
    }

    // Another application in the same process keeps its own counts.
    let other = TestApp::spawn().await;
    let (_, fresh) = other.get_text("/metrics").await;
    assert_eq!(
        sample(&fresh, r#"secret_refreshes_total{outcome="rotated"}"#),
        None
    );
}

/// API.md's 503 row on the resource itself: with the database gone, every method answers
/// `service_unavailable` in the envelope, with nothing of the cause in the body.
#[actix_web::test]
async fn resource_calls_are_503_without_the_database() {
    use reqwest::Method;
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    // Warm the token cache, so the calls get past authorization to the handlers.
    let (status, _) = app.list(me.client_id, "", &me.token).await;
    assert_eq!(status, 200);
    app.db.close_by_ref().await.unwrap();
    let base = format!("/api/clients/{}/connections", me.client_id);
    let one = format!("{base}/{}", me.connection_id);
    let consumer = uuid::Uuid::new_v4();
    for (method, path, body) in [
        (Method::GET, base.clone(), None),
        (Method::GET, one.clone(), None),
        (Method::GET, format!("{one}/events"), None),
        (Method::DELETE, one.clone(), None),
        (
            Method::PATCH,
            one.clone(),
            Some(r#"{"redirect_uri": "https://x.example.org"}"#.to_owned()),
        ),
        (
            Method::PUT,
            base.clone(),
            Some(format!(
                r#"{{"consumer_id": "{consumer}", "redirect_uri": "https://x.example.org"}}"#
            )),
        ),
    ] {
        let got = app
            .call(method.clone(), &path, Some(&me.token), body.as_deref())
            .await;
        assert_error(
            &got,
            503,
            "service_unavailable",
            Some("Service unavailable"),
        );
        let text = got.1.to_string().to_lowercase();
        assert!(
            !text.contains("pool") && !text.contains("sql"),
            "{method} {path}: {text}"
        );
    }
}
