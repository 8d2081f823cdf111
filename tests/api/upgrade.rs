//! A database written by a previous release (schema of migration 8, or 11) migrates in place,
//! on either backend, and every row keeps its meaning: secrets still verify, tokens still
//! work, the audit trail and sent notices are intact, and jobs in the outbox still go.
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use entity::{connection, connection_event, outbox, secret_reminder, sent_notification};
use mail_parser::MessageParser;
use migration::{Migrator, MigratorTrait as _};
use mithril::secrets::SecretDigest;
use mithril::seed::{self, SeedClient, SeedFile, SeedToken, SeedUser};
use sea_orm::sea_query::{Alias, Query};
use sea_orm::{ColumnTrait as _, ConnectionTrait as _, EntityTrait as _, QueryFilter as _, Value};
use serde_json::json;
use uuid::Uuid;
use workers::local_time::ShownTime;

use crate::support::{ALL_SCOPES, TestApp, TestDatabase, eventually, optional_test_redis};

/// Inserts one row into `table` as the previous release's schema has it.
async fn insert(db: &sea_orm::DatabaseConnection, table: &str, row: Vec<(&str, Value)>) {
    let (columns, values): (Vec<_>, Vec<_>) = row.into_iter().unzip();
    let statement = Query::insert()
        .into_table(Alias::new(table))
        .columns(columns.into_iter().map(Alias::new))
        .values_panic(values.into_iter().map(Into::into))
        .to_owned();
    db.execute(&statement).await.unwrap();
}

/// A `secret_refreshed` audit event as the previous releases wrote it.
struct OldRefresh {
    event_id: Uuid,
    connection_id: Uuid,
    client_id: Uuid,
    owner: Uuid,
    request_id: &'static str,
    secret_version: i64,
    grace_period: i64,
    occurred_at: chrono::DateTime<Utc>,
}

async fn insert_refreshed(db: &sea_orm::DatabaseConnection, event: OldRefresh) {
    insert(
        db,
        "connection_events",
        vec![
            ("id", event.event_id.into()),
            ("connection_id", event.connection_id.into()),
            ("client_id", event.client_id.into()),
            ("kind", "secret_refreshed".into()),
            ("actor_user_id", event.owner.into()),
            ("actor_client_id", event.client_id.into()),
            ("request_id", event.request_id.into()),
            ("remote_address", Option::<String>::None.into()),
            ("secret_version", Some(event.secret_version).into()),
            ("grace_period", Some(event.grace_period).into()),
            ("occurred_at", event.occurred_at.into()),
        ],
    )
    .await;
}

/// An outbox row of a previous release, written a minute ago and not yet pushed.
async fn insert_pending_job(
    db: &sea_orm::DatabaseConnection,
    id: Uuid,
    kind: &str,
    payload: serde_json::Value,
) {
    insert(
        db,
        "outbox",
        vec![
            ("id", id.into()),
            ("kind", kind.into()),
            ("payload", payload.into()),
            (
                "created_at",
                (Utc::now() - chrono::Duration::minutes(1)).into(),
            ),
            (
                "dispatched_at",
                Option::<chrono::DateTime<Utc>>::None.into(),
            ),
            ("attempts", 0i32.into()),
        ],
    )
    .await;
}

