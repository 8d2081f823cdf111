//! Finished work leaves after `MITHRIL_RETENTION`: settled outbox rows with their notice
//! records, dispatched invalidations, finished jobs in the database queue or in Redis.
//! The audit trail stays.
use std::time::Duration;

use entity::{connection_event, outbox, sent_notification};
use sea_orm::{ConnectionTrait as _, EntityTrait as _, PaginatorTrait as _};

use crate::support::smtp::{SmtpServer, SmtpState};
use crate::support::{TestApp, eventually, fresh_namespace, is_postgres, optional_test_redis};

/// Finished jobs the queue still holds: rows of the database queue, or the keys of the
/// namespace's finished jobs in Redis.
async fn finished_jobs(app: &TestApp, redis_url: Option<&str>, namespace: &str) -> usize {
    if let Some(url) = redis_url {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{namespace}:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        return keys
            .iter()
            .filter(|k| {
                k.ends_with(":data")
                    || k.ends_with(":done")
                    || k.ends_with(":dead")
                    || k.contains(":meta:")
            })
            .count();
    }
    let table = if is_postgres(app) {
        "apalis.jobs"
    } else {
        "Jobs"
    };
    let row = app
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            app.db.get_database_backend(),
            format!("SELECT count(*) FROM {table}"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap() as usize
}

/// With a retention of one second (the setting is this test's purpose), five rotations'
/// notices go out once each, then everything finished is pruned; the audit trail stays.
#[actix_web::test]
async fn finished_work_is_pruned_after_the_retention() {
    let redis_url = optional_test_redis().await;
    let namespace = fresh_namespace();
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| {
        c.mail.smtp_url = Some(smtp.url());
        c.redis_url = redis_url.clone();
        c.workers.queue_namespace = namespace.clone();
        c.rotation.reconcile_after = Duration::from_secs(1);
        c.workers.retention = Duration::from_secs(1);
    })
    .await;
    let me = app.owned("MSP").await;
    for _ in 0..5 {
        let (status, body) = app.refresh(me.client_id, me.connection_id, &me.token).await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            smtp_state.count() == 5
        })
        .await,
        "five notices"
    );
    let pruned = eventually(Duration::from_secs(60), || async {
        outbox::Entity::find().count(&app.db).await.unwrap() == 0
            && sent_notification::Entity::find()
                .count(&app.db)
                .await
                .unwrap()
                == 0
            && finished_jobs(&app, redis_url.as_deref(), &namespace).await == 0
    })
    .await;
    assert!(
        pruned,
        "outbox rows {}, notice records {}, finished jobs {}",
        outbox::Entity::find().count(&app.db).await.unwrap(),
        sent_notification::Entity::find()
            .count(&app.db)
            .await
            .unwrap(),
        finished_jobs(&app, redis_url.as_deref(), &namespace).await
    );
    assert_eq!(smtp_state.count(), 5, "nothing mailed twice");
    assert_eq!(
        connection_event::Entity::find()
            .count(&app.db)
            .await
            .unwrap(),
        5,
        "the audit trail stays"
    );
    smtp.stop().await;
}
