//! A secret's life only moves forward: whatever order or number of times invalidations,
//! re-points and jobs land in, a retired secret stays refused; rotations run only for
//! callers still waiting; a notice is sent once and never lost to a queue that forgot it.
use std::sync::Arc;
use std::time::Duration;

use entity::{connection, outbox};
use futures_util::future::join_all;
use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _};
use serde_json::json;
use uuid::Uuid;

use kernel::credentials::redis_cache::RedisCredentials;
use kernel::jobs::InvalidateCredentials;
use kernel::redis_connect::RedisKeys;
use mithril::secrets::SecretDigest;

use crate::support::smtp::{SmtpServer, SmtpState};
use crate::support::{
    Owned, TestApp, eventually, fresh_namespace, test_redis, two_instances_on_redis, warm,
};

async fn secret_of(app: &TestApp, me: &Owned, grace: u64) -> String {
    let (status, body) = app
        .refresh_with_grace(me.client_id, me.connection_id, &me.token, grace)
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["secret"].as_str().unwrap().to_owned()
}

/// The `invalidate_credentials` payloads written for one connection, oldest first.
async fn invalidation_jobs(app: &TestApp, connection_id: Uuid) -> Vec<serde_json::Value> {
    outbox::Entity::find()
        .filter(outbox::Column::Kind.eq("invalidate_credentials"))
        .order_by_asc(outbox::Column::CreatedAt)
        .order_by_asc(outbox::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.payload)
        .filter(|p| p["invalidation"]["connection"]["id"] == json!(connection_id))
        .collect()
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn invalidations_applied_in_reverse_and_twice_leave_retired_secrets_refused() {
    let redis_url = test_redis().await;
    let (first, second) = two_instances_on_redis(&redis_url).await;
    let me = first.owned("MSP").await;
    for app in [&first, &second] {
        assert!(app.verifies(&me.secret).await);
    }
    // S0 stays valid for an hour, S1 is new; then at once S0 and S1 retire, S2 is new.
    let s1 = secret_of(&first, &me, 3600).await;
    let s2 = secret_of(&first, &me, 0).await;
    let jobs = invalidation_jobs(&first, me.connection_id).await;
    assert_eq!(jobs.len(), 2);

    // The jobs land late, newest first, each twice: as retries, sweeper re-pushes and
    // several worker processes can make them. First straight into Redis (and, through
    // its channel, every local cache), then as the job handler runs them.
    let redis = kernel::redis_connect::connect(&redis_url).await.unwrap();
    let shared = RedisCredentials::new(
        redis.manager.clone(),
        RedisKeys::new(&first.state.config.workers.queue_namespace),
        Duration::from_secs(60),
    );
    let invalidator = workers::run::Invalidator {
        db: first.db.clone(),
        redis: Some(shared.clone()),
        local: None,
    };
    let jobs: Vec<InvalidateCredentials> = jobs
        .into_iter()
        .map(|job| serde_json::from_value(job).unwrap())
        .collect();
    for job in jobs.iter().rev().chain(jobs.iter().rev()) {
        shared.apply(&job.change).await.unwrap();
        invalidator.apply(job).await.unwrap();
    }
    for (secret, name) in [(&me.secret, "S0"), (&s1, "S1")] {
        let (entry, _) = shared
            .get(SecretDigest::of(secret).as_str())
            .await
            .unwrap()
            .expect("a cached entry");
        assert!(entry.is_retired(), "{name} is retired in Redis: {entry:?}");
    }
    for app in [&first, &second] {
        for _ in 0..2 {
            assert!(!app.verifies(&me.secret).await, "S0 came back");
            assert!(!app.verifies(&s1).await, "S1 came back");
            assert!(app.verifies(&s2).await);
        }
    }
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn a_late_re_point_rewrite_does_not_revive_a_secret_a_rotation_retired() {
    let redis_url = test_redis().await;
    let (first, second) = two_instances_on_redis(&redis_url).await;
    let me = first.owned("MSP").await;
    for app in [&first, &second] {
        assert!(app.verifies(&me.secret).await);
    }
    let (status, _) = first
        .repoint(
            me.client_id,
            me.connection_id,
            "https://new.example.org/cb",
            &me.token,
        )
        .await;
    assert_eq!(status, 200);
    let s1 = secret_of(&first, &me, 0).await;
    // The re-point's change (its rewrite of the cached view, which names the secret it
    // saw as current), landing after the rotation's: straight into Redis and, through
    // its channel, every local cache.
    let repoint: InvalidateCredentials =
        serde_json::from_value(invalidation_jobs(&first, me.connection_id).await[0].clone())
            .unwrap();
    assert!(
        repoint
            .change
            .still_valid
            .iter()
            .any(|v| v.digest == SecretDigest::of(&me.secret).as_str()),
        "the re-point's change names the secret it saw as current"
    );
    let redis = kernel::redis_connect::connect(&redis_url).await.unwrap();
    RedisCredentials::new(
        redis.manager.clone(),
        RedisKeys::new(&first.state.config.workers.queue_namespace),
        Duration::from_secs(60),
    )
    .apply(&repoint.change)
    .await
    .unwrap();
    for app in [&first, &second] {
        for _ in 0..2 {
            assert!(
                !app.verifies(&me.secret).await,
                "the retired secret came back"
            );
            assert!(app.verifies(&s1).await);
        }
    }
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn re_points_racing_grace_0_rotations_leave_every_old_secret_refused() {
    let redis_url = test_redis().await;
    let (first, second) = two_instances_on_redis(&redis_url).await;
    let mut owned = Vec::new();
    for _ in 0..40 {
        owned.push(first.owned("MSP").await);
    }
    for me in &owned {
        for app in [&first, &second] {
            assert!(app.verifies(&me.secret).await);
        }
    }
    // Each connection: a re-point on one instance and a grace-0 rotation on the other,
    // at once.
    let rounds = owned.iter().map(|me| {
        let (first, second) = (&first, &second);
        async move {
            let (repointed, rotated) = futures_util::join!(
                first.repoint(
                    me.client_id,
                    me.connection_id,
                    "https://race.example.org/cb",
                    &me.token
                ),
                second.refresh(me.client_id, me.connection_id, &me.token)
            );
            assert_eq!(repointed.0, 200);
            assert_eq!(rotated.0, 200);
            rotated.1["data"]["secret"].as_str().unwrap().to_owned()
        }
    });
    let new_secrets = join_all(rounds).await;
    // Every instance learns each change through Redis's channel within moments; a
    // revived secret would stay accepted for the cache's whole TTL.
    for (me, new_secret) in owned.iter().zip(&new_secrets) {
        for app in [&first, &second] {
            assert!(
                eventually(Duration::from_secs(5), || async {
                    !app.verifies(&me.secret).await
                        && app.verify(new_secret).await.1["data"]["redirect_uri"]
                            == "https://race.example.org/cb"
                })
                .await,
                "an old secret still verifies, or the new one shows a stale view"
            );
        }
    }
}

#[actix_web::test]
async fn callers_who_give_up_leave_no_rotation_beyond_those_answered() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let path = format!(
        "/api/clients/{}/connections/{}/actions/refresh_secret",
        me.client_id, me.connection_id
    );
    let request = format!(
        "PATCH {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {}\r\ncontent-length: 0\r\n\r\n",
        me.token
    );
    let address = app.address.trim_start_matches("http://").to_owned();
    // The token is known already, so every request reaches the client's actor at once.
    assert_eq!(
        app.show(me.client_id, me.connection_id, &me.token).await.0,
        200
    );
    // The row is held, as a slow database would: the first rotation waits on it, the
    // others wait in the client's actor behind it, and their callers give up.
    let held = hold_row(&app, me.connection_id).await;
    // Every caller is connected before any sends, so every request reaches the server;
    // each then waits for its answer and hangs up (long enough for the server to route
    // every request to the actor, even on a loaded machine; the row stays held).
    let mut callers = Vec::new();
    for _ in 0..150 {
        callers.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    let answers = join_all(callers.into_iter().map(|mut stream| {
        let request = request.clone();
        async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut head = [0u8; 12];
            let answered =
                tokio::time::timeout(Duration::from_millis(200), stream.read_exact(&mut head))
                    .await;
            matches!(answered, Ok(Ok(_))) && head.starts_with(b"HTTP/1.1 200")
        }
    }))
    .await;
    let answered = answers.iter().filter(|a| **a).count() as i64;
    // Once the server has seen every caller go, the row is let go.
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.get_text("/metrics").await.1.contains(&format!(
                r#"secret_refreshes_total{{outcome="abandoned"}} {}"#,
                150 - answered
            ))
        })
        .await,
        "the server sees every caller who gave up"
    );
    held.rollback().await.unwrap();
    // One more, patient: the actor runs its mailbox in order, so once this one answers
    // every earlier request has been run or skipped.
    let (status, _) = app.refresh(me.client_id, me.connection_id, &me.token).await;
    assert_eq!(status, 200);
    let row = connection::Entity::find_by_id(me.connection_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "{answered} of 150 answered in time; {} rotations committed",
        row.secret_version - 1
    );
    assert!(
        row.secret_version - 1 <= answered + 1,
        "{} rotations committed for {answered} callers still waiting (one may have been in flight)",
        row.secret_version - 1
    );
}