/// An owner reading `locale`, their clinic (MSP) and a MIS, and a token of the clinic
/// with every scope: `(owner, clinic, mis, token)`. Users, clients and tokens have the
/// same shape in every release so far: the seed writes them.
async fn people(db: &sea_orm::DatabaseConnection, locale: &str) -> (Uuid, Uuid, Uuid, String) {
    let (owner, client_id, consumer_id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let token = format!("token-{}", Uuid::new_v4().simple());
    let client = |id, name: &str, client_type: &str| SeedClient {
        id,
        name: name.into(),
        client_type: client_type.into(),
        user_id: owner,
        is_blocked: false,
    };
    seed::load(
        db,
        SeedFile {
            users: vec![SeedUser {
                id: owner,
                email: "owner@example.org".into(),
                locale: locale.into(),
                is_blocked: false,
            }],
            clients: vec![
                client(client_id, "Clinic", "MSP"),
                client(consumer_id, "MIS", "MIS"),
            ],
            tokens: vec![SeedToken {
                value: token.clone(),
                user_id: owner,
                client_id,
                scope: ALL_SCOPES.into(),
                expires_at: Utc::now() + chrono::Duration::hours(1),
            }],
            ..SeedFile::default()
        },
    )
    .await
    .unwrap();
    (owner, client_id, consumer_id, token)
}

#[actix_web::test]
async fn a_database_of_the_previous_release_migrates_and_keeps_its_meaning() {
    let database = Arc::new(TestDatabase::new().await);
    let db = mithril::db::connect(&mithril::Config::embedded(database.url.clone()))
        .await
        .unwrap();
    // The previous release's schema: migrations 1 to 8.
    Migrator::up(&db, Some(8)).await.unwrap();

    // Users, clients and tokens have the same shape in both releases: the seed writes them.
    let (owner, client_id, consumer_id, token) = people(&db, "en").await;

    // A connection rotated three times, its previous secret in a grace period.
    let (current, previous) = ("current-secret-of-v3", "previous-secret-of-v2");
    let grace_ends = Utc::now() + chrono::Duration::hours(2);
    let connection_id = Uuid::new_v4();
    let now = Utc::now();
    insert(
        &db,
        "connections",
        vec![
            ("id", connection_id.into()),
            ("client_id", client_id.into()),
            ("consumer_id", consumer_id.into()),
            ("redirect_uri", "https://mis.example.org/cb".into()),
            ("secret_hash", SecretDigest::of(current).as_str().into()),
            (
                "previous_secret_hash",
                SecretDigest::of(previous).as_str().into(),
            ),
            ("previous_secret_expires_at", grace_ends.into()),
            ("secret_version", 3i64.into()),
            ("inserted_at", now.into()),
            ("updated_at", now.into()),
        ],
    )
    .await;
    let event_id = Uuid::now_v7();
    insert_refreshed(
        &db,
        OldRefresh {
            event_id,
            connection_id,
            client_id,
            owner,
            request_id: "before-the-upgrade",
            secret_version: 3,
            grace_period: 7200,
            occurred_at: now,
        },
    )
    .await;
    insert(
        &db,
        "sent_notifications",
        vec![("event_id", event_id.into()), ("sent_at", now.into())],
    )
    .await;
    // A job of the previous release, not yet pushed: its change carries no version.
    let old_job = json!({
        "event_id": event_id,
        "invalidation": {
            "connection": {"id": connection_id, "client_id": client_id, "consumer_id": consumer_id, "redirect_uri": "https://mis.example.org/cb"},
            "retire": [SecretDigest::of("older-secret-of-v1").as_str()],
            "still_valid": [{"digest": SecretDigest::of(previous).as_str(), "valid_until": grace_ends}],
        }
    });
    let old_row = Uuid::now_v7();
    insert_pending_job(&db, old_row, "invalidate_credentials", old_job.clone()).await;

    // The upgrade, in place.
    Migrator::up(&db, None).await.unwrap();

    let row = connection::Entity::find_by_id(connection_id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.secret_version, 3, "rotations counted as before");
    assert_eq!(
        row.state_version, 3,
        "the state version starts at the secret version"
    );
    assert_eq!(row.secret_hash, SecretDigest::of(current).as_str());
    assert_eq!(
        row.previous_secret_hash.as_deref(),
        Some(SecretDigest::of(previous).as_str())
    );
    assert_eq!(
        row.previous_secret_expires_at.map(|t| t.timestamp()),
        Some(grace_ends.timestamp())
    );
    let sent = sent_notification::Entity::find_by_id(event_id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        sent.state,
        sent_notification::state::SENT,
        "a sent notice stays sent"
    );
    let event = connection_event::Entity::find_by_id(event_id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            event.request_id.as_str(),
            event.secret_version,
            event.grace_period
        ),
        ("before-the-upgrade", Some(3), Some(7200))
    );
    let job = outbox::Entity::find_by_id(old_row)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.payload, old_job, "job payloads are not rewritten");
    assert!(job.dead_at.is_none() && job.settled_at.is_none());
    db.close().await.unwrap();

    // The new release serves the upgraded database.
    let app = TestApp::spawn_on(database, |_| {}).await;
    assert!(
        app.verifies(current).await,
        "the current secret still verifies"
    );
    assert!(app.verifies(previous).await, "the grace period still runs");
    assert!(
        eventually(Duration::from_secs(10), || async {
            outbox::Entity::find_by_id(old_row)
                .one(&app.db)
                .await
                .unwrap()
                .unwrap()
                .dispatched_at
                .is_some()
        })
        .await,
        "the previous release's job is pushed, not set aside"
    );
    let (status, body) = app.refresh(client_id, connection_id, &token).await;
    assert_eq!(status, 200, "the old token still works: {body}");
    let row = connection::Entity::find_by_id(connection_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.secret_version, row.state_version), (4, 4));
    assert!(!app.verifies(current).await && !app.verifies(previous).await);
    let (status, events) = app.events(client_id, connection_id, "", &token).await;
    assert_eq!(status, 200);
    // The audit events; the retired secrets just verified may add a sighting entry.
    let audit: Vec<&serde_json::Value> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] != "stale_secret_presented")
        .collect();
    assert_eq!(audit.len(), 2, "the old event is kept: {events}");
    assert!(
        audit
            .iter()
            .any(|e| e["request_id"] == "before-the-upgrade")
    );
}

