//! Issue "A refresh a caller can safely retry": `Idempotency-Key` on refresh_secret.
use std::time::Duration;

use entity::connection_event;
use sea_orm::{ColumnTrait as _, EntityTrait as _, PaginatorTrait as _, QueryFilter as _};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::notices::sent_rotation_notices;
use crate::support::{Owned, TestApp, eventually, into_parts, refresh_path};

const KEY: &str = "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"";

/// PATCH refresh_secret with `Idempotency-Key: key` (raw header value) and `body`.
async fn refresh_keyed(
    app: &TestApp,
    owned: &Owned,
    token: &str,
    key: &str,
    body: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut request = app
        .http
        .patch(app.refresh_url(
            &owned.client_id.to_string(),
            &owned.connection_id.to_string(),
        ))
        .bearer_auth(token)
        .header("idempotency-key", key);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = into_parts(response).await;
    (status, body, replayed)
}

async fn version(app: &TestApp, owned: &Owned) -> i64 {
    entity::connection::Entity::find_by_id(owned.connection_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .secret_version
}

async fn rotations(app: &TestApp, owned: &Owned) -> u64 {
    connection_event::Entity::find()
        .filter(connection_event::Column::ConnectionId.eq(owned.connection_id))
        .filter(connection_event::Column::Kind.eq("secret_refreshed"))
        .count(&app.db)
        .await
        .unwrap()
}

fn secret(body: &Value) -> String {
    body["data"]["secret"].as_str().unwrap().to_owned()
}

#[actix_web::test]
async fn an_answer_lost_after_the_commit_is_given_again_and_nothing_rotates_twice() {
    let app = TestApp::spawn().await;
    let owned = app.owned("MSP").await;
    let before = version(&app, &owned).await;
    // A caller whose answer is lost after the commit: it sends, and hangs up without
    // reading once the rotation has committed.
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "PATCH {} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nIdempotency-Key: {KEY}\r\nContent-Length: 0\r\n\r\n",
        refresh_path(owned.client_id, owned.connection_id),
        owned.token
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            version(&app, &owned).await == before + 1
        })
        .await,
        "the first request's rotation commits"
    );
    drop(socket);

    let (status, body, replayed) = refresh_keyed(&app, &owned, &owned.token, KEY, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(replayed.as_deref(), Some("true"));
    let secret = secret(&body);
    assert!(app.verifies(&secret).await, "the one rotation's secret");
    assert!(!app.verifies(&owned.secret).await);
    assert_eq!(version(&app, &owned).await, before + 1, "one rotation");
    assert_eq!(rotations(&app, &owned).await, 1, "one audit event");
    assert!(
        eventually(Duration::from_secs(20), || async {
            sent_rotation_notices(&app).await == 1
        })
        .await,
        "one notice"
    );
    // Once more: the same answer again, still one of everything.
    let (status, again, replayed) = refresh_keyed(&app, &owned, &owned.token, KEY, None).await;
    assert_eq!((status, replayed.as_deref()), (200, Some("true")));
    assert_eq!(again["data"], body["data"]);
    assert_eq!(rotations(&app, &owned).await, 1);
    // Presenting the retired secret above may add a stale-secret notice, a flush later;
    // what must stay one is the rotation's.
    assert_eq!(sent_rotation_notices(&app).await, 1);
}

