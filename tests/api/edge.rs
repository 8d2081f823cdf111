//! The HTTP edge as a hostile or careless caller meets it: bodies read only after the
//! checks before them, a refresh budget per client, negative caches, no-store on
//! secrets, bounded metrics, trusted proxies, 503 for database outages, and no
//! credential in `--help` or the logs.
use std::process::Command;
use std::time::Duration;

use entity::{connection, connection_event, outbox};
use reqwest::Method;
use sea_orm::{ColumnTrait as _, EntityTrait as _, PaginatorTrait as _, QueryFilter as _};
use serde_json::json;
use uuid::Uuid;

use crate::support::serve::ServeProcess;
use crate::support::{
    ALL_SCOPES, TestApp, TestDatabase, assert_error, eventually, into_parts, refresh_path,
    test_redis,
};

async fn version(app: &TestApp, connection_id: Uuid) -> i64 {
    connection::Entity::find_by_id(connection_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .secret_version
}

#[actix_web::test]
async fn an_anonymous_caller_never_has_its_body_read() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let big = format!(
        r#"{{"grace_period": 1, "pad": "{}"}}"#,
        "x".repeat(300 * 1024)
    );
    let one = format!(
        "/api/clients/{}/connections/{}",
        me.client_id, me.connection_id
    );
    let all = format!("/api/clients/{}/connections", me.client_id);
    for (method, path) in [
        (Method::PATCH, refresh_path(me.client_id, me.connection_id)),
        (Method::PUT, all),
        (Method::PATCH, one),
    ] {
        let got = app.call(method.clone(), &path, None, Some(&big)).await;
        assert_error(&got, 401, "access_denied", Some("Access denied"));
        let got = app.call(method, &path, Some("invented"), Some(&big)).await;
        assert_error(&got, 401, "access_denied", Some("Access denied"));
    }
    assert_eq!(version(&app, me.connection_id).await, 0);
}

#[actix_web::test]
async fn a_body_over_the_limit_is_413_after_the_checks_before_it() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let big = format!(
        r#"{{"grace_period": 1, "pad": "{}"}}"#,
        "x".repeat(5 * 1024)
    );
    let got = app
        .call(
            Method::PATCH,
            &refresh_path(me.client_id, me.connection_id),
            Some(&me.token),
            Some(&big),
        )
        .await;
    assert_error(&got, 413, "request_entity_too_large", None);
    let repoint = format!(
        "/api/clients/{}/connections/{}",
        me.client_id, me.connection_id
    );
    let got = app
        .call(Method::PATCH, &repoint, Some(&me.token), Some(&big))
        .await;
    assert_error(&got, 413, "request_entity_too_large", None);
    let upsert = format!("/api/clients/{}/connections", me.client_id);
    let got = app
        .call(Method::PUT, &upsert, Some(&me.token), Some(&big))
        .await;
    assert_error(&got, 413, "request_entity_too_large", None);
    // Existence answers first.
    let missing = format!(
        "/api/clients/{}/connections/{}/actions/refresh_secret",
        me.client_id,
        Uuid::new_v4()
    );
    let got = app
        .call(Method::PATCH, &missing, Some(&me.token), Some(&big))
        .await;
    assert_error(&got, 404, "not_found", None);
    assert_eq!(version(&app, me.connection_id).await, 0, "nothing rotated");
}

#[actix_web::test]
async fn answers_holding_a_secret_are_not_to_be_stored() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let consumer = app.client("MIS").await;
    let refreshed = app
        .http
        .patch(format!(
            "{}{}",
            app.address,
            refresh_path(me.client_id, me.connection_id)
        ))
        .bearer_auth(&me.token)
        .send()
        .await
        .unwrap();
    let created = app
        .http
        .put(format!(
            "{}/api/clients/{}/connections",
            app.address, me.client_id
        ))
        .bearer_auth(&me.token)
        .json(&json!({"consumer_id": consumer, "redirect_uri": "https://x.example.org/cb"}))
        .send()
        .await
        .unwrap();
    for (response, status) in [(refreshed, 200), (created, 201)] {
        assert_eq!(response.status(), status);
        let headers = response.headers();
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(headers["pragma"], "no-cache");
    }
}