/// Instances started together on a new PostgreSQL database (a deployment's first
/// rollout) migrate it once between them, and all come up. (The embedded SQLite
/// database serves one instance.)
#[actix_web::test]
#[ignore = "needs PostgreSQL: set MITHRIL_TEST_POSTGRES_URL, run with --include-ignored"]
async fn instances_starting_together_on_a_new_database_all_migrate_and_serve() {
    std::env::var("MITHRIL_TEST_POSTGRES_URL").expect("this test needs MITHRIL_TEST_POSTGRES_URL");
    let database = Arc::new(TestDatabase::new().await);
    let apps = futures_util::future::join_all((0..3).map(|_| {
        let database = database.clone();
        async move {
            let config = crate::support::test_config(&database);
            mithril::Application::build(config).await
        }
    }))
    .await;
    let http = reqwest::Client::new();
    for app in apps {
        let app = app.expect("every instance migrates and starts");
        let ready = format!("http://127.0.0.1:{}/health/ready", app.port());
        let server = app.handle();
        let running = actix_web::rt::spawn(app.run_until_stopped());
        let status = http.get(&ready).send().await.unwrap().status();
        assert_eq!(status, 200, "every instance serves");
        server.stop(true).await;
        running.await.unwrap().unwrap();
    }
}

/// A database of the release before the lifetime policy (schema of migration 11)
/// migrates in place: its secrets get no expiry and never expire, even once the policy
/// is on (until `secrets apply-policy`); no reminder goes for them; a rotation notice
/// that release queued still goes out, with its grace end in Kyiv time and UTC.
#[actix_web::test]
async fn secrets_of_the_release_before_lifetimes_keep_verifying_under_the_policy() {
    let database = Arc::new(TestDatabase::new().await);
    let db = mithril::db::connect(&mithril::Config::embedded(database.url.clone()))
        .await
        .unwrap();
    Migrator::up(&db, Some(11)).await.unwrap();

    let (owner, client_id, consumer_id, token) = people(&db, "uk").await;
    let secret = "a-secret-of-the-release-before";
    let (connection_id, event_id) = (Uuid::new_v4(), Uuid::now_v7());
    let rotated_at = Utc::now() - chrono::Duration::days(400);
    insert(
        &db,
        "connections",
        vec![
            ("id", connection_id.into()),
            ("client_id", client_id.into()),
            ("consumer_id", consumer_id.into()),
            ("redirect_uri", "https://mis.example.org/cb".into()),
            ("secret_hash", SecretDigest::of(secret).as_str().into()),
            ("secret_version", 2i64.into()),
            ("state_version", 3i64.into()),
            ("inserted_at", rotated_at.into()),
            ("updated_at", rotated_at.into()),
        ],
    )
    .await;
    insert_refreshed(
        &db,
        OldRefresh {
            event_id,
            connection_id,
            client_id,
            owner,
            request_id: "rotated-before-lifetimes",
            secret_version: 2,
            grace_period: 3600,
            occurred_at: rotated_at,
        },
    )
    .await;
    // That release's notice job, not yet pushed: no `previous_secret_ends_at`.
    let old_notice = json!({
        "event_id": event_id, "connection_id": connection_id, "client_id": client_id,
        "consumer_id": consumer_id, "actor_user_id": owner,
        "request_id": "rotated-before-lifetimes", "secret_version": 2,
        "grace_period": 3600, "occurred_at": rotated_at,
    });
    insert_pending_job(&db, Uuid::now_v7(), "notify_owner", old_notice).await;

    Migrator::up(&db, None).await.unwrap();
    let row = connection::Entity::find_by_id(connection_id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.secret_expires_at, None, "no expiry: it never expires");
    assert_eq!((row.secret_version, row.state_version), (2, 3));
    let event = connection_event::Entity::find_by_id(event_id)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.secret_expires_at, None);
    db.close().await.unwrap();

    // The new release, with the policy on and reminders every 100 ms.
    let redis_url = optional_test_redis().await;
    let app = TestApp::spawn_on(database, |c| {
        c.rotation.secret_lifetime = mithril::config::SecretLifetime::parse("2s").unwrap();
        c.workers.reminder_interval = Duration::from_millis(100);
        c.redis_url = redis_url;
        c.workers.queue_namespace = crate::support::fresh_namespace();
    })
    .await;
    assert!(app.verifies(secret).await);
    // A connection created now, under the policy, expires; the old secret does not.
    let (status, created) = app
        .upsert(client_id, client_id, "https://self.example.org/cb", &token)
        .await;
    assert_eq!(status, 201, "{created}");
    let fresh = created["data"]["secret"].as_str().unwrap().to_owned();
    let fresh_id: Uuid = created["data"]["id"].as_str().unwrap().parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.verify(&fresh).await.1["error"]["message"] == "api-key expired"
        })
        .await,
        "the secret issued under the policy expires"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            secret_reminder::Entity::find()
                .filter(secret_reminder::Column::ConnectionId.eq(fresh_id))
                .filter(secret_reminder::Column::Threshold.eq("expired"))
                .filter(secret_reminder::Column::State.eq("sent"))
                .one(&app.db)
                .await
                .unwrap()
                .is_some()
        })
        .await,
        "its owner hears that it expired"
    );
    assert!(app.verifies(secret).await, "the older secret never expires");
    let reminded = secret_reminder::Entity::find()
        .filter(secret_reminder::Column::ConnectionId.eq(connection_id))
        .all(&app.db)
        .await
        .unwrap();
    assert!(reminded.is_empty(), "no reminder for it: {reminded:?}");

    // The queued notice of that release goes out, its times shown both ways.
    let dir = app.state.config.workers.mail_dir.clone();
    let grace_end = ShownTime::of(rotated_at + chrono::Duration::hours(1));
    let notice = || {
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|raw| {
                let message = MessageParser::default().parse(&raw)?;
                let text = message.body_text(0)?.into_owned();
                text.contains("rotated-before-lifetimes").then_some(text)
            })
            .next()
    };
    assert!(
        eventually(Duration::from_secs(20), || async { notice().is_some() }).await,
        "the old release's notice is sent"
    );
    let text = notice().unwrap();
    for shown in [&grace_end.kyiv, &grace_end.utc] {
        assert!(text.contains(shown.as_str()), "{shown} missing:\n{text}");
    }
}

