//! Reminders before a secret expires and once it has: one per threshold per secret, with
//! any number of worker processes; none after a rotation, none for a secret without
//! expiry; in the owner's language, with Kyiv time and UTC, never a secret.
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{connection, secret_reminder};
use mail_parser::MessageParser;
use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _};
use uuid::Uuid;
use workers::local_time::ShownTime;

use crate::support::smtp::{ReceivedMail, SmtpServer, SmtpState};
use crate::support::start_workers_with;
use crate::support::{
    ALL_SCOPES, TestApp, dump_redis, eventually, fresh_namespace, metric, test_redis,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// One reminder as the owner received it.
#[derive(Debug)]
struct Reminder {
    connection_id: Uuid,
    secret_version: i64,
    threshold: String,
    to: String,
    subject: String,
    text: String,
    html: String,
    accepted_at: DateTime<Utc>,
    raw: Vec<u8>,
}

/// The reminders among `messages` (rotation notices are the others), from their
/// `Message-ID`: `<reminder.{connection}.{version}.{threshold}@mithril>`.
fn reminders(messages: &[ReceivedMail]) -> Vec<Reminder> {
    messages
        .iter()
        .filter_map(|raw| {
            let message = MessageParser::default().parse(&raw.data)?;
            let id = message.message_id()?.strip_prefix("reminder.")?;
            let id = id.strip_suffix("@mithril")?;
            let mut parts = id.splitn(3, '.');
            Some(Reminder {
                connection_id: parts.next()?.parse().ok()?,
                secret_version: parts.next()?.parse().ok()?,
                threshold: parts.next()?.to_owned(),
                to: raw.to.first()?.clone(),
                subject: message.subject()?.to_owned(),
                text: message.body_text(0)?.into_owned(),
                html: message.body_html(0)?.into_owned(),
                accepted_at: raw.accepted_at,
                raw: raw.data.clone(),
            })
        })
        .collect()
}

/// Connection → its reminders' thresholds, in the order they came.
fn thresholds_by_connection(reminders: &[Reminder]) -> BTreeMap<(Uuid, i64), Vec<String>> {
    let mut by = BTreeMap::<(Uuid, i64), Vec<String>>::new();
    for r in reminders {
        by.entry((r.connection_id, r.secret_version))
            .or_default()
            .push(r.threshold.clone());
    }
    by
}

/// A client owned by a user reading `locale`, one connection, a token.
struct Clinic {
    client_id: Uuid,
    connection_id: Uuid,
    owner_email: String,
    token: String,
    consumer_name: String,
    /// Every secret this connection had: the seeded one, then each rotation's.
    secrets: Vec<String>,
}

async fn clinic(app: &TestApp, locale: &str) -> Clinic {
    let (client_id, owner_email) = app.client_owned_by("MSP", locale).await;
    let (connection_id, secret) = app.connection(client_id).await;
    let token = app.token(client_id, ALL_SCOPES).await;
    let row = connection::Entity::find_by_id(connection_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let consumer_name = entity::client::Entity::find_by_id(row.consumer_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .name;
    Clinic {
        client_id,
        connection_id,
        owner_email,
        token,
        consumer_name,
        secrets: vec![secret],
    }
}

/// Rotates the clinic's secret under the app's policy; returns its new version.
async fn rotate(app: &TestApp, c: &mut Clinic) -> i64 {
    let (status, body) = app.refresh(c.client_id, c.connection_id, &c.token).await;
    assert_eq!(status, 200, "{body}");
    c.secrets
        .push(body["data"]["secret"].as_str().unwrap().to_owned());
    connection::Entity::find_by_id(c.connection_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .secret_version
}

async fn expires_at(app: &TestApp, id: Uuid) -> DateTime<Utc> {
    connection::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .secret_expires_at
        .unwrap()
}

/// No message the server received holds any of `secrets`.
fn assert_no_secret(messages: &[ReceivedMail], secrets: &[&String]) {
    assert!(!secrets.is_empty());
    for message in messages {
        let raw = String::from_utf8_lossy(&message.data);
        for secret in secrets {
            assert!(
                !raw.contains(secret.as_str()),
                "a secret in a message:\n{raw}"
            );
        }
    }
}

fn policy(c: &mut mithril::Config, lifetime: &str, thresholds: &str) {
    c.rotation.secret_lifetime = mithril::config::SecretLifetime::parse(lifetime).unwrap();
    c.workers.reminder_thresholds = kernel::thresholds::Thresholds::parse(thresholds).unwrap();
    c.workers.reminder_interval = Duration::from_millis(100);
}

#[actix_web::test]
async fn reminders_go_once_per_threshold_in_the_owners_language_and_never_hold_a_secret() {
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| {
        c.mail.smtp_url = Some(smtp.url());
        policy(c, "12s", "8s,4s");
    })
    .await;
    let mut uk = clinic(&app, "uk").await;
    let mut en = clinic(&app, "en").await;
    // Seeded without the policy, never rotated: it never expires, nobody is reminded.
    let never = clinic(&app, "en").await;
    let uk_version = rotate(&app, &mut uk).await;
    let en_version = rotate(&app, &mut en).await;

    assert!(
        eventually(DEADLINE, || async {
            reminders(&smtp_state.messages()).len() >= 6
        })
        .await,
        "three reminders each: {:?}",
        thresholds_by_connection(&reminders(&smtp_state.messages()))
    );
    // Ten more ticks: nothing more goes out.
    let ticks = || async {
        metric(
            &app.get_text("/metrics").await.1,
            "mithril_reminder_ticks_total",
        )
    };
    let from = ticks().await;
    assert!(
        eventually(DEADLINE, || async { ticks().await >= from + 10 }).await,
        "the ticker goes on ticking"
    );
    let messages = smtp_state.messages();
    let got = reminders(&messages);
    let by = thresholds_by_connection(&got);
    assert_eq!(by.len(), 2, "{by:?}");
    for key in [
        (uk.connection_id, uk_version),
        (en.connection_id, en_version),
    ] {
        assert_eq!(by[&key], ["8s", "4s", "expired"], "once each, in order");
    }
    assert!(
        !messages
            .iter()
            .any(|m| String::from_utf8_lossy(&m.data).contains(&never.connection_id.to_string())),
        "no reminder for a secret without expiry"
    );

    for (c, soon, past, kyiv_word, lang) in [
        (&uk, "спливає", "сплив", "за київським часом", "uk"),
        (&en, "expires on", "has expired", "Kyiv time", "en"),
    ] {
        let expires = expires_at(&app, c.connection_id).await;
        let shown = ShownTime::of(expires);
        let rotate = format!(
            "PATCH /api/clients/{}/connections/{}/actions/refresh_secret",
            c.client_id, c.connection_id
        );
        for r in got.iter().filter(|r| r.connection_id == c.connection_id) {
            assert_eq!(r.to, c.owner_email);
            crate::mail::assert_automatic_mail(&r.raw, lang);
            let (word, due) = match r.threshold.as_str() {
                "8s" => (soon, expires - chrono::Duration::seconds(8)),
                "4s" => (soon, expires - chrono::Duration::seconds(4)),
                _ => (past, expires),
            };
            assert!(r.subject.contains(word), "{}", r.subject);
            assert!(r.subject.contains(&c.consumer_name), "{}", r.subject);
            assert!(r.accepted_at >= due, "{} sent early", r.threshold);
            for part in [&r.text, &r.html] {
                for fact in [
                    c.connection_id.to_string(),
                    c.consumer_name.clone(),
                    shown.kyiv.clone(),
                    shown.utc.clone(),
                    kyiv_word.to_owned(),
                    rotate.clone(),
                ] {
                    assert!(
                        part.contains(&fact),
                        "{} lacks {fact}:\n{part}",
                        r.threshold
                    );
                }
            }
        }
    }
    let secrets: Vec<&String> = [&uk, &en, &never]
        .iter()
        .flat_map(|c| c.secrets.iter().chain([&c.token]))
        .collect();
    assert_no_secret(&messages, &secrets);

    let rows = secret_reminder::Entity::find().all(&app.db).await.unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r.state == "sent"), "{rows:?}");

    // The gauges and the counter, at this application's /metrics.
    let metric_lines = || async {
        let (_, text) = app.get_text("/metrics").await;
        text
    };
    assert!(
        eventually(DEADLINE, || async {
            let text = metric_lines().await;
            [
                "mithril_secrets_expired 2",
                r#"mithril_secrets_expiring{within="8s"} 0"#,
                r#"mithril_secrets_expiring{within="4s"} 0"#,
                r#"mithril_reminders_total{threshold="8s"} 2"#,
                r#"mithril_reminders_total{threshold="4s"} 2"#,
                r#"mithril_reminders_total{threshold="expired"} 2"#,
            ]
            .iter()
            .all(|line| text.contains(line))
        })
        .await,
        "{}",
        metric_lines().await
    );
    smtp.stop().await;
}

#[actix_web::test]
async fn rotating_a_secret_ends_its_reminders() {
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| {
        c.mail.smtp_url = Some(smtp.url());
        policy(c, "8s", "6s,3s");
    })
    .await;
    let mut c = clinic(&app, "uk").await;
    let first = rotate(&app, &mut c).await;
    let first_expires = expires_at(&app, c.connection_id).await;
    assert!(
        eventually(DEADLINE, || async {
            !reminders(&smtp_state.messages()).is_empty()
        })
        .await,
        "the first reminder"
    );
    let second = rotate(&app, &mut c).await;
    let second_expires = expires_at(&app, c.connection_id).await;
    assert!(second_expires > first_expires + chrono::Duration::seconds(1));
    // The new secret's last reminder comes after the old one's would have.
    assert!(
        eventually(DEADLINE, || async {
            reminders(&smtp_state.messages())
                .iter()
                .any(|r| r.secret_version == second && r.threshold == "expired")
        })
        .await,
        "the new secret's reminders run their course"
    );
    let by = thresholds_by_connection(&reminders(&smtp_state.messages()));
    assert_eq!(
        by[&(c.connection_id, first)],
        ["6s"],
        "nothing for the old secret after its rotation"
    );
    assert_eq!(by[&(c.connection_id, second)].last().unwrap(), "expired");
    let secrets: Vec<&String> = c.secrets.iter().collect();
    assert_no_secret(&smtp_state.messages(), &secrets);
    smtp.stop().await;
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn two_worker_processes_send_each_reminder_once() {
    let redis_url = test_redis().await;
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let namespace = fresh_namespace();
    let app = TestApp::spawn_with(|c| {
        c.redis_url = Some(redis_url.clone());
        c.workers.queue_namespace = namespace.clone();
        c.run_workers = false;
        c.mail.smtp_url = Some(smtp.url());
        policy(c, "10s", "6s,3s");
    })
    .await;
    let _workers = start_workers_with(
        2,
        &app,
        &redis_url,
        &smtp.url(),
        &[
            ("MITHRIL_REMINDER_INTERVAL", "50ms"),
            ("MITHRIL_REMINDER_THRESHOLDS", "6s,3s"),
        ],
    );
    let mut clinics = Vec::new();
    for locale in ["uk", "en", "uk", "en"] {
        let mut c = clinic(&app, locale).await;
        rotate(&app, &mut c).await;
        clinics.push(c);
    }

    assert!(
        eventually(DEADLINE, || async {
            reminders(&smtp_state.messages()).len() >= 12
        })
        .await,
        "three reminders for each of four secrets: {:?}",
        thresholds_by_connection(&reminders(&smtp_state.messages()))
    );
    // Twenty more ticks of each process: nothing more goes out.
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    let messages = smtp_state.messages();
    let by = thresholds_by_connection(&reminders(&messages));
    assert_eq!(by.len(), 4, "{by:?}");
    for thresholds in by.values() {
        assert_eq!(thresholds, &["6s", "3s", "expired"], "none twice: {by:?}");
    }
    let rows = secret_reminder::Entity::find()
        .filter(secret_reminder::Column::State.eq("sent"))
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 12);

    let secrets: Vec<&String> = clinics.iter().flat_map(|c| c.secrets.iter()).collect();
    assert_no_secret(&messages, &secrets);
    let queue = dump_redis(&redis_url, &format!("{namespace}*")).await;
    assert!(
        queue.contains("remind"),
        "the reminder jobs went through Redis"
    );
    for secret in &secrets {
        assert!(!queue.contains(secret.as_str()));
    }
    smtp.stop().await;
}

