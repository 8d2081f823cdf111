//! The verify path's caches never let a retired secret through: not on the instance
//! that rotated, not on another one sharing Redis, and not past a grace period.
use std::time::{Duration, Instant};

use entity::connection;
use sea_orm::EntityTrait as _;

use crate::support::{
    OwnRedis, Owned, TestApp, assert_refused_from, eventually, free_port, metric,
    optional_test_redis, test_redis, two_instances_on_redis, warm,
};

async fn refused_everywhere(apps: &[&TestApp], secret: &str) -> bool {
    for app in apps {
        if app.verifies(secret).await {
            return false;
        }
    }
    true
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn a_retired_secret_is_refused_by_every_instance_within_a_second() {
    let redis_url = test_redis().await;
    let (first, second) = two_instances_on_redis(&redis_url).await;
    let me: Owned = first.owned("MSP").await;
    warm(&[&first, &second], &me.secret).await;

    let (status, body) = first
        .refresh(me.client_id, me.connection_id, &me.token)
        .await;
    assert_eq!(status, 200);
    let new_secret = body["data"]["secret"].as_str().unwrap();
    let started = Instant::now();
    let both = [&first, &second];
    assert!(
        eventually(Duration::from_secs(1), || refused_everywhere(
            &both, &me.secret
        ))
        .await,
        "the old secret is refused by both instances within 1 s"
    );
    eprintln!(
        "old secret refused everywhere after {:?}",
        started.elapsed()
    );
    assert!(first.verifies(new_secret).await && second.verifies(new_secret).await);
}

#[actix_web::test]
async fn a_grace_period_ends_on_time_through_every_cache() {
    let redis_url = optional_test_redis().await;
    let first = match &redis_url {
        Some(url) => TestApp::spawn_with(|c| c.redis_url = Some(url.clone())).await,
        None => TestApp::spawn().await,
    };
    let second = match &redis_url {
        Some(url) => Some(
            TestApp::spawn_on(first.database.clone(), |c| c.redis_url = Some(url.clone())).await,
        ),
        None => None,
    };
    let apps: Vec<&TestApp> = std::iter::once(&first).chain(second.as_ref()).collect();
    let me = first.owned("MSP").await;
    warm(&apps, &me.secret).await;

    let (status, body) = first
        .refresh_with_grace(me.client_id, me.connection_id, &me.token, 2)
        .await;
    assert_eq!(status, 200);
    let new_secret = body["data"]["secret"].as_str().unwrap().to_owned();
    let row = connection::Entity::find_by_id(me.connection_id)
        .one(&first.db)
        .await
        .unwrap()
        .unwrap();
    let expires = row.previous_secret_expires_at.unwrap();

    for app in &apps {
        assert!(
            app.verifies(&me.secret).await,
            "accepted inside the grace period"
        );
    }
    assert_refused_from(expires, Duration::from_secs(5), || {
        refused_everywhere(&apps, &me.secret)
    })
    .await;
    for app in &apps {
        assert!(app.verifies(&new_secret).await);
    }
}

#[actix_web::test]
async fn a_cached_secret_is_refused_on_the_same_instance_at_once() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    warm(&[&app], &me.secret).await;
    let (status, _) = app.refresh(me.client_id, me.connection_id, &me.token).await;
    assert_eq!(status, 200);
    assert!(
        !app.verifies(&me.secret).await,
        "no poll needed on the instance that rotated"
    );
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn with_redis_the_rotating_instance_refuses_the_old_secret_at_once() {
    let redis_url = test_redis().await;
    let (first, second) = two_instances_on_redis(&redis_url).await;
    let me = first.owned("MSP").await;
    // Every layer holds the old secret: both local caches and Redis.
    warm(&[&first, &second], &me.secret).await;
    let (status, _) = first
        .refresh(me.client_id, me.connection_id, &me.token)
        .await;
    assert_eq!(status, 200);
    assert!(
        !first.verifies(&me.secret).await,
        "no poll needed on the instance that rotated, with Redis too"
    );
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn a_re_point_reaches_every_instances_cache() {
    let redis_url = test_redis().await;
    let (first, second) = two_instances_on_redis(&redis_url).await;
    let me = first.owned("MSP").await;
    warm(&[&first, &second], &me.secret).await;

    let response = first
        .http
        .patch(format!(
            "{}/api/clients/{}/connections/{}",
            first.address, me.client_id, me.connection_id
        ))
        .bearer_auth(&me.token)
        .json(&serde_json::json!({"redirect_uri": "https://new.example.org/cb"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for app in [&first, &second] {
        assert!(
            eventually(Duration::from_secs(1), || async {
                app.verify(&me.secret).await.1["data"]["redirect_uri"]
                    == "https://new.example.org/cb"
            })
            .await,
            "verify answers with the new redirect_uri on every instance"
        );
    }
}

/// Verifies answered by the database so far (a miss of every cache).
async fn store_lookups(app: &TestApp) -> u64 {
    metric(
        &app.get_text("/metrics").await.1,
        r#"mithril_credentials_cache_total{layer="store"}"#,
    )
}

/// Verifies `secret` (which must verify) for `period`, a few every 10 ms; returns how many
/// of them the database answered.
async fn store_lookups_while_verifying(app: &TestApp, secret: &str, period: Duration) -> u64 {
    let before = store_lookups(app).await;
    let until = Instant::now() + period;
    while Instant::now() < until {
        assert!(app.verifies(secret).await);
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    store_lookups(app).await - before
}

/// Issue "ten holes", 7: while Redis is down, the local cache is cleared once when the
/// link drops and once when it is back, not on every reconnect attempt between (each
/// clear sends every verify to the database, after waiting on Redis).
#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn while_redis_is_down_the_local_cache_is_cleared_once_not_on_every_attempt() {
    test_redis().await;
    let port = free_port();
    let mut redis = OwnRedis::start(port);
    redis.wait_ready().await;
    let app = TestApp::spawn_with(|c| c.redis_url = Some(redis.url())).await;
    let me = app.owned("MSP").await;
    warm(&[&app], &me.secret).await;

    redis.stop();
    // The drop clears the cache: a verify goes to the database once.
    let before = store_lookups(&app).await;
    let cleared = eventually(Duration::from_secs(10), || async {
        assert!(app.verifies(&me.secret).await);
        store_lookups(&app).await > before
    })
    .await;
    assert!(cleared, "the local cache is cleared when Redis goes away");
    // The follower tries again after 0.1, 0.2, 0.4 … 3.2 s: none of those clears it.
    let again = store_lookups_while_verifying(&app, &me.secret, Duration::from_secs(7)).await;
    assert_eq!(
        again, 0,
        "verifies answered by the database while Redis stayed down"
    );
    assert!(!app.state.connections.redis_link_up());

    // Back: cleared once more (messages were missed), then local again.
    let _redis = OwnRedis::start(port);
    let back = eventually(Duration::from_secs(15), || async {
        app.state.connections.redis_link_up()
    })
    .await;
    assert!(back, "the follower subscribes again");
    let after = store_lookups_while_verifying(&app, &me.secret, Duration::from_secs(1)).await;
    assert_eq!(after, 1, "one database read after Redis came back");
    let (_, metrics) = app.get_text("/metrics").await;
    assert_eq!(metric(&metrics, "mithril_redis_link_up"), 1);
}