/// A transaction that holds a connection's row, as a rotation's own lock does.
async fn hold_row(app: &TestApp, connection_id: Uuid) -> sea_orm::DatabaseTransaction {
    use sea_orm::{QuerySelect as _, TransactionTrait as _};
    let txn = app.db.begin().await.unwrap();
    if crate::support::is_postgres(app) {
        connection::Entity::find_by_id(connection_id)
            .lock_exclusive()
            .one(&txn)
            .await
            .unwrap();
    } else {
        // SQLite: a first write takes the database's write lock.
        connection::Entity::update_many()
            .col_expr(
                connection::Column::SecretVersion,
                sea_orm::sea_query::Expr::col(connection::Column::SecretVersion),
            )
            .filter(connection::Column::Id.eq(connection_id))
            .exec(&txn)
            .await
            .unwrap();
    }
    txn
}

#[actix_web::test]
async fn two_workers_handed_the_same_notice_send_one_e_mail() {
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| {
        c.mail.smtp_url = Some(smtp.url());
        c.run_workers = false;
    })
    .await;
    let me = app.owned("MSP").await;
    secret_of(&app, &me, 0).await;
    let row = outbox::Entity::find()
        .filter(outbox::Column::Kind.eq("notify_owner"))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let job: kernel::jobs::NotifyOwner = serde_json::from_value(row.payload).unwrap();
    let notifier = || {
        Arc::new(workers::notify::Notifier {
            db: app.db.clone(),
            metrics: kernel::metrics::Registry::new(),
            mailer: workers::mail::Mailer::new(
                Some(&smtp.url()),
                &app.state.config.workers.mail_dir,
            )
            .unwrap(),
            templates: workers::mail::Templates::load(&sender()).unwrap(),
            outgoing: workers::mail::Outgoing::from_settings(&sender()).unwrap(),
            lease: kernel::settings::WorkerSettings::default().notice_lease(),
        })
    };
    let (one, two) = (notifier(), notifier());
    let outcomes = futures_util::join!(one.notify(&job), two.notify(&job));
    eprintln!("{outcomes:?}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            smtp_state.count() >= 1
        })
        .await
    );
    assert_eq!(smtp_state.count(), 1, "one e-mail for one event");
    smtp.stop().await;
}