/// The reconciler's partial index as a database has it.
async fn notices_index(db: &sea_orm::DatabaseConnection) -> String {
    let sql = match db.get_database_backend() {
        sea_orm::DatabaseBackend::Postgres => {
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'outbox_notices_unsettled'"
        }
        _ => "SELECT sql FROM sqlite_master WHERE name = 'outbox_notices_unsettled'",
    };
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql,
        ))
        .await
        .unwrap()
        .expect("the index exists");
    row.try_get_by_index::<String>(0).unwrap()
}

/// Issue "ten holes", 8: migration 11 was edited after its release (its index came to
/// cover stale-secret notices); databases migrated before keep the released index unless
/// a later migration puts it right.
#[actix_web::test]
async fn a_database_migrated_before_gets_the_reconcilers_index_right() {
    let database = Arc::new(TestDatabase::new().await);
    let db = mithril::db::connect(&mithril::Config::embedded(database.url.clone()))
        .await
        .unwrap();
    Migrator::up(&db, Some(15)).await.unwrap();
    let released = notices_index(&db).await;
    assert!(!released.contains("notify_stale_secret"), "{released}");
    Migrator::up(&db, None).await.unwrap();
    let index = notices_index(&db).await;
    assert!(
        index.contains("notify_owner") && index.contains("notify_stale_secret"),
        "{index}"
    );
}
