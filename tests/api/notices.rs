//! Owner notices: one e-mail per rotation, in the owner's language, never a secret;
//! delivered through SMTP or to `.eml` files, through outages, exactly once.
use std::sync::atomic::Ordering;
use std::time::Duration;

use entity::{connection_event, sent_notification};
use futures_util::future::join_all;
use mail_parser::MessageParser;
use sea_orm::{ColumnTrait as _, EntityTrait as _, PaginatorTrait as _, QueryFilter as _};
use uuid::Uuid;

use crate::support::smtp::{SmtpServer, SmtpState};
use crate::support::{
    ALL_SCOPES, OwnRedis, TestApp, dump_redis, eventually, free_port, fresh_namespace,
    start_workers, test_redis,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// A client whose owner reads `locale`, one connection, and a token.
pub struct Clinic {
    client_id: Uuid,
    connection_id: Uuid,
    secret: String,
    token: String,
    owner_email: String,
}

pub async fn clinic(app: &TestApp, locale: &str) -> Clinic {
    let (client_id, owner_email) = app.client_owned_by("MSP", locale).await;
    let (connection_id, secret) = app.connection(client_id).await;
    let token = app.token(client_id, ALL_SCOPES).await;
    Clinic {
        client_id,
        connection_id,
        secret,
        token,
        owner_email,
    }
}

pub async fn refresh(app: &TestApp, c: &Clinic, request_id: &str) -> String {
    let response = app
        .http
        .patch(app.refresh_url(&c.client_id.to_string(), &c.connection_id.to_string()))
        .bearer_auth(&c.token)
        .header("x-request-id", request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["data"]["secret"].as_str().unwrap().to_owned()
}

/// Notices the mail server accepted.
pub async fn sent_count(app: &TestApp) -> u64 {
    sent_notification::Entity::find()
        .filter(sent_notification::Column::State.eq(sent_notification::state::SENT))
        .count(&app.db)
        .await
        .unwrap()
}

/// Rotation notices the mail server accepted: not the stale-secret notices that a test
/// presenting a retired secret also causes, a flush later.
pub async fn sent_rotation_notices(app: &TestApp) -> u64 {
    let rotations: Vec<Uuid> = connection_event::Entity::find()
        .filter(connection_event::Column::Kind.eq("secret_refreshed"))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.id)
        .collect();
    sent_notification::Entity::find()
        .filter(sent_notification::Column::State.eq(sent_notification::state::SENT))
        .filter(sent_notification::Column::EventId.is_in(rotations))
        .count(&app.db)
        .await
        .unwrap()
}

#[actix_web::test]
async fn one_refresh_sends_one_notice_to_the_owner_in_their_language() {
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| {
        c.mail.smtp_url = Some(smtp.url());
        c.mail.sender.from = "Mithril Test <mithril@example.org>".to_owned();
    })
    .await;

    for (n, (locale, subject_word, body_word)) in [
        ("en", "rotated", "If this was not you"),
        ("uk", "змінено", "Якщо це були не ви"),
    ]
    .into_iter()
    .enumerate()
    {
        let c = clinic(&app, locale).await;
        let request_id = format!("notice-{locale}");
        let new_secret = refresh(&app, &c, &request_id).await;
        let expected = n as u64 + 1;
        assert!(
            eventually(DEADLINE, || async { sent_count(&app).await == expected }).await,
            "the notice is sent and recorded"
        );
        let messages = smtp_state.messages();
        assert_eq!(
            messages.len(),
            expected as usize,
            "exactly one message per refresh"
        );
        let raw = &messages[n];
        assert_eq!(raw.to.as_slice(), std::slice::from_ref(&c.owner_email));
        assert_eq!(
            raw.from, "mithril@example.org",
            "the envelope sender is MAIL_FROM"
        );
        let text = String::from_utf8_lossy(&raw.data);
        for secret in [&new_secret, &c.secret] {
            assert!(!text.contains(secret.as_str()), "no secret in the message");
        }

        crate::mail::assert_automatic_mail(&raw.data, locale);
        let message = MessageParser::default().parse(&raw.data).unwrap();
        let event = connection_event::Entity::find().all(&app.db).await.unwrap();
        let event = event.iter().find(|e| e.request_id == request_id).unwrap();
        assert_eq!(
            message.message_id(),
            Some(format!("{}@mithril", event.id).as_str())
        );
        assert_eq!(
            message.from().unwrap().first().unwrap().address(),
            Some("mithril@example.org")
        );
        assert_eq!(
            message.to().unwrap().first().unwrap().address(),
            Some(c.owner_email.as_str())
        );
        assert!(
            message.subject().unwrap().contains(subject_word),
            "{:?}",
            message.subject()
        );
        assert_eq!(message.text_body_count(), 1, "a text part");
        assert_eq!(message.html_body_count(), 1, "an HTML part");
        let plain = message.body_text(0).unwrap();
        let html = message.body_html(0).unwrap();
        for part in [&plain, &html] {
            for fact in [
                c.connection_id.to_string(),
                request_id.clone(),
                body_word.to_owned(),
            ] {
                assert!(part.contains(&fact), "{locale}: {fact} missing");
            }
            for secret in [&new_secret, &c.secret] {
                assert!(!part.contains(secret.as_str()));
            }
        }
    }
    smtp.stop().await;
}