#[actix_web::test]
async fn twenty_requests_with_one_key_on_two_instances_rotate_once() {
    let first = TestApp::spawn().await;
    let second = TestApp::spawn_on(first.database.clone(), |_| {}).await;
    let owned = first.owned("MSP").await;
    let before = version(&first, &owned).await;
    let answers = futures_util::future::join_all((0..20).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        refresh_keyed(app, &owned, &owned.token, KEY, None)
    }))
    .await;
    let mut secrets = std::collections::HashSet::new();
    for (status, body, _) in &answers {
        match status {
            200 => {
                secrets.insert(secret(body));
            }
            409 => assert_eq!(body["error"]["type"], "conflict", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(
        version(&first, &owned).await,
        before + 1,
        "exactly one rotation"
    );
    assert_eq!(rotations(&first, &owned).await, 1);
    assert!(
        secrets.len() <= 1,
        "every 200 carries the one secret: {secrets:?}"
    );
    // Whoever got 409 retries and gets the answer.
    let (status, body, replayed) = refresh_keyed(&second, &owned, &owned.token, KEY, None).await;
    assert_eq!((status, replayed.as_deref()), (200, Some("true")), "{body}");
    assert!(secrets.is_empty() || secrets.contains(&secret(&body)));
    assert!(first.verifies(&secret(&body)).await);
}

#[actix_web::test]
async fn a_key_is_bound_to_its_body_and_its_connection() {
    let app = TestApp::spawn().await;
    let owned = app.owned("MSP").await;
    let (status, first, _) = refresh_keyed(
        &app,
        &owned,
        &owned.token,
        KEY,
        Some(r#"{"grace_period": 60}"#),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    // The same body, spelled otherwise, is the same request.
    let (status, same, replayed) = refresh_keyed(
        &app,
        &owned,
        &owned.token,
        KEY,
        Some(r#"{ "grace_period" : 60 }"#),
    )
    .await;
    assert_eq!((status, replayed.as_deref()), (200, Some("true")), "{same}");
    assert_eq!(secret(&same), secret(&first));
    let (status, other, _) = refresh_keyed(&app, &owned, &owned.token, KEY, None).await;
    assert_eq!(status, 422, "{other}");
    assert_eq!(other["error"]["type"], "validation_failed");
    assert_eq!(other["error"]["invalid"][0]["entry"], "Idempotency-Key");
    assert_eq!(other["error"]["invalid"][0]["entry_type"], "header");
    // The same key on another connection of the same client is another key.
    let (elsewhere, _) = app.connection(owned.client_id).await;
    let second = Owned {
        connection_id: elsewhere,
        ..owned
    };
    let (status, body, replayed) = refresh_keyed(&app, &second, &second.token, KEY, None).await;
    assert_eq!((status, replayed), (200, None), "{body}");
    assert_ne!(secret(&body), secret(&first));
}

#[actix_web::test]
async fn a_replay_checks_the_caller_again() {
    let app = TestApp::spawn().await;
    let owned = app.owned("MSP").await;
    let (status, _, _) = refresh_keyed(&app, &owned, &owned.token, KEY, None).await;
    assert_eq!(status, 200);
    let (status, body, _) = refresh_keyed(&app, &owned, "no-such-token", KEY, None).await;
    assert_eq!(status, 401, "{body}");
    let scope = "connection:refresh_secret";
    let past = chrono::Utc::now() - chrono::Duration::minutes(1);
    let expired = app.token_with(owned.client_id, scope, past, false).await;
    let (status, body, _) = refresh_keyed(&app, &owned, &expired, KEY, None).await;
    assert_eq!(status, 401, "an expired token: {body}");
    let soon = chrono::Utc::now() + chrono::Duration::hours(1);
    let blocked = app.token_with(owned.client_id, scope, soon, true).await;
    let (status, body, _) = refresh_keyed(&app, &owned, &blocked, KEY, None).await;
    assert_eq!(status, 401, "a blocked user's token: {body}");
    let stranger = app.owned("MSP").await;
    let (status, body, _) = refresh_keyed(&app, &owned, &stranger.token, KEY, None).await;
    assert_eq!(status, 403, "{body}");
    let read_only = app.token(owned.client_id, "connection:read").await;
    let (status, body, _) = refresh_keyed(&app, &owned, &read_only, KEY, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(rotations(&app, &owned).await, 1);
}

#[actix_web::test]
async fn a_replay_takes_nothing_from_the_budget_and_a_refused_request_is_not_remembered() {
    let app = TestApp::spawn_with(|c| {
        c.rotation.refresh_limit = mithril::config::RateLimit::parse("1/min").unwrap();
    })
    .await;
    let owned = app.owned("MSP").await;
    let (status, first, _) = refresh_keyed(&app, &owned, &owned.token, KEY, None).await;
    assert_eq!(status, 200, "{first}");
    let (status, again, replayed) = refresh_keyed(&app, &owned, &owned.token, KEY, None).await;
    assert_eq!(
        (status, replayed.as_deref()),
        (200, Some("true")),
        "{again}"
    );
    // The budget is spent: a new key is refused, and not remembered...
    let other_key = "\"another-key-of-some-length\"";
    let (status, refused, _) = refresh_keyed(&app, &owned, &owned.token, other_key, None).await;
    assert_eq!(status, 429, "{refused}");
    let (status, refused, replayed) =
        refresh_keyed(&app, &owned, &owned.token, other_key, None).await;
    assert_eq!((status, replayed), (429, None), "{refused}");
    assert_eq!(rotations(&app, &owned).await, 1);
}

#[actix_web::test]
async fn after_its_ttl_a_key_rotates_again() {
    // The setting is what this test is about: a second, not the default hour.
    let app = TestApp::spawn_with(|c| {
        c.rotation.idempotency_ttl = Duration::from_secs(1);
    })
    .await;
    let owned = app.owned("MSP").await;
    let (status, first, _) = refresh_keyed(&app, &owned, &owned.token, KEY, None).await;
    assert_eq!(status, 200, "{first}");
    let last = std::cell::RefCell::new(None);
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (status, body, replayed) =
                refresh_keyed(&app, &owned, &owned.token, KEY, None).await;
            assert_eq!(status, 200, "{body}");
            *last.borrow_mut() = Some(body);
            replayed.is_none()
        })
        .await,
        "the key is forgotten after its TTL"
    );
    assert_ne!(secret(&last.into_inner().unwrap()), secret(&first));
    assert_eq!(rotations(&app, &owned).await, 2);
}

#[actix_web::test]
async fn malformed_keys_are_422_naming_the_header() {
    let app = TestApp::spawn().await;
    let owned = app.owned("MSP").await;
    for bad in [
        "\"too-short\"",
        "\"unterminated-string-of-keys",
        "\"has a space in the middle\"",
        "\"quote\"inside-the-string-here\"",
        "\"bad\\escape-in-the-string-here\"",
        &format!("\"{}\"", "k".repeat(256)),
    ] {
        let (status, body, _) = refresh_keyed(&app, &owned, &owned.token, bad, None).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(
            body["error"]["invalid"][0]["entry"], "Idempotency-Key",
            "{body}"
        );
    }
    assert_eq!(rotations(&app, &owned).await, 0, "nothing rotated");
    // A bare token of the same characters, and escapes, are keys.
    for good in [
        "bare-token-of-sixteen+",
        "\"escaped-\\\"-and-\\\\-chars\"",
        &format!("\"{}\"", "k".repeat(255)),
    ] {
        let (status, body, replayed) = refresh_keyed(&app, &owned, &owned.token, good, None).await;
        assert_eq!((status, replayed), (200, None), "{good}: {body}");
    }
}

#[actix_web::test]
async fn neither_the_key_nor_the_secret_is_stored_readable() {
    let app = TestApp::spawn().await;
    let owned = app.owned("MSP").await;
    let key = "my-very-own-idempotency-key-0042";
    let (status, body, _) =
        refresh_keyed(&app, &owned, &owned.token, &format!("\"{key}\""), None).await;
    assert_eq!(status, 200, "{body}");
    let issued = secret(&body);
    let dump = app.dump_database().await;
    assert!(
        dump.contains(&mithril::connections::idempotency::fingerprint(0)),
        "the dump reaches the remembered answer's row"
    );
    assert!(!dump.contains(key), "the key is not stored");
    assert!(!dump.contains(&issued), "the secret is not stored readable");
    let rows = app
        .query_i64("SELECT COUNT(*) FROM idempotent_refreshes WHERE state = 'done'")
        .await;
    assert_eq!(rows, 1);
}

/// A `running` marker as a first request leaves it: its lease until `lease_until`, its
/// body `fingerprint`.
async fn first_request_marker(
    app: &TestApp,
    owned: &Owned,
    key: &str,
    fingerprint: String,
    lease_until: chrono::DateTime<chrono::Utc>,
) {
    use entity::idempotent_refresh;
    use sea_orm::ActiveValue::Set;
    let material = mithril::connections::idempotency::KeyMaterial::derive(
        key,
        owned.client_id,
        owned.connection_id,
    )
    .unwrap();
    let now = chrono::Utc::now();
    idempotent_refresh::Entity::insert(idempotent_refresh::ActiveModel {
        lookup: Set(material.lookup().to_owned()),
        client_id: Set(owned.client_id),
        connection_id: Set(owned.connection_id),
        fingerprint: Set(fingerprint),
        state: Set(idempotent_refresh::state::RUNNING.to_owned()),
        attempt: Set(uuid::Uuid::now_v7()),
        sealed: Set(None),
        lease_until: Set(Some(lease_until)),
        expires_at: Set(now + chrono::Duration::hours(1)),
        created_at: Set(now),
    })
    .exec_without_returning(&app.db)
    .await
    .unwrap();
}

#[actix_web::test]
async fn a_first_request_that_died_lets_its_key_go_after_its_lease_whatever_its_body() {
    use mithril::connections::idempotency::fingerprint;
    let app = TestApp::spawn().await;
    let owned = app.owned("MSP").await;
    let key = "8e03978e-40d5-43e8-bc93-6894a57f9324";
    // Its lease still runs: in progress.
    let soon = chrono::Utc::now() + chrono::Duration::seconds(30);
    first_request_marker(&app, &owned, key, fingerprint(0), soon).await;
    let (status, body, _) = refresh_keyed(&app, &owned, &owned.token, KEY, None).await;
    assert_eq!(status, 409, "{body}");
    // Another key whose first request died (lease over), with another body: processed.
    let other = "another-first-request-that-died";
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    first_request_marker(&app, &owned, other, fingerprint(60), past).await;
    let (status, body, replayed) =
        refresh_keyed(&app, &owned, &owned.token, &format!("\"{other}\""), None).await;
    assert_eq!((status, replayed), (200, None), "{body}");
    assert_eq!(rotations(&app, &owned).await, 1);
}

#[actix_web::test]
async fn a_short_ttl_does_not_cut_a_running_rotations_marker() {
    // The setting is the point: a TTL shorter than the running marker's lease.
    let app = TestApp::spawn_with(|c| {
        c.rotation.idempotency_ttl = Duration::from_secs(1);
    })
    .await;
    let owned = app.owned("MSP").await;
    let key = "8e03978e-40d5-43e8-bc93-6894a57f9324";
    let material = mithril::connections::idempotency::KeyMaterial::derive(
        key,
        owned.client_id,
        owned.connection_id,
    )
    .unwrap();
    // What `begin` writes for a first request, through the service itself.
    let begun = app.state.connections.begin_once(material, 0).await.unwrap();
    assert!(matches!(
        begun,
        mithril::connections::idempotency::Begun::Fresh(_)
    ));
    // Past the TTL, the first request (still running) holds the key: 409, not a
    // second rotation.
    let (status, body, _) = refresh_keyed(&app, &owned, &owned.token, KEY, None).await;
    assert_eq!(status, 409, "{body}");
    // Its marker outlives the TTL for as long as its lease: a retry past the TTL finds it.
    let marker = entity::idempotent_refresh::Entity::find()
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let lease = mithril::connections::idempotency::RUNNING_LEASE;
    assert!(
        marker.expires_at >= marker.created_at + chrono::Duration::from_std(lease).unwrap(),
        "{marker:?}"
    );
    assert_eq!(rotations(&app, &owned).await, 0);
}