/// A secret first seen inside several thresholds at once gets the nearest one only; the
/// wider ones are recorded `skipped` and never mailed (as a secret first seen inside 14d
/// and 3d gets the 3d reminder).
#[actix_web::test]
async fn a_secret_first_seen_inside_several_thresholds_gets_only_the_nearest() {
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| {
        c.mail.smtp_url = Some(smtp.url());
        // Issued with 12 s to live: inside 30 s and 20 s from the start.
        policy(c, "12s", "30s,20s");
    })
    .await;
    let mut c = clinic(&app, "en").await;
    let version = rotate(&app, &mut c).await;
    assert!(
        eventually(DEADLINE, || async {
            reminders(&smtp_state.messages())
                .iter()
                .any(|r| r.threshold == "expired")
        })
        .await,
        "the expiry reminder comes"
    );
    let by = thresholds_by_connection(&reminders(&smtp_state.messages()));
    assert_eq!(by[&(c.connection_id, version)], ["20s", "expired"]);
    let rows = secret_reminder::Entity::find()
        .filter(secret_reminder::Column::ConnectionId.eq(c.connection_id))
        .all(&app.db)
        .await
        .unwrap();
    let states: BTreeMap<String, String> =
        rows.into_iter().map(|r| (r.threshold, r.state)).collect();
    assert_eq!(states["30s"], "skipped", "{states:?}");
    assert_eq!(states["20s"], "sent", "{states:?}");
    smtp.stop().await;
}

