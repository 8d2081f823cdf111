//! Stale-secret sightings: a retired secret that some system still presents is refused as
//! before, but counted for its connection, shown in its events, and told to its owner
//! once a day; an unknown key is none of that.
use std::time::Duration;

use entity::secret_sighting;
use futures_util::future::join_all;
use mail_parser::MessageParser;
use sea_orm::{ColumnTrait as _, EntityTrait as _, PaginatorTrait as _, QueryFilter as _};
use serde_json::Value;
use uuid::Uuid;

use crate::support::smtp::{SmtpServer, SmtpState};
use crate::support::{ALL_SCOPES, TestApp, assert_error, eventually, metric, test_redis};

async fn retired_count(app: &TestApp) -> u64 {
    metric(
        &app.get_text("/metrics").await.1,
        r#"mithril_verify_total{outcome="retired"}"#,
    )
}

/// The connection's `stale_secret_presented` entries.
async fn sightings_shown(
    app: &TestApp,
    client_id: Uuid,
    connection_id: Uuid,
    token: &str,
) -> Vec<Value> {
    let (status, body) = app
        .events(client_id, connection_id, "?page_size=300", token)
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "stale_secret_presented")
        .cloned()
        .collect()
}

/// Presents `secret` `times` times, spread over `apps`; every answer is today's refusal.
async fn present(apps: &[&TestApp], secret: &str, times: usize) {
    let answers = join_all((0..times).map(|i| apps[i % apps.len()].verify(secret))).await;
    for answer in &answers {
        assert_error(answer, 401, "access_denied", Some("invalid api-key header"));
    }
}

/// A clinic whose owner reads English, its connection, a token, and the secret that a
/// rotation without grace has just retired.
async fn retired_secret(app: &TestApp) -> (Uuid, Uuid, String, String, String, String) {
    let (client_id, owner_email) = app.client_owned_by("MSP", "en").await;
    let (connection_id, old_secret) = app.connection(client_id).await;
    let token = app.token(client_id, ALL_SCOPES).await;
    let (status, body) = app.refresh(client_id, connection_id, &token).await;
    assert_eq!(status, 200, "{body}");
    let new_secret = body["data"]["secret"].as_str().unwrap().to_owned();
    (
        client_id,
        connection_id,
        token,
        old_secret,
        new_secret,
        owner_email,
    )
}

async fn stale_notices(smtp: &SmtpState) -> Vec<String> {
    smtp.messages()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .filter(|text| text.contains("still uses a replaced secret"))
        .collect()
}