/// A worker whose retries ran out marks the notice dead, but not while another worker
/// holds a live claim on it (a duplicate job that may yet send it): that worker's `sent`
/// must not land on a dead row.
#[actix_web::test]
async fn giving_up_a_notice_spares_another_workers_live_claim() {
    use entity::sent_notification::{self, state};
    use sea_orm::{ActiveModelTrait as _, Set};

    let app = TestApp::spawn_with(|c| c.run_workers = false).await;
    let notifier = workers::notify::Notifier {
        db: app.db.clone(),
        metrics: kernel::metrics::Registry::new(),
        mailer: workers::mail::Mailer::new(None, &app.state.config.workers.mail_dir).unwrap(),
        templates: workers::mail::Templates::load(&sender()).unwrap(),
        outgoing: workers::mail::Outgoing::from_settings(&sender()).unwrap(),
        lease: kernel::settings::WorkerSettings::default().notice_lease(),
    };
    let state_of = |event_id| {
        let db = app.db.clone();
        async move {
            sent_notification::Entity::find_by_id(event_id)
                .one(&db)
                .await
                .unwrap()
                .unwrap()
                .state
        }
    };
    let claimed = |event_id, lease_until| sent_notification::ActiveModel {
        event_id: Set(event_id),
        sent_at: Set(chrono::Utc::now()),
        state: Set(state::SENDING.to_owned()),
        lease_until: Set(Some(lease_until)),
    };

    let held = Uuid::now_v7();
    let live = chrono::Utc::now() + chrono::Duration::minutes(2);
    claimed(held, live).insert(&app.db).await.unwrap();
    notifier.give_up(held).await.unwrap();
    assert_eq!(
        state_of(held).await,
        state::SENDING,
        "a live claim is spared"
    );

    let lapsed = Uuid::now_v7();
    let gone = chrono::Utc::now() - chrono::Duration::seconds(1);
    claimed(lapsed, gone).insert(&app.db).await.unwrap();
    notifier.give_up(lapsed).await.unwrap();
    assert_eq!(
        state_of(lapsed).await,
        state::DEAD,
        "a lapsed claim is given up"
    );
}