#[actix_web::test]
async fn invented_methods_and_paths_leave_a_bounded_set_of_metrics() {
    let app = TestApp::spawn().await;
    for i in 0..25 {
        let method = Method::from_bytes(format!("XQ{i}Z").as_bytes()).unwrap();
        app.http
            .request(method, format!("{}/health/live", app.address))
            .send()
            .await
            .unwrap();
        app.http
            .get(format!("{}/no/such/path/{i}", app.address))
            .send()
            .await
            .unwrap();
    }
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(!metrics.contains("XQ"), "an invented method became a label");
    assert!(
        !metrics.contains("/no/such/path"),
        "a raw path became a label"
    );
    assert!(metrics.contains(r#"method="other""#), "{metrics}");
    assert!(metrics.contains(r#"route="unmatched""#), "{metrics}");
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .count();
    assert!(
        series <= 4,
        "{series} request series for two routes:\n{metrics}"
    );
}

#[actix_web::test]
async fn a_client_that_spent_its_refresh_budget_gets_429_and_nothing_happens() {
    let app = TestApp::spawn_with(|c| {
        c.rotation.refresh_limit = mithril::config::RateLimit::parse("3/min").unwrap();
    })
    .await;
    let me = app.owned("MSP").await;
    let other = app.owned("MSP").await;
    for _ in 0..3 {
        let (status, _) = app.refresh(me.client_id, me.connection_id, &me.token).await;
        assert_eq!(status, 200);
    }
    let refused = app
        .http
        .patch(format!(
            "{}{}",
            app.address,
            refresh_path(me.client_id, me.connection_id)
        ))
        .bearer_auth(&me.token)
        .send()
        .await
        .unwrap();
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    let got = into_parts(refused).await;
    assert_error(&got, 429, "too_many_requests", Some("Too many requests"));
    // Nothing committed, audited or queued for the refused one.
    assert_eq!(version(&app, me.connection_id).await, 3);
    let events = connection_event::Entity::find()
        .filter(connection_event::Column::ConnectionId.eq(me.connection_id))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(events, 3);
    assert_eq!(outbox::Entity::find().count(&app.db).await.unwrap(), 6);
    // Another client's budget is its own.
    let (status, _) = app
        .refresh(other.client_id, other.connection_id, &other.token)
        .await;
    assert_eq!(status, 200);
    // Existence still answers before the budget.
    let missing = format!(
        "/api/clients/{}/connections/{}/actions/refresh_secret",
        me.client_id,
        Uuid::new_v4()
    );
    let got = app
        .call(Method::PATCH, &missing, Some(&me.token), None)
        .await;
    assert_error(&got, 404, "not_found", None);
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains(r#"secret_refreshes_total{outcome="rate_limited"} 1"#),
        "{metrics}"
    );
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn instances_sharing_redis_share_one_budget() {
    let redis_url = test_redis().await;
    let limit = mithril::config::RateLimit::parse("4/min").unwrap();
    let first = TestApp::spawn_with(|c| {
        c.redis_url = Some(redis_url.clone());
        c.rotation.refresh_limit = limit;
    })
    .await;
    let second = TestApp::spawn_on(first.database.clone(), |c| {
        c.redis_url = Some(redis_url.clone());
        c.rotation.refresh_limit = limit;
    })
    .await;
    let me = first.owned("MSP").await;
    for app in [&first, &second, &first, &second] {
        let (status, _) = app.refresh(me.client_id, me.connection_id, &me.token).await;
        assert_eq!(status, 200);
    }
    for app in [&first, &second] {
        let got = app.refresh(me.client_id, me.connection_id, &me.token).await;
        assert_error(&got, 429, "too_many_requests", None);
    }
    assert_eq!(version(&first, me.connection_id).await, 4);
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn without_an_answer_from_redis_the_local_budget_decides() {
    test_redis().await;
    let mut redis = crate::support::OwnRedis::start(crate::support::free_port());
    redis.wait_ready().await;
    let app = TestApp::spawn_with(|c| {
        c.redis_url = Some(redis.url());
        c.rotation.refresh_limit = mithril::config::RateLimit::parse("2/min").unwrap();
    })
    .await;
    let me = app.owned("MSP").await;
    redis.stop();
    for _ in 0..2 {
        let (status, body) = app.refresh(me.client_id, me.connection_id, &me.token).await;
        assert_eq!(status, 200, "{body}");
    }
    let got = app.refresh(me.client_id, me.connection_id, &me.token).await;
    assert_error(&got, 429, "too_many_requests", None);
}

#[actix_web::test]
async fn unknown_tokens_and_keys_are_remembered_as_unknown_for_a_moment() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let token = format!("token-{}", Uuid::new_v4().simple());
    let key = format!("key-{}", Uuid::new_v4().simple());
    let got = app.refresh(me.client_id, me.connection_id, &token).await;
    assert_error(&got, 401, "access_denied", None);
    assert!(!app.verifies(&key).await);

    // Both appear in the database now (as only a seed of known plaintexts can make
    // happen): the instance still answers from its negative caches, without asking.
    let (user, consumer) = (Uuid::new_v4(), app.client("MIS").await);
    app.load(mithril::seed::SeedFile {
        users: vec![mithril::seed::SeedUser {
            id: user,
            email: "late@example.org".into(),
            locale: "en".into(),
            is_blocked: false,
        }],
        tokens: vec![mithril::seed::SeedToken {
            value: token.clone(),
            user_id: user,
            client_id: me.client_id,
            scope: ALL_SCOPES.into(),
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        }],
        connections: vec![mithril::seed::SeedConnection {
            id: Uuid::new_v4(),
            client_id: me.client_id,
            consumer_id: consumer,
            redirect_uri: "https://late.example.org/cb".into(),
            secret: Some(key.clone()),
        }],
        ..Default::default()
    })
    .await;
    let got = app.refresh(me.client_id, me.connection_id, &token).await;
    assert_error(&got, 401, "access_denied", None);
    assert!(
        !app.verifies(&key).await,
        "answered from the negative cache"
    );
    // For a moment only.
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.refresh(me.client_id, me.connection_id, &token).await.0 == 200
                && app.verifies(&key).await
        })
        .await
    );
}

#[actix_web::test]
async fn the_audited_address_comes_from_forwarding_headers_of_trusted_proxies_only() {
    let trusting = TestApp::spawn_with(|c| {
        c.http.trusted_proxies = mithril::config::parse_networks("127.0.0.1/32").unwrap();
    })
    .await;
    let distrusting = TestApp::spawn_on(trusting.database.clone(), |_| {}).await;
    let me = trusting.owned("MSP").await;
    let cases = [
        (&trusting, "203.0.113.9", "203.0.113.9"),
        (&trusting, "6.6.6.6, 198.51.100.4", "198.51.100.4"),
        (&distrusting, "203.0.113.9", "127.0.0.1"),
    ];
    for (n, (app, forwarded, audited)) in cases.into_iter().enumerate() {
        let request_id = format!("proxy-{n}");
        let response = app
            .http
            .patch(format!(
                "{}{}",
                app.address,
                refresh_path(me.client_id, me.connection_id)
            ))
            .bearer_auth(&me.token)
            .header("x-forwarded-for", forwarded)
            .header("x-request-id", &request_id)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let event = connection_event::Entity::find()
            .filter(connection_event::Column::RequestId.eq(request_id))
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            event.remote_address.as_deref(),
            Some(audited),
            "{forwarded}"
        );
    }
}

#[actix_web::test]
#[ignore = "needs PostgreSQL: set MITHRIL_TEST_POSTGRES_URL, run with --include-ignored"]
async fn a_database_that_drops_every_connection_is_503_never_500() {
    use sea_orm::{ConnectionTrait as _, QuerySelect as _, TransactionTrait as _};
    let base = std::env::var("MITHRIL_TEST_POSTGRES_URL")
        .expect("this test needs MITHRIL_TEST_POSTGRES_URL");
    let app = TestApp::spawn().await;
    assert!(crate::support::is_postgres(&app));
    let mut owned = Vec::new();
    for _ in 0..8 {
        owned.push(app.owned("MSP").await);
    }
    // Another session holds every row, so the refreshes below are in the middle of a
    // query (waiting on the lock) when their connections are cut.
    let outsider = sea_orm::Database::connect(app.state.config.database.url.as_str())
        .await
        .unwrap();
    let held = outsider.begin().await.unwrap();
    for me in &owned {
        connection::Entity::find_by_id(me.connection_id)
            .lock_exclusive()
            .one(&held)
            .await
            .unwrap();
    }
    let database = app
        .state
        .config
        .database
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let admin = sea_orm::Database::connect(base.as_str()).await.unwrap();
    let holder: i32 = {
        let row = held
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT pg_backend_pid()",
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index(0).unwrap()
    };
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{database}' AND pid <> {holder} AND pid <> pg_backend_pid()"
    );
    let burst = futures_util::future::join_all(owned.iter().map(|me| {
        let app = &app;
        async move {
            let refreshed = app
                .refresh(me.client_id, me.connection_id, &me.token)
                .await
                .0;
            let verified = app.verify(&format!("unknown-{}", Uuid::new_v4())).await.0;
            [refreshed, verified]
        }
    }));
    let cut = async {
        // Once the refreshes wait on their rows, cut every connection of the app's.
        assert!(
            eventually(Duration::from_secs(10), || async {
                let waiting = admin
                    .query_one_raw(sea_orm::Statement::from_string(
                        sea_orm::DatabaseBackend::Postgres,
                        format!(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' \
                             AND wait_event_type = 'Lock'"
                        ),
                    ))
                    .await
                    .unwrap()
                    .unwrap()
                    .try_get_by_index::<i64>(0)
                    .unwrap();
                waiting >= 1
            })
            .await,
            "refreshes wait on the held rows"
        );
        admin.execute_unprepared(&terminate).await.unwrap();
        held.rollback().await.unwrap();
    };
    let (answers, ()) = futures_util::join!(burst, cut);
    let statuses: Vec<u16> = answers.into_iter().flatten().collect();
    assert!(
        statuses.iter().all(|s| [200, 401, 503].contains(s)),
        "only answers and 503s: {statuses:?}"
    );
    assert!(
        statuses.contains(&503),
        "the cut reached a query in flight: {statuses:?}"
    );
    let me = &owned[0];
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.refresh(me.client_id, me.connection_id, &me.token)
                .await
                .0
                == 200
        })
        .await,
        "a 200 again once the database is back"
    );
}