#[actix_web::test]
async fn a_retired_secret_still_presented_is_counted_shown_and_mailed_once() {
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| c.mail.smtp_url = Some(smtp.url())).await;
    let (client_id, connection_id, token, old_secret, new_secret, owner_email) =
        retired_secret(&app).await;

    let before = retired_count(&app).await;
    present(&[&app], &old_secret, 200).await;
    assert_eq!(
        retired_count(&app).await - before,
        200,
        "counted once per request"
    );

    // Shown in the connection's events within the flush interval: one entry for the day.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let shown = sightings_shown(&app, client_id, connection_id, &token).await;
            shown.len() == 1 && shown[0]["count"] == 200
        })
        .await,
        "{:?}",
        sightings_shown(&app, client_id, connection_id, &token).await
    );
    let shown = &sightings_shown(&app, client_id, connection_id, &token).await[0];
    assert_eq!(shown["reason"], "retired");
    assert_eq!(shown["last_address"], "127.0.0.1");
    assert_eq!(shown["connection_id"], connection_id.to_string());

    // One notice to the owner for the whole burst, and no second one for more.
    assert!(
        eventually(Duration::from_secs(30), || async {
            stale_notices(&smtp_state).await.len() == 1
        })
        .await
    );
    present(&[&app], &old_secret, 20).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            sightings_shown(&app, client_id, connection_id, &token).await[0]["count"] == 220
        })
        .await
    );
    // The second burst's flush is in, so a second notice would be queued by now (in the
    // flush's own transaction), whether or not a worker has mailed it yet.
    let queued = entity::outbox::Entity::find()
        .filter(entity::outbox::Column::Kind.eq("notify_stale_secret"))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(queued, 1, "at most one notice queued a connection a day");
    let stale: Vec<_> = smtp_state
        .messages()
        .into_iter()
        .filter(|m| String::from_utf8_lossy(&m.data).contains("still uses a replaced secret"))
        .collect();
    assert_eq!(stale.len(), 1, "at most one notice a connection a day");
    assert_eq!(stale[0].to, vec![owner_email]);
    let message = MessageParser::default().parse(&stale[0].data).unwrap();
    crate::mail::assert_automatic_mail(&stale[0].data, "en");
    let text = message.body_text(0).unwrap();
    assert!(text.contains(&connection_id.to_string()), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(message.body_html(0).is_some());

    // A key nobody ever had: refused the same, and no sighting.
    for _ in 0..30 {
        assert_error(
            &app.verify("a-key-nobody-had").await,
            401,
            "access_denied",
            Some("invalid api-key header"),
        );
    }
    assert!(app.verifies(&new_secret).await);
    let metrics = app.get_text("/metrics").await.1;
    assert!(metric(&metrics, r#"mithril_verify_total{outcome="unknown"}"#) >= 30);
    assert!(metric(&metrics, r#"mithril_verify_total{outcome="ok"}"#) >= 1);
    assert_eq!(
        secret_sighting::Entity::find()
            .count(&app.db)
            .await
            .unwrap(),
        1,
        "an unknown key makes no sighting"
    );

    // Never the secret: not in the sighting rows, the events, the metrics or the mail.
    let events = app
        .events(client_id, connection_id, "?page_size=300", &token)
        .await
        .1
        .to_string();
    let mail: String = smtp_state
        .messages()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    let dump = app.dump_database().await;
    for secret in [&old_secret, &new_secret, &token] {
        for (place, text) in [
            ("events", &events),
            ("metrics", &metrics),
            ("mail", &mail),
            ("database", &dump),
        ] {
            assert!(!text.contains(secret.as_str()), "a secret in the {place}");
        }
    }
    smtp.stop().await;
}

#[actix_web::test]
async fn a_deleted_connections_secret_and_an_expired_one_are_told_apart() {
    let app = TestApp::spawn_with(|c| {
        c.rotation.secret_lifetime = mithril::config::SecretLifetime::parse("2s").unwrap();
    })
    .await;
    let me = app.owned("MSP").await;
    // A secret issued under the policy: expired two seconds on.
    let (status, body) = app.refresh(me.client_id, me.connection_id, &me.token).await;
    assert_eq!(status, 200);
    let expiring = body["data"]["secret"].as_str().unwrap().to_owned();
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.verify(&expiring).await.1["error"]["message"] == "api-key expired"
        })
        .await
    );
    // Another connection, deleted: its secret is retired, for good.
    let other = app.owned("MSP").await;
    let (status, _) = app
        .delete(other.client_id, other.connection_id, &other.token)
        .await;
    assert_eq!(status, 204);
    present(&[&app], &other.secret, 3).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let expired = sightings_shown(&app, me.client_id, me.connection_id, &me.token).await;
            let deleted = secret_sighting::Entity::find()
                .all(&app.db)
                .await
                .unwrap()
                .into_iter()
                .filter(|s| s.connection_id == other.connection_id)
                .map(|s| (s.reason, s.count))
                .collect::<Vec<_>>();
            expired.len() == 1
                && expired[0]["reason"] == "expired"
                && deleted == vec![("retired".to_owned(), 3)]
        })
        .await
    );
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn two_instances_count_into_one_sighting_and_one_notice() {
    let redis_url = test_redis().await;
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let namespace = crate::support::fresh_namespace();
    let settings = |c: &mut mithril::Config| {
        c.redis_url = Some(redis_url.clone());
        c.workers.queue_namespace = namespace.clone();
        c.mail.smtp_url = Some(smtp.url());
    };
    let first = TestApp::spawn_with(settings).await;
    let second = TestApp::spawn_on(first.database.clone(), settings).await;
    let (client_id, connection_id, token, old_secret, _, _) = retired_secret(&first).await;
    present(&[&first, &second], &old_secret, 200).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let shown = sightings_shown(&first, client_id, connection_id, &token).await;
            shown.len() == 1 && shown[0]["count"] == 200
        })
        .await,
        "{:?}",
        sightings_shown(&first, client_id, connection_id, &token).await
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            stale_notices(&smtp_state).await.len() == 1
        })
        .await
    );
    // Both instances' counts are in (200): one of them created the day's row, and only
    // that one queued a notice.
    let queued = entity::outbox::Entity::find()
        .filter(entity::outbox::Column::Kind.eq("notify_stale_secret"))
        .count(&first.db)
        .await
        .unwrap();
    assert_eq!(queued, 1);
    assert_eq!(stale_notices(&smtp_state).await.len(), 1);
    smtp.stop().await;
}