#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn a_queue_that_forgot_its_jobs_still_delivers_within_the_reconcile_window() {
    let redis_url = test_redis().await;
    let smtp_state = SmtpState::default();
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let namespace = fresh_namespace();
    let settings = |c: &mut mithril::Config| {
        c.rotation.reconcile_after = Duration::from_secs(1);
        c.redis_url = Some(redis_url.clone());
        c.workers.queue_namespace = namespace.clone();
        c.mail.smtp_url = Some(smtp.url());
    };
    // No workers yet: the jobs wait in Redis.
    let api = TestApp::spawn_with(|c| {
        settings(c);
        c.run_workers = false;
    })
    .await;
    let me = api.owned("MSP").await;
    for _ in 0..3 {
        secret_of(&api, &me, 0).await;
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            api.query_i64("SELECT COUNT(*) FROM outbox WHERE dispatched_at IS NULL")
                .await
                == 0
        })
        .await
    );
    // Redis restarts without persistence: every queued job of this namespace is gone.
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();

    let _workers = TestApp::spawn_on(api.database.clone(), settings).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            smtp_state.count() == 3
        })
        .await,
        "the three notices arrive (received {})",
        smtp_state.count()
    );
    smtp.stop().await;
}

#[actix_web::test]
async fn a_row_that_can_never_be_pushed_does_not_stop_the_sweep() {
    let app = TestApp::spawn_with(|c| c.run_workers = false).await;
    let me = app.owned("MSP").await;
    secret_of(&app, &me, 0).await;
    let long_ago = chrono::Utc::now() - chrono::Duration::minutes(5);
    let good = outbox::Entity::find()
        .filter(outbox::Column::Kind.eq("notify_owner"))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let rows = [
        ("notify_owner", json!({"not": "a job"}), long_ago),
        ("no_such_kind", json!({}), long_ago),
        (
            "notify_owner",
            good.payload.clone(),
            long_ago + chrono::Duration::seconds(1),
        ),
    ];
    let mut ids = Vec::new();
    for (kind, payload, created_at) in rows {
        let id = Uuid::now_v7();
        ids.push(id);
        outbox::Entity::insert(outbox::ActiveModel {
            id: sea_orm::ActiveValue::Set(id),
            kind: sea_orm::ActiveValue::Set(kind.to_owned()),
            payload: sea_orm::ActiveValue::Set(payload),
            created_at: sea_orm::ActiveValue::Set(created_at),
            dispatched_at: sea_orm::ActiveValue::Set(None),
            attempts: sea_orm::ActiveValue::Set(0),
            dead_at: sea_orm::ActiveValue::Set(None),
            settled_at: sea_orm::ActiveValue::Set(None),
        })
        .exec_without_returning(&app.db)
        .await
        .unwrap();
    }
    let pushed = || async {
        outbox::Entity::find_by_id(ids[2])
            .one(&app.db)
            .await
            .unwrap()
            .unwrap()
            .dispatched_at
            .is_some()
    };
    assert!(
        eventually(Duration::from_secs(10), pushed).await,
        "the good row behind the bad ones was pushed"
    );
}

