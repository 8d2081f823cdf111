//! The verify path's caches never let a retired secret through: not on the instance
//! that rotated, not on another one sharing Redis, and not past a grace period.
use std::time::{Duration, Instant};

use entity::connection;
use sea_orm::EntityTrait as _;

use crate::support::{
    Owned, TestApp, assert_refused_from, eventually, optional_test_redis, test_redis,
    two_instances_on_redis, warm,
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