#[actix_web::test]
async fn without_smtp_the_notice_is_an_eml_file() {
    let app = TestApp::spawn().await;
    let c = clinic(&app, "uk").await;
    let new_secret = refresh(&app, &c, "eml-1").await;
    let dir = app.state.config.workers.mail_dir.clone();
    // Only finished messages count: a `.part` file is one still being written.
    let finished = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        eventually(DEADLINE, || async { finished().len() == 1 }).await,
        "one .eml file appears"
    );
    let path = finished().remove(0);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no partial file is left beside the message"
    );
    let raw = std::fs::read(&path).unwrap();
    let message = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(
        message.to().unwrap().first().unwrap().address(),
        Some(c.owner_email.as_str())
    );
    assert!(message.body_text(0).unwrap().contains("eml-1"));
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains(&new_secret) && !raw.contains(&c.secret));
}

#[actix_web::test]
async fn smtp_down_then_up_delivers_after_backoff() {
    let smtp_state = SmtpState::default();
    smtp_state.fail_transient.store(true, Ordering::SeqCst);
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| c.mail.smtp_url = Some(smtp.url())).await;
    let c = clinic(&app, "en").await;
    refresh(&app, &c, "smtp-down").await;
    assert!(
        eventually(DEADLINE, || async {
            smtp_state.attempts.load(Ordering::SeqCst) >= 2
        })
        .await,
        "the worker retries while the server refuses"
    );
    assert_eq!(smtp_state.count(), 0);
    smtp_state.fail_transient.store(false, Ordering::SeqCst);
    assert!(
        eventually(DEADLINE, || async { sent_count(&app).await == 1 }).await,
        "delivered once the server is back"
    );
    assert_eq!(smtp_state.count(), 1);
    smtp.stop().await;
}

/// A server refusing `MAIL FROM` with `554 5.7.1` is at fault itself (its relay or
/// authentication settings), not the owner's address: the notice is retried and goes out
/// once the server accepts, rather than going `dead` at the first 5xx.
#[actix_web::test]
async fn a_mail_from_refused_with_554_is_retried_and_the_notice_arrives_once() {
    let smtp_state = SmtpState::default();
    // Three refusals, then accepted: fits within the test's 5 retries.
    smtp_state.refuse_mail_from.store(3, Ordering::SeqCst);
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| c.mail.smtp_url = Some(smtp.url())).await;
    let c = clinic(&app, "en").await;
    refresh(&app, &c, "relay-refused").await;
    assert!(
        eventually(DEADLINE, || async {
            smtp_state.refused_mail_from.load(Ordering::SeqCst) >= 2
        })
        .await,
        "the worker retries while the server refuses MAIL FROM (refused {} times)",
        smtp_state.refused_mail_from.load(Ordering::SeqCst)
    );
    assert!(
        eventually(DEADLINE, || async { sent_count(&app).await == 1 }).await,
        "delivered once the server accepts"
    );
    assert_eq!(smtp_state.refused_mail_from.load(Ordering::SeqCst), 3);
    let messages = smtp_state.messages();
    assert_eq!(messages.len(), 1, "exactly one notice");
    assert_eq!(messages[0].to, vec![c.owner_email.clone()]);
    let notices = sent_notification::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].state, sent_notification::state::SENT);
    let table = if crate::support::is_postgres(&app) {
        "apalis.jobs"
    } else {
        "Jobs"
    };
    let killed = format!("SELECT COUNT(*) FROM {table} WHERE status = 'Killed'");
    assert_eq!(app.query_i64(&killed).await, 0, "no job dead-lettered");
    smtp.stop().await;
}