/// At shutdown, once the server stopped taking requests: rotations still queued are
/// refused, the running one finishes, and none commits after the close returns (the
/// outbox flush comes right after it).
#[actix_web::test]
async fn closing_refuses_queued_rotations_and_none_commits_after() {
    let app = Arc::new(TestApp::spawn().await);
    let me = app.owned("MSP").await;
    // The row is held, so the first rotation is still running and the others are
    // queued behind it when the close comes.
    let held = hold_row(&app, me.connection_id).await;
    let mut callers = Vec::new();
    for _ in 0..30 {
        let (app, client_id, connection_id, token) = (
            app.clone(),
            me.client_id,
            me.connection_id,
            me.token.clone(),
        );
        callers.push(actix_web::rt::spawn(async move {
            app.refresh(client_id, connection_id, &token).await.0
        }));
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.state.connections.active_actors().await == 1
        })
        .await
    );
    // The close refuses what is queued at once, then waits for the running rotation,
    // which can finish once the row is let go.
    let (finished, ()) = futures_util::join!(
        app.state.connections.close(Duration::from_secs(20)),
        async {
            held.rollback().await.unwrap();
        }
    );
    assert!(finished, "the running rotation finished");
    let at_close = connection::Entity::find_by_id(me.connection_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .secret_version;
    let mut statuses = Vec::new();
    for caller in callers {
        statuses.push(caller.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count() as i64;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(ok <= 1, "only a rotation already running: {statuses:?}");
    let after = connection::Entity::find_by_id(me.connection_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .secret_version;
    assert_eq!(after, at_close, "nothing committed after the close");
    assert_eq!(after, ok, "one version per 200");
}

/// A notice whose worker keeps retrying (the mail server refuses for now) is slow, not
/// lost: the reconciler leaves it to its job instead of pushing another one each window.
#[actix_web::test]
async fn a_notice_that_is_only_slow_is_not_pushed_again() {
    use std::sync::atomic::Ordering;
    let smtp_state = SmtpState::default();
    smtp_state.fail_transient.store(true, Ordering::SeqCst);
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| {
        c.mail.smtp_url = Some(smtp.url());
        c.rotation.reconcile_after = Duration::from_secs(1);
        c.workers.retries = 20;
    })
    .await;
    let me = app.owned("MSP").await;
    secret_of(&app, &me, 0).await;
    // Retries every half second at most: eight attempts outlast several windows.
    assert!(
        eventually(Duration::from_secs(30), || async {
            smtp_state.attempts.load(Ordering::SeqCst) >= 8
        })
        .await
    );
    let notify = outbox::Entity::find()
        .filter(outbox::Column::Kind.eq("notify_owner"))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notify.attempts, 1, "pushed once, not once per window");
    smtp_state.fail_transient.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(30), || async {
            smtp_state.count() == 1
        })
        .await
    );
    smtp.stop().await;
}

/// A worker whose queue goes away while it waits on the mail server (Redis restarting)
/// still records the notice it sent: the notice is not sent again once its claim lapses.
#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn a_notice_sent_while_the_queue_goes_away_is_sent_once() {
    use std::sync::atomic::Ordering;
    test_redis().await;
    let mut redis = crate::support::OwnRedis::start(crate::support::free_port());
    redis.wait_ready().await;
    let smtp_state = SmtpState::default();
    smtp_state.answer_delay_ms.store(1500, Ordering::SeqCst);
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| {
        c.redis_url = Some(redis.url());
        c.workers.queue_namespace = fresh_namespace();
        c.mail.smtp_url = Some(smtp.url());
        c.workers.notice_lease = 2;
        c.rotation.reconcile_after = Duration::from_secs(1);
    })
    .await;
    let me = app.owned("MSP").await;
    secret_of(&app, &me, 0).await;
    // The message is in; its sender waits for the answer when the queue goes away.
    assert!(
        eventually(Duration::from_secs(20), || async {
            smtp_state.count() == 1
        })
        .await
    );
    redis.stop();
    let port = redis.port;
    drop(redis);
    let redis = crate::support::OwnRedis::start(port);
    redis.wait_ready().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            crate::notices::sent_count(&app).await == 1
        })
        .await,
        "the notice is recorded as sent"
    );
    smtp_state.answer_delay_ms.store(0, Ordering::SeqCst);
    // Past the lease and several reconcile windows: nothing goes twice.
    let lapsed = chrono::Utc::now() + chrono::Duration::seconds(4);
    assert!(
        eventually(Duration::from_secs(20), || async {
            chrono::Utc::now() > lapsed
                && app
                    .query_i64(
                        "SELECT COUNT(*) FROM outbox WHERE kind = 'notify_owner' AND settled_at IS NOT NULL",
                    )
                    .await
                    == 1
        })
        .await,
        "the reconciler settles the notice"
    );
    assert_eq!(smtp_state.count(), 1, "sent once");
    smtp.stop().await;
}

