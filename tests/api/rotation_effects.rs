//! What a 200 leaves behind: the secrets that verify, the version, the audit event, the
//! outbox rows, and no plaintext anywhere in the database.
use std::time::Duration;

use entity::{connection, connection_event, outbox};
use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _};

use crate::support::{TestApp, assert_refused_from};

#[actix_web::test]
async fn new_secret_verifies_and_old_one_fails_at_once_without_grace() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    assert!(app.verifies(&me.secret).await);
    let (status, body) = app.refresh(me.client_id, me.connection_id, &me.token).await;
    assert_eq!(status, 200);
    let new_secret = body["data"]["secret"].as_str().unwrap();
    assert!(app.verifies(new_secret).await);
    assert!(
        !app.verifies(&me.secret).await,
        "grace 0: the old secret stops at once"
    );
}

#[actix_web::test]
async fn previous_secret_works_inside_its_grace_period_and_fails_after() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let (status, body) = app
        .refresh_with_grace(me.client_id, me.connection_id, &me.token, 2)
        .await;
    assert_eq!(status, 200);
    let new_secret = body["data"]["secret"].as_str().unwrap().to_owned();
    assert!(app.verifies(&me.secret).await, "inside the grace period");
    assert!(app.verifies(&new_secret).await, "the new one at once");

    let row = connection::Entity::find_by_id(me.connection_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let expires = row.previous_secret_expires_at.unwrap();
    // Refused once the grace period ends, and not before.
    assert_refused_from(expires, Duration::from_secs(10), || async {
        !app.verifies(&me.secret).await
    })
    .await;
    assert!(app.verifies(&new_secret).await);
}

#[actix_web::test]
async fn a_second_rotation_retires_the_secret_still_in_grace() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let (_, first) = app
        .refresh_with_grace(me.client_id, me.connection_id, &me.token, 3600)
        .await;
    let first = first["data"]["secret"].as_str().unwrap().to_owned();
    let (_, second) = app
        .refresh_with_grace(me.client_id, me.connection_id, &me.token, 3600)
        .await;
    let second = second["data"]["secret"].as_str().unwrap().to_owned();
    assert!(
        !app.verifies(&me.secret).await,
        "only one previous secret is kept"
    );
    assert!(
        app.verifies(&first).await,
        "the one just replaced is in its grace period"
    );
    assert!(app.verifies(&second).await);
}

#[actix_web::test]
async fn secret_version_increments_by_one_per_refresh() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    for expected in 1..=3 {
        let (status, _) = app.refresh(me.client_id, me.connection_id, &me.token).await;
        assert_eq!(status, 200);
        let row = connection::Entity::find_by_id(me.connection_id)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.secret_version, expected);
    }
}

#[actix_web::test]
async fn refresh_records_an_audit_event_and_two_outbox_rows_without_the_secret() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let response = app
        .http
        .patch(app.refresh_url(&me.client_id.to_string(), &me.connection_id.to_string()))
        .bearer_auth(&me.token)
        .header("x-request-id", "audit-me")
        .json(&serde_json::json!({"grace_period": 120}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let secret = body["data"]["secret"].as_str().unwrap();

    let events = connection_event::Entity::find()
        .filter(connection_event::Column::ConnectionId.eq(me.connection_id))
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.kind, "secret_refreshed");
    assert_eq!(event.client_id, me.client_id);
    assert_eq!(event.actor_client_id, me.client_id);
    assert_eq!(event.request_id, "audit-me");
    assert_eq!(event.remote_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(event.secret_version, Some(1));
    assert_eq!(event.grace_period, Some(120));

    let rows = outbox::Entity::find()
        .order_by_asc(outbox::Column::Kind)
        .all(&app.db)
        .await
        .unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["invalidate_credentials", "notify_owner"]);
    for row in &rows {
        assert_eq!(row.payload["event_id"], event.id.to_string());
        let payload = row.payload.to_string();
        assert!(
            !payload.contains(secret) && !payload.contains(&me.secret),
            "{payload}"
        );
    }
    let invalidate = &rows[0].payload["invalidation"];
    assert_eq!(invalidate["connection"]["id"], me.connection_id.to_string());
    let old_digest = mithril::secrets::SecretDigest::of(&me.secret);
    let demoted = invalidate["still_valid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["digest"] == old_digest.as_str())
        .expect("grace 120: demoted, not retired");
    assert!(demoted["valid_until"].is_string(), "{demoted}");
    assert_eq!(invalidate["retire"], serde_json::json!([]));
    assert_eq!(invalidate["version"], 1, "the connection's state version");
    let notify = rows.iter().find(|r| r.kind == "notify_owner").unwrap();
    assert_eq!(
        notify.payload["connection_id"],
        me.connection_id.to_string()
    );
    assert_eq!(notify.payload["request_id"], "audit-me");
    assert_eq!(notify.payload["consumer_id"], body["data"]["consumer_id"]);
}

#[actix_web::test]
async fn database_holds_no_plaintext_secret_or_token() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let mut issued = vec![me.secret.clone(), me.token.clone()];
    for grace in [0, 60] {
        let (status, body) = app
            .refresh_with_grace(me.client_id, me.connection_id, &me.token, grace)
            .await;
        assert_eq!(status, 200);
        issued.push(body["data"]["secret"].as_str().unwrap().to_owned());
    }
    let dump = app.dump_database().await;
    assert!(
        dump.contains("secret_refreshed"),
        "the dump reaches the audit table"
    );
    for value in &issued {
        assert!(
            !dump.contains(value.as_str()),
            "a plaintext value is stored"
        );
    }
    // The digests are what is stored.
    let digest = mithril::secrets::SecretDigest::of(&issued[3]);
    assert!(
        dump.contains(digest.as_str()),
        "the current digest is stored"
    );
}