/// Issue "ten holes", 5: a reminder whose job is being retried (the mail server refuses
/// for now) is in hand: the ticker does not push another job for it on every pass. Mail
/// down for many more ticks than retries, then up: one job, one mail.
#[actix_web::test]
async fn a_reminder_being_retried_is_not_pushed_again() {
    use std::sync::atomic::Ordering;
    let smtp_state = SmtpState::default();
    smtp_state.fail_transient.store(true, Ordering::SeqCst);
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| {
        c.mail.smtp_url = Some(smtp.url());
        // Issued with an hour to live, reminded two hours ahead: due at once; a tick
        // every 100 ms.
        policy(c, "1h", "2h");
        c.workers.retries = 100;
    })
    .await;
    let mut c = clinic(&app, "en").await;
    rotate(&app, &mut c).await;
    // Retries every 50-500 ms: ten refusals take some seconds, thirty ticks and more.
    assert!(
        eventually(DEADLINE, || async {
            smtp_state.attempts.load(Ordering::SeqCst) >= 10
        })
        .await,
        "the worker keeps trying"
    );
    smtp_state.fail_transient.store(false, Ordering::SeqCst);
    assert!(
        eventually(DEADLINE, || async {
            !reminders(&smtp_state.messages()).is_empty()
        })
        .await
    );
    let table = if crate::support::is_postgres(&app) {
        "apalis.jobs"
    } else {
        "Jobs"
    };
    let jobs = app
        .query_i64(&format!(
            "SELECT COUNT(*) FROM {table} WHERE job_type LIKE '%remind_owner'"
        ))
        .await;
    assert_eq!(
        jobs, 1,
        "one job for the reminder, however many ticks passed"
    );
    assert_eq!(reminders(&smtp_state.messages()).len(), 1);
    smtp.stop().await;
}