/// The forward-only rule for valid entries, through the API: an older re-point's change
/// landing after a newer one (in Redis, on every instance's cache, through the job) never
/// puts the older `redirect_uri` back.
#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn an_older_re_point_landing_after_a_newer_one_changes_nothing() {
    let redis_url = test_redis().await;
    let (first, second) = two_instances_on_redis(&redis_url).await;
    let me = first.owned("MSP").await;
    warm(&[&first, &second], &me.secret).await;
    for uri in [
        "https://older.example.org/cb",
        "https://newer.example.org/cb",
    ] {
        let (status, body) = first
            .repoint(me.client_id, me.connection_id, uri, &me.token)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let jobs: Vec<InvalidateCredentials> = invalidation_jobs(&first, me.connection_id)
        .await
        .into_iter()
        .map(|job| serde_json::from_value(job).unwrap())
        .collect();
    assert_eq!(jobs.len(), 2);
    let redis = kernel::redis_connect::connect(&redis_url).await.unwrap();
    let shared = RedisCredentials::new(
        redis.manager.clone(),
        RedisKeys::new(&first.state.config.workers.queue_namespace),
        Duration::from_secs(60),
    );
    let invalidator = workers::run::Invalidator {
        db: first.db.clone(),
        redis: Some(shared.clone()),
        local: None,
    };
    // Newest first, then the older one late, each twice.
    for job in jobs.iter().rev().chain(jobs.iter().rev()) {
        shared.apply(&job.change).await.unwrap();
        invalidator.apply(job).await.unwrap();
    }
    let (entry, _) = shared
        .get(SecretDigest::of(&me.secret).as_str())
        .await
        .unwrap()
        .expect("a cached entry");
    assert!(!entry.is_retired());
    let cold = TestApp::spawn_on(first.database.clone(), |c| {
        c.redis_url = Some(redis_url.clone());
        c.workers.queue_namespace = first.state.config.workers.queue_namespace.clone();
    })
    .await;
    for app in [&first, &second, &cold] {
        for _ in 0..2 {
            let (status, body) = app.verify(&me.secret).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                body["data"]["redirect_uri"], "https://newer.example.org/cb",
                "{body}"
            );
        }
    }
}

/// Issue "ten holes", 8: notices still in a worker's hands (retrying through an SMTP
/// outage, say) at the head of the reconciler's scan do not starve a lost one behind them.
#[actix_web::test]
async fn notices_still_retrying_do_not_starve_a_lost_one_in_the_reconcilers_scan() {
    use chrono::Utc;
    use entity::sent_notification;
    use sea_orm::ActiveValue::Set;
    use sea_orm::sea_query::Expr;

    let app = TestApp::spawn_with(|c| {
        // Nothing runs the jobs: the notices' states are set by hand below.
        c.run_workers = false;
        c.rotation.reconcile_after = Duration::from_secs(60);
    })
    .await;
    for _ in 0..201 {
        let me = app.owned("MSP").await;
        secret_of(&app, &me, 0).await;
    }
    let notices = || async {
        outbox::Entity::find()
            .filter(outbox::Column::Kind.eq("notify_owner"))
            .order_by_asc(outbox::Column::CreatedAt)
            .order_by_asc(outbox::Column::Id)
            .all(&app.db)
            .await
            .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            notices().await.iter().all(|r| r.dispatched_at.is_some())
        })
        .await,
        "every notice is pushed"
    );
    let rows = notices().await;
    assert_eq!(rows.len(), 201);
    // Dispatched an hour ago, oldest first; the 200 oldest are in a worker's hands (claimed
    // a moment ago), the newest is lost.
    let hour_ago = Utc::now() - chrono::Duration::hours(1);
    for (i, row) in rows.iter().enumerate() {
        outbox::Entity::update_many()
            .col_expr(
                outbox::Column::DispatchedAt,
                Expr::value(hour_ago + chrono::Duration::seconds(i as i64)),
            )
            .filter(outbox::Column::Id.eq(row.id))
            .exec(&app.db)
            .await
            .unwrap();
    }
    for row in &rows[..200] {
        let event_id: Uuid = row.payload["event_id"].as_str().unwrap().parse().unwrap();
        sent_notification::Entity::insert(sent_notification::ActiveModel {
            event_id: Set(event_id),
            sent_at: Set(Utc::now()),
            state: Set(sent_notification::state::SENDING.to_owned()),
            lease_until: Set(Some(Utc::now() + chrono::Duration::minutes(2))),
        })
        .exec_without_returning(&app.db)
        .await
        .unwrap();
    }
    let pushed = app.state.relay.reconcile().await.unwrap();
    assert_eq!(pushed, 1, "the lost notice is pushed again in one pass");
    let lost = outbox::Entity::find_by_id(rows[200].id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lost.attempts, rows[200].attempts + 1);
    let held = outbox::Entity::find_by_id(rows[0].id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        held.attempts, rows[0].attempts,
        "a held notice is not pushed again"
    );
}