#[actix_web::test]
async fn a_permanently_refused_owner_dead_letters_without_retrying() {
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| c.mail.smtp_url = Some(smtp.url())).await;
    let c = clinic(&app, "en").await;
    smtp_state
        .reject_rcpt
        .lock()
        .unwrap()
        .push(c.owner_email.clone());
    refresh(&app, &c, "dead-letter").await;
    let table = if crate::support::is_postgres(&app) {
        "apalis.jobs"
    } else {
        "Jobs"
    };
    let killed = format!("SELECT COUNT(*) FROM {table} WHERE status = 'Killed'");
    assert!(
        eventually(DEADLINE, || async { app.query_i64(&killed).await == 1 }).await,
        "the job is dead-lettered"
    );
    assert_eq!(
        smtp_state.attempts.load(Ordering::SeqCst),
        1,
        "a 550 is not retried"
    );
    assert_eq!(smtp_state.count(), 0);
    assert_eq!(sent_count(&app).await, 0);
    smtp.stop().await;
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn two_worker_processes_on_redis_deliver_fifty_notices_exactly_once() {
    let redis_url = test_redis().await;
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let namespace = fresh_namespace();
    let app = TestApp::spawn_with(|c| {
        c.redis_url = Some(redis_url.clone());
        c.workers.queue_namespace = namespace.clone();
        c.run_workers = false;
        c.mail.smtp_url = Some(smtp.url());
    })
    .await;
    let _workers = start_workers(2, &app, &redis_url, &smtp.url());

    let mut clinics = Vec::new();
    for _ in 0..10 {
        clinics.push(clinic(&app, "uk").await);
    }
    let secrets: Vec<String> = join_all((0..50).map(|i| {
        let (app, c) = (&app, &clinics[i % clinics.len()]);
        async move { refresh(app, c, &format!("fifty-{i}")).await }
    }))
    .await;

    assert!(
        eventually(Duration::from_secs(60), || async {
            sent_count(&app).await == 50
        })
        .await,
        "all fifty notices are sent (sent: {})",
        sent_count(&app).await
    );
    let messages = smtp_state.messages();
    assert_eq!(messages.len(), 50, "none twice");
    let ids: std::collections::BTreeSet<String> = messages
        .iter()
        .map(|m| {
            MessageParser::default()
                .parse(&m.data)
                .unwrap()
                .message_id()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 50, "fifty distinct events");

    // Neither the queue nor the cache keeps a secret.
    let dump = dump_redis(&redis_url, &format!("{namespace}*")).await
        + &dump_redis(&redis_url, "mithril:credential:*").await;
    assert!(
        dump.contains("event_id"),
        "the queue's payloads are in the dump"
    );
    for secret in secrets.iter().chain(clinics.iter().map(|c| &c.secret)) {
        assert!(
            !dump.contains(secret.as_str()),
            "a plaintext secret is in Redis"
        );
    }
    let database = app.dump_database().await;
    for secret in &secrets {
        assert!(!database.contains(secret.as_str()));
    }
    smtp.stop().await;
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn redis_down_during_refreshes_loses_no_notice_and_sends_none_twice() {
    test_redis().await;
    let mut redis = OwnRedis::start(free_port());
    redis.wait_ready().await;
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| {
        c.redis_url = Some(redis.url());
        c.workers.queue_namespace = fresh_namespace();
        c.mail.smtp_url = Some(smtp.url());
    })
    .await;
    let c = clinic(&app, "en").await;

    redis.stop();
    for i in 0..10 {
        refresh(&app, &c, &format!("redis-down-{i}")).await;
    }
    assert_eq!(smtp_state.count(), 0, "nothing could be queued");

    let port = redis.port;
    drop(redis);
    let redis = OwnRedis::start(port);
    redis.wait_ready().await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            sent_count(&app).await == 10
        })
        .await,
        "every notice arrives once Redis is back (sent: {})",
        sent_count(&app).await
    );
    assert_eq!(smtp_state.count(), 10, "none twice");
    smtp.stop().await;
}
