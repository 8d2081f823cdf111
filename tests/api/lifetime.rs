//! The secret lifetime policy: a secret issued under it expires at issue + lifetime, by
//! the clock, through every cache, and verify says "api-key expired"; callers see the
//! expiry in a header and the audit trail; a grace period never outlives the secret it
//! keeps.
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::connection;
use reqwest::Method;
use sea_orm::EntityTrait as _;
use serde_json::Value;
use uuid::Uuid;

use crate::support::{
    ALL_SCOPES, Owned, TestApp, assert_error, assert_schema, into_parts, optional_test_redis,
    refresh_path, warm,
};

const EXPIRES_HEADER: &str = "x-secret-expires-at";

fn lifetime(text: &str) -> mithril::config::SecretLifetime {
    mithril::config::SecretLifetime::parse(text).unwrap()
}

/// A call whose answer's headers matter: status, `x-secret-expires-at`, body.
async fn call_with_expiry(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Option<DateTime<Utc>>, Value) {
    let mut request = app
        .http
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let expires = response.headers().get(EXPIRES_HEADER).map(|v| {
        DateTime::parse_from_rfc3339(v.to_str().unwrap())
            .unwrap_or_else(|e| panic!("{EXPIRES_HEADER} is not RFC 3339: {v:?}: {e}"))
            .with_timezone(&Utc)
    });
    let (status, body) = into_parts(response).await;
    (status, expires, body)
}