/// Issue "ten holes", 8: a worker killed (SIGKILL) in the middle of a send leaves its
/// claim and its job behind; with the default lease and queue settings another worker
/// sends the notice within a minute of the kill.
#[actix_web::test]
#[ignore = "needs Redis: set MITHRIL_TEST_REDIS_URL, run with --include-ignored"]
async fn a_notice_held_by_a_killed_worker_is_sent_within_a_minute() {
    use std::sync::atomic::Ordering;
    let redis_url = test_redis().await;
    let smtp_state = SmtpState::default();
    // The first worker never hears the server accept its message.
    smtp_state.answer_delay_ms.store(600_000, Ordering::SeqCst);
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let namespace = fresh_namespace();
    let api = TestApp::spawn_with(|c| {
        c.run_workers = false;
        c.redis_url = Some(redis_url.clone());
        c.workers.queue_namespace = namespace.clone();
        c.mail.smtp_url = Some(smtp.url());
    })
    .await;
    let first = crate::support::start_workers(1, &api, &redis_url, &smtp.url());
    let me = api.owned("MSP").await;
    secret_of(&api, &me, 0).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            smtp_state.count() == 1
        })
        .await,
        "the first worker is in the middle of its send"
    );
    drop(first); // SIGKILL
    let killed = std::time::Instant::now();
    smtp_state.answer_delay_ms.store(0, Ordering::SeqCst);
    let _second = crate::support::start_workers(1, &api, &redis_url, &smtp.url());
    let sent = eventually(Duration::from_secs(60), || async {
        smtp_state.count() >= 2
    })
    .await;
    eprintln!("sent again {:?} after the kill", killed.elapsed());
    assert!(sent, "the notice went out within a minute of the kill");
    smtp.stop().await;
}

/// A send slower than the claim's lease keeps its claim (renewed while it goes on): a
/// duplicate job meanwhile (here the reconciler's, its window shortened to push one)
/// finds the claim held and mails nothing. The short lease is this test's purpose.
#[actix_web::test]
async fn a_send_slower_than_its_lease_keeps_its_claim() {
    use std::sync::atomic::Ordering;
    let smtp_state = SmtpState::default();
    smtp_state.answer_delay_ms.store(5_000, Ordering::SeqCst);
    let smtp = SmtpServer::start(smtp_state.clone(), 0).await;
    let app = TestApp::spawn_with(|c| {
        c.mail.smtp_url = Some(smtp.url());
        c.workers.notice_lease = 2;
        c.rotation.reconcile_after = Duration::from_secs(1);
    })
    .await;
    let me = app.owned("MSP").await;
    secret_of(&app, &me, 0).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.query_i64("SELECT COUNT(*) FROM sent_notifications WHERE state = 'sent'")
                .await
                == 1
        })
        .await,
        "the notice is sent"
    );
    smtp_state.answer_delay_ms.store(0, Ordering::SeqCst);
    // The reconciler took the slow notice for lost and pushed it again; once that
    // duplicate job has run to its end, it has mailed or it never will.
    let jobs = if crate::support::is_postgres(&app) {
        "apalis.jobs"
    } else {
        "Jobs"
    };
    let duplicate_ran = eventually(Duration::from_secs(30), || async {
        app.query_i64(&format!(
            "SELECT COUNT(*) FROM {jobs} WHERE job_type LIKE '%notify_owner' AND status = 'Done'"
        ))
        .await
            >= 2
    })
    .await;
    assert!(duplicate_ran, "the reconciler's duplicate job ran");
    assert_eq!(smtp_state.count(), 1, "mailed once");
    smtp.stop().await;
}

/// The sender the notifiers of these tests use.
fn sender() -> kernel::settings::MailSettings {
    kernel::settings::MailSettings {
        from: "Mithril <m@example.org>".to_owned(),
        ..Default::default()
    }
}
