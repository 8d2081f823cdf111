//! Measurements, not tests: run with
//! `MITHRIL_TEST_REDIS_URL=redis://127.0.0.1:6379 cargo test --test api measure -- --ignored --nocapture`.
//! They print figures and assert only that the work happened.
use std::time::{Duration, Instant};

use entity::connection_event;
use futures_util::StreamExt as _;
use mail_parser::MessageParser;
use sea_orm::EntityTrait as _;

use crate::notices::{clinic, refresh, sent_count};
use crate::support::smtp::{SmtpServer, SmtpState};
use crate::support::start_workers;
use crate::support::{TestApp, eventually, fresh_namespace, test_redis};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(what: &str, mut millis: Vec<f64>) {
    millis.sort_by(f64::total_cmp);
    println!(
        "{what}: n={} median={:.1} ms p99={:.1} ms max={:.1} ms",
        millis.len(),
        percentile(&millis, 50.0),
        percentile(&millis, 99.0),
        millis.last().copied().unwrap_or_default()
    );
}

#[actix_web::test]
#[ignore = "a measurement; run it by name"]
async fn measure_commit_to_smtp_acceptance() {
    let redis_url = test_redis().await;
    const REFRESHES: usize = 200;
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| {
        c.redis_url = Some(redis_url.clone());
        c.workers.queue_namespace = fresh_namespace();
        c.run_workers = false;
        c.mail.smtp_url = Some(smtp.url());
    })
    .await;
    let _workers = start_workers(2, &app, &redis_url, &smtp.url());
    let mut clinics = Vec::new();
    for _ in 0..20 {
        clinics.push(clinic(&app, "uk").await);
    }
    // 10 callers at a time, as a steady stream rather than one burst.
    futures_util::stream::iter(0..REFRESHES)
        .for_each_concurrent(10, |i| {
            let (app, c) = (&app, &clinics[i % clinics.len()]);
            async move {
                refresh(app, c, &format!("measure-{i}")).await;
            }
        })
        .await;
    assert!(
        eventually(Duration::from_secs(120), || async {
            sent_count(&app).await == REFRESHES as u64
        })
        .await
    );

    let events = connection_event::Entity::find().all(&app.db).await.unwrap();
    let delays: Vec<f64> = smtp_state
        .messages()
        .iter()
        .map(|m| {
            let parsed = MessageParser::default().parse(&m.data).unwrap();
            let event_id = parsed
                .message_id()
                .unwrap()
                .trim_end_matches("@mithril")
                .to_owned();
            let event = events
                .iter()
                .find(|e| e.id.to_string() == event_id)
                .unwrap();
            (m.accepted_at - event.occurred_at)
                .num_microseconds()
                .unwrap() as f64
                / 1000.0
        })
        .collect();
    report(
        "commit -> SMTP accepted (Redis queue, 2 mithril-workers)",
        delays,
    );
    smtp.stop().await;
}

#[actix_web::test]
#[ignore = "a measurement; run it by name"]
async fn measure_commit_to_refusal_on_another_instance() {
    let redis_url = test_redis().await;
    let first = TestApp::spawn_with(|c| c.redis_url = Some(redis_url.clone())).await;
    let second = TestApp::spawn_on(first.database.clone(), |c| {
        c.redis_url = Some(redis_url.clone())
    })
    .await;
    let me = first.owned("MSP").await;
    let mut secret = me.secret.clone();
    let mut delays = Vec::new();
    for _ in 0..100 {
        assert!(
            second.verifies(&secret).await && second.verifies(&secret).await,
            "warm"
        );
        let (status, body) = first
            .refresh(me.client_id, me.connection_id, &me.token)
            .await;
        assert_eq!(status, 200);
        let answered = Instant::now();
        while second.verifies(&secret).await {
            assert!(answered.elapsed() < Duration::from_secs(5));
        }
        delays.push(answered.elapsed().as_secs_f64() * 1000.0);
        secret = body["data"]["secret"].as_str().unwrap().to_owned();
    }
    report(
        "200 answered -> old secret refused on the other instance (upper bound, one poll = one verify call)",
        delays,
    );
}