#[actix_web::test]
async fn passwords_in_settings_reach_neither_help_nor_logs() {
    let secrets = [
        (
            "DATABASE_URL",
            "postgres://app:s3cret-db@db.internal/mithril",
        ),
        ("REDIS_URL", "redis://:s3cret-redis@cache.internal:6379"),
        ("SMTP_URL", "smtps://mailer:s3cret-smtp@mail.internal:465"),
    ];
    for binary in [
        env!("CARGO_BIN_EXE_mithril"),
        crate::support::workers_binary().to_str().unwrap(),
    ] {
        for args in [&["--help"][..], &["serve", "--help"]] {
            if binary.ends_with("workers") && args.len() > 1 {
                continue;
            }
            let mut command = Command::new(binary);
            command.args(args);
            for (name, value) in secrets {
                command.env(name, value);
            }
            let output = command.output().unwrap();
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            assert!(text.contains("SMTP_URL"), "{binary} {args:?}: {text}");
            assert!(
                !text.contains("s3cret"),
                "{binary} {args:?} printed a password: {text}"
            );
        }
    }
    // A served instance names its mail server in the log, without the password.
    let database = TestDatabase::new().await;
    let serve = ServeProcess::start(
        database.dir.path(),
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("SMTP_URL", "smtp://mailer:s3cret-smtp@127.0.0.1:1"),
            ("MITHRIL_DRAIN_DELAY", "0s"),
        ],
    )
    .await;
    let (_, lines) = serve.stop();
    let listening = lines
        .iter()
        .find(|l| l.contains("mithril listening"))
        .unwrap();
    assert!(
        listening.contains("smtp://mailer:***@127.0.0.1:1"),
        "{listening}"
    );
    assert!(lines.iter().all(|l| !l.contains("s3cret")), "{lines:?}");
}