/// Rotates `me`'s secret (with `grace` seconds); returns the new secret and the expiry
/// its answer announced.
async fn rotate(app: &TestApp, me: &Owned, grace: u64) -> (String, Option<DateTime<Utc>>) {
    let (status, expires, body) = call_with_expiry(
        app,
        Method::PATCH,
        &refresh_path(me.client_id, me.connection_id),
        &me.token,
        Some(serde_json::json!({"grace_period": grace})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_schema("connection_with_secret_show_response.json", &body);
    (body["data"]["secret"].as_str().unwrap().to_owned(), expires)
}

async fn row(app: &TestApp, id: Uuid) -> connection::Model {
    connection::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
}

/// Verifies `secret` on every instance, round after round, until well past `at`: every
/// round that ended before `at` must be accepted, every round that began at or after it
/// must be refused with `message`. So the refusal comes at the instant, never before.
async fn refused_from_the_instant(
    apps: &[&TestApp],
    secret: &str,
    at: DateTime<Utc>,
    message: &str,
) {
    let give_up = at + chrono::Duration::seconds(10);
    let mut refused_rounds = 0;
    while refused_rounds < 5 {
        let began = Utc::now();
        let mut answers = Vec::new();
        for app in apps {
            answers.push(app.verify(secret).await);
        }
        let ended = Utc::now();
        if ended < at {
            for (status, body) in &answers {
                assert_eq!(*status, 200, "refused before its expiry {at}: {body}");
            }
        } else if began >= at {
            for answer in &answers {
                assert_error(answer, 401, "access_denied", Some(message));
            }
            refused_rounds += 1;
        }
        assert!(Utc::now() < give_up, "still not refused 10 s after {at}");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn a_secret_expires_at_issue_plus_lifetime_through_every_cache() {
    let redis_url = optional_test_redis().await;
    let with_redis = |c: &mut mithril::Config| {
        c.rotation.secret_lifetime = lifetime("3s");
        c.redis_url = redis_url.clone();
    };
    let first = TestApp::spawn_with(with_redis).await;
    let second = TestApp::spawn_on(first.database.clone(), with_redis).await;
    // Verifies nothing until the secret has expired: its answer comes from Redis (when
    // configured) or the database, not from a cache of its own.
    let cold = TestApp::spawn_on(first.database.clone(), with_redis).await;
    let me = first.owned("MSP").await;
    assert!(
        row(&first, me.connection_id)
            .await
            .secret_expires_at
            .is_none(),
        "seeded before any policy: no expiry"
    );

    let issued = Utc::now();
    let (secret, announced) = rotate(&first, &me, 0).await;
    let stored = row(&first, me.connection_id).await.secret_expires_at;
    let expires = announced.expect("the refresh answer names the expiry");
    assert_eq!(stored, Some(expires), "the header is the stored expiry");
    let lifetime = expires - issued;
    assert!(
        lifetime >= chrono::Duration::seconds(3) && lifetime < chrono::Duration::seconds(4),
        "issue + 3 s: {lifetime}"
    );

    let warm_apps = [&first, &second];
    warm(&warm_apps, &secret).await;
    refused_from_the_instant(&warm_apps, &secret, expires, "api-key expired").await;
    let got = cold.verify(&secret).await;
    assert_error(&got, 401, "access_denied", Some("api-key expired"));
    for app in [&first, &second, &cold] {
        let got = app.verify("not-a-secret-of-anyone").await;
        assert_error(&got, 401, "access_denied", Some("invalid api-key header"));
    }

    // The warm instances answered from their own caches.
    let (_, metrics) = first.get_text("/metrics").await;
    assert!(
        metrics.contains(r#"mithril_credentials_cache_total{layer="local"}"#),
        "{metrics}"
    );

    // Rotating an expired secret works, and its successor verifies. The expired one is
    // now a replaced one: so it says where the rotation reaches at once (the rotating
    // instance; every instance, through Redis); elsewhere it stays refused as expired
    // until the local entry ends.
    let (fresh, _) = rotate(&second, &me, 0).await;
    for app in [&first, &second, &cold] {
        assert!(app.verifies(&fresh).await);
        let got = app.verify(&secret).await;
        let message =
            (redis_url.is_some() || std::ptr::eq(app, &second)).then_some("invalid api-key header");
        assert_error(&got, 401, "access_denied", message);
    }
}

#[actix_web::test]
async fn a_grace_period_never_outlives_the_replaced_secrets_lifetime() {
    let app = TestApp::spawn_with(|c| c.rotation.secret_lifetime = lifetime("3s")).await;
    let me = app.owned("MSP").await;
    let (old, old_expires) = rotate(&app, &me, 0).await;
    let old_expires = old_expires.unwrap();
    warm(&[&app], &old).await;
    // A week of grace asked for; the old secret has 3 s left.
    let (new, new_expires) = rotate(&app, &me, 7 * 24 * 3600).await;
    assert!(app.verifies(&new).await && app.verifies(&old).await);
    let stored = row(&app, me.connection_id).await;
    assert_eq!(stored.previous_secret_expires_at, Some(old_expires));
    assert_eq!(stored.secret_expires_at, new_expires);
    assert!(new_expires.unwrap() > old_expires);
    // Past its own expiry the old secret is a replaced one, not an expired one.
    refused_from_the_instant(&[&app], &old, old_expires, "invalid api-key header").await;
}

#[actix_web::test]
async fn callers_see_the_expiry_in_a_header_and_the_audit_trail() {
    let app = TestApp::spawn_with(|c| c.rotation.secret_lifetime = lifetime("180d")).await;
    let client_id = app.client("MSP").await;
    let token = app.token(client_id, ALL_SCOPES).await;
    let consumer = app.client("MIS").await;
    let collection = format!("/api/clients/{client_id}/connections");
    let upsert = |uri: &str| serde_json::json!({"consumer_id": consumer, "redirect_uri": uri});

    let before = Utc::now();
    let (status, created_expiry, body) = call_with_expiry(
        &app,
        Method::PUT,
        &collection,
        &token,
        Some(upsert("https://mis.example.org/cb")),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_schema("connection_with_secret_show_response.json", &body);
    let connection_id: Uuid = body["data"]["id"].as_str().unwrap().parse().unwrap();
    let created_expiry = created_expiry.expect("the creation answer names the expiry");
    let days = (created_expiry - before).num_days();
    assert!((179..=180).contains(&days), "{days}");
    assert_eq!(
        row(&app, connection_id).await.secret_expires_at,
        Some(created_expiry)
    );

    let one = format!("{collection}/{connection_id}");
    for (method, path, body, status) in [
        (Method::GET, one.clone(), None, 200),
        (
            Method::PUT,
            collection.clone(),
            Some(upsert("https://mis.example.org/v2")),
            200,
        ),
        (
            Method::PATCH,
            one.clone(),
            Some(serde_json::json!({"redirect_uri": "https://mis.example.org/v3"})),
            200,
        ),
        (
            Method::GET,
            format!("{collection}?consumer_id={consumer}"),
            None,
            200,
        ),
    ] {
        let (got, expiry, answer) =
            call_with_expiry(&app, method.clone(), &path, &token, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert_eq!(expiry, Some(created_expiry), "{method} {path}");
        assert!(
            answer["data"].get("secret_expires_at").is_none(),
            "no extra field"
        );
    }
    let (_, expiry, list) = call_with_expiry(&app, Method::GET, &collection, &token, None).await;
    assert_eq!(expiry, None, "a list of many has no single expiry");
    assert_schema("connections_list_response.json", &list);
    let (_, show_expiry, show) = call_with_expiry(&app, Method::GET, &one, &token, None).await;
    assert_eq!(show_expiry, Some(created_expiry));
    assert_schema("connection_show_response.json", &show);

    let (status, rotated_expiry, _) = call_with_expiry(
        &app,
        Method::PATCH,
        &refresh_path(client_id, connection_id),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let rotated_expiry = rotated_expiry.unwrap();
    assert!(rotated_expiry > created_expiry);

    let (status, events) = app.events(client_id, connection_id, "", &token).await;
    assert_eq!(status, 200, "{events}");
    let by_kind = |kind: &str| {
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} event: {events}"))
            .clone()
    };
    let at = |event: &Value| {
        DateTime::parse_from_rfc3339(event["secret_expires_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    assert_eq!(at(&by_kind("created")), created_expiry);
    assert_eq!(at(&by_kind("secret_refreshed")), rotated_expiry);
    assert!(by_kind("updated")["secret_expires_at"].is_null());

    // Without a policy, no header at all.
    let off = TestApp::spawn().await;
    let me = off.owned("MSP").await;
    let (_, expiry, _) = call_with_expiry(
        &off,
        Method::PATCH,
        &refresh_path(me.client_id, me.connection_id),
        &me.token,
        None,
    )
    .await;
    assert_eq!(expiry, None);
    let (_, expiry, _) = call_with_expiry(
        &off,
        Method::GET,
        &format!(
            "/api/clients/{}/connections/{}",
            me.client_id, me.connection_id
        ),
        &me.token,
        None,
    )
    .await;
    assert_eq!(expiry, None);
}

#[actix_web::test]
async fn the_openapi_document_names_the_expiry_header() {
    let app = TestApp::spawn().await;
    let (status, text) = app.get_text("/api/openapi.json").await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&text).unwrap();
    let paths = &doc["paths"];
    let header = |path: &str, method: &str, status: &str| {
        paths[path][method]["responses"][status]["headers"][EXPIRES_HEADER].clone()
    };
    for (path, method, status) in [
        (
            "/api/clients/{id}/connections/{connection_id}/actions/refresh_secret",
            "patch",
            "200",
        ),
        (
            "/api/clients/{id}/connections/{connection_id}",
            "get",
            "200",
        ),
        (
            "/api/clients/{id}/connections/{connection_id}",
            "patch",
            "200",
        ),
        ("/api/clients/{id}/connections", "put", "201"),
        ("/api/clients/{id}/connections", "put", "200"),
        ("/api/clients/{id}/connections", "get", "200"),
    ] {
        let documented = header(path, method, status);
        assert_eq!(
            documented["schema"]["type"], "string",
            "{method} {path} {status}: {documented}"
        );
        assert!(
            documented["description"]
                .as_str()
                .is_some_and(|d| d.contains("lifetime policy")),
            "{documented}"
        );
    }
    let verify = &paths["/api/connections/actions/verify"]["post"]["responses"]["401"];
    assert!(
        verify["description"]
            .as_str()
            .unwrap()
            .contains("api-key expired"),
        "{verify}"
    );
}

#[actix_web::test]
async fn seed_issues_secrets_under_the_policy() {
    let database = std::sync::Arc::new(crate::support::TestDatabase::new().await);
    let before = Utc::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mithril"))
        .args(["seed", "--demo"])
        .env("DATABASE_URL", &database.url)
        .env("MITHRIL_SECRET_LIFETIME", "30d")
        .env_remove("REDIS_URL")
        .env_remove("SMTP_URL")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let app = TestApp::spawn_on(database, |_| {}).await;
    let demo = row(&app, mithril::seed::DEMO_CONNECTION_ID).await;
    let expires = demo.secret_expires_at.expect("the demo secret expires");
    let days = (expires - before).num_days();
    assert!((29..=30).contains(&days), "{days}");

    // Seeding again keeps the secret, and so its expiry. Off the test's runtime thread,
    // which the app shares: a task of it frozen mid-transaction would hold SQLite's
    // write lock against the command.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mithril"));
    command
        .args(["seed", "--demo"])
        .env("DATABASE_URL", &app.state.config.database.url)
        .env("MITHRIL_SECRET_LIFETIME", "90d")
        .env_remove("REDIS_URL")
        .env_remove("SMTP_URL");
    let again = actix_web::rt::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        row(&app, mithril::seed::DEMO_CONNECTION_ID)
            .await
            .secret_expires_at,
        Some(expires)
    );
}
