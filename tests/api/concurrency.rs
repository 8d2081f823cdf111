//! Concurrent refreshes of one connection, on one instance and on two sharing a database.
use std::collections::BTreeSet;
use std::time::Duration;

use entity::{connection, connection_event};
use futures_util::future::join_all;
use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _};

use crate::support::{Owned, TestApp, eventually};

const REFRESHES: usize = 100;

async fn assert_gap_free(app: &TestApp, me: &Owned, secrets: &[String]) {
    let versions: BTreeSet<i64> = connection_event::Entity::find()
        .filter(connection_event::Column::ConnectionId.eq(me.connection_id))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.secret_version.unwrap())
        .collect();
    let expected: BTreeSet<i64> = (1..=REFRESHES as i64).collect();
    assert_eq!(versions, expected, "versions 1..=100, no gap, no repeat");
    let row = connection::Entity::find_by_id(me.connection_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.secret_version, REFRESHES as i64);

    let distinct: BTreeSet<&String> = secrets.iter().collect();
    assert_eq!(
        distinct.len(),
        REFRESHES,
        "every 200 returned its own secret"
    );
    let mut still_valid = 0;
    for secret in secrets {
        if app.verifies(secret).await {
            still_valid += 1;
        }
    }
    assert_eq!(still_valid, 1, "exactly one returned secret still verifies");
}

async fn refresh_all(apps: &[&TestApp], me: &Owned) -> Vec<String> {
    let calls = (0..REFRESHES).map(|i| {
        let app = apps[i % apps.len()];
        async move { app.refresh(me.client_id, me.connection_id, &me.token).await }
    });
    join_all(calls)
        .await
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, 200, "{body}");
            body["data"]["secret"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[actix_web::test]
async fn hundred_concurrent_refreshes_on_one_instance_lose_nothing() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let secrets = refresh_all(&[&app], &me).await;
    assert_gap_free(&app, &me, &secrets).await;
}

#[actix_web::test]
async fn hundred_concurrent_refreshes_over_two_instances_lose_nothing() {
    let first = TestApp::spawn().await;
    let second = TestApp::spawn_on(first.database.clone(), |_| {}).await;
    let me = first.owned("MSP").await;
    let secrets = refresh_all(&[&first, &second], &me).await;
    assert_gap_free(&first, &me, &secrets).await;
}

#[actix_web::test]
async fn per_client_actors_stop_after_their_idle_timeout() {
    // The shortest idle timeout the settings allow (MITHRIL_ACTOR_IDLE_TIMEOUT ≥ 1s).
    let app = TestApp::spawn_with(|c| c.rotation.actor_idle_timeout = Duration::from_secs(1)).await;
    let a = app.owned("MSP").await;
    let b = app.owned("MSP").await;
    for me in [&a, &b] {
        let (status, _) = app.refresh(me.client_id, me.connection_id, &me.token).await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        app.state.connections.active_actors().await,
        2,
        "one actor per client"
    );
    let stopped = eventually(Duration::from_secs(10), || async {
        app.state.connections.active_actors().await == 0
    })
    .await;
    assert!(stopped, "idle actors stop");
    // And a new request starts one again.
    let (status, _) = app.refresh(a.client_id, a.connection_id, &a.token).await;
    assert_eq!(status, 200);
}
