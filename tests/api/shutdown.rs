//! `mithril serve` as operators run it: JSON request logs, and a graceful stop on SIGTERM
//! in the middle of a burst of refreshes.
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use entity::{connection, connection_event, outbox};
use mithril::seed::{self, SeedClient, SeedConnection, SeedFile, SeedToken, SeedUser};
use sea_orm::{ColumnTrait as _, EntityTrait as _, PaginatorTrait as _, QueryFilter as _};
use serde_json::Value;
use uuid::Uuid;

use crate::support::serve::ServeProcess;
use crate::support::{ALL_SCOPES, TestDatabase, eventually};

/// A clinic with three connections of known secrets, and a token with every scope.
pub struct Seeded {
    pub token: String,
    pub client_id: Uuid,
    pub connections: Vec<(Uuid, String)>,
}

pub async fn seed_database(url: &str) -> Seeded {
    let config = mithril::Config::embedded(url);
    let db = mithril::db::connect(&config).await.unwrap();
    mithril::db::migrate(&db).await.unwrap();
    let (owner, client_id) = (Uuid::new_v4(), Uuid::new_v4());
    let token = format!("token-{}", Uuid::new_v4().simple());
    let mut file = SeedFile {
        users: vec![SeedUser {
            id: owner,
            email: "owner@example.org".into(),
            locale: "uk".into(),
            is_blocked: false,
        }],
        clients: vec![SeedClient {
            id: client_id,
            name: "Clinic".into(),
            client_type: "MSP".into(),
            user_id: owner,
            is_blocked: false,
        }],
        tokens: vec![SeedToken {
            value: token.clone(),
            user_id: owner,
            client_id,
            scope: ALL_SCOPES.into(),
            expires_at: Utc::now() + chrono::Duration::hours(1),
        }],
        ..SeedFile::default()
    };
    let mut connections = Vec::new();
    for i in 0..3 {
        let consumer = Uuid::new_v4();
        file.clients.push(SeedClient {
            id: consumer,
            name: format!("MIS {i}"),
            client_type: "MIS".into(),
            user_id: owner,
            is_blocked: false,
        });
        let (id, secret) = (
            Uuid::new_v4(),
            format!("seeded-{}", Uuid::new_v4().simple()),
        );
        file.connections.push(SeedConnection {
            id,
            client_id,
            consumer_id: consumer,
            redirect_uri: "https://mis.example.org/cb".into(),
            secret: Some(secret.clone()),
        });
        connections.push((id, secret));
    }
    seed::load(&db, file).await.unwrap();
    db.close().await.unwrap();
    Seeded {
        token,
        client_id,
        connections,
    }
}

#[actix_web::test]
async fn sigterm_during_a_burst_commits_every_200_logs_json_and_exits_0() {
    let database = Arc::new(TestDatabase::new().await);
    let seeded = seed_database(&database.url).await;

    // The in-process workers write notices under `data/mail` of the working directory.
    let serve = ServeProcess::start(
        database.dir.path(),
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("MITHRIL_LOG_FORMAT", "json"),
            ("MITHRIL_SHUTDOWN_TIMEOUT", "20"),
        ],
    )
    .await;
    let address = serve.address.clone();

    // The burst: 30 refreshes over three connections, each on a connection of its own.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut burst = Vec::new();
    for i in 0..30 {
        let (id, _) = seeded.connections[i % 3];
        let url = format!(
            "{address}/api/clients/{}/connections/{id}/actions/refresh_secret",
            seeded.client_id
        );
        let request = http
            .patch(url)
            .bearer_auth(&seeded.token)
            .header("x-request-id", format!("burst-{i}"));
        burst.push(actix_web::rt::spawn(async move {
            let answer = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    Some((status, body["data"]["secret"].as_str().map(str::to_owned)))
                }
                Err(_) => None,
            };
            (id, answer)
        }));
    }
    // SIGTERM once the first answers are in, with the rest still in flight or queued.
    let answered = || {
        serve
            .lines()
            .iter()
            .filter(|l| l.contains("\"status\":200"))
            .count()
    };
    assert!(eventually(Duration::from_secs(30), || async { answered() >= 3 }).await);
    let stopping = std::thread::spawn(move || serve.stop());

    let mut ok = std::collections::HashMap::<Uuid, i64>::new();
    // Every secret a caller received, to look for in the log.
    let mut issued: Vec<String> = Vec::new();
    for task in burst {
        let (id, answer) = task.await.unwrap();
        if let Some((200, secret)) = answer {
            *ok.entry(id).or_default() += 1;
            issued.push(secret.expect("a 200 carries the secret"));
        }
    }
    let (status, lines) = stopping.join().unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(ok.values().sum::<i64>() >= 3);

    // Every 200 committed, with its audit event and both outbox rows.
    let db = sea_orm::Database::connect(database.url.as_str())
        .await
        .unwrap();
    let mut events_total = 0;
    for (id, _) in &seeded.connections {
        let row = connection::Entity::find_by_id(*id)
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        let answered_ok = ok.get(id).copied().unwrap_or(0);
        assert_eq!(
            row.secret_version, answered_ok,
            "connection {id}: one version per 200"
        );
        let events = connection_event::Entity::find()
            .filter(connection_event::Column::ConnectionId.eq(*id))
            .count(&db)
            .await
            .unwrap();
        assert_eq!(events as i64, answered_ok);
        events_total += events;
    }
    let outbox_rows = outbox::Entity::find().count(&db).await.unwrap();
    assert_eq!(
        outbox_rows,
        2 * events_total,
        "every committed rotation has its outbox rows"
    );
    let undispatched = outbox::Entity::find()
        .filter(outbox::Column::DispatchedAt.is_null())
        .count(&db)
        .await
        .unwrap();
    assert_eq!(undispatched, 0, "the stop flushed the outbox to the queue");

    // One JSON line per request, with its id, route, status, latency and client id, and
    // never the token or a secret.
    // The flush itself must work, not only the requests' own dispatches: on PostgreSQL
    // it once ran on connections of the stopped HTTP workers' runtimes and failed.
    let message = |v: &Value| v["fields"]["message"].as_str().unwrap_or("").to_owned();
    let messages: Vec<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| message(&v))
        .collect();
    assert!(
        messages.iter().any(|m| m == "outbox flushed")
            && !messages
                .iter()
                .any(|m| m.starts_with("outbox flush failed")),
        "{lines:?}"
    );
    let requests: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "request")
        .collect();
    assert!(requests.len() as i64 >= ok.values().sum::<i64>());
    let first = requests
        .iter()
        .find(|v| v["fields"]["status"] == 200)
        .unwrap();
    assert!(
        first["fields"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("burst-")
    );
    assert_eq!(
        first["fields"]["route"],
        "/api/clients/{id}/connections/{connection_id}/actions/refresh_secret"
    );
    assert_eq!(first["fields"]["client_id"], seeded.client_id.to_string());
    assert!(first["fields"]["latency_ms"].is_number());
    let all = lines.join("\n");
    assert!(!all.contains(&seeded.token), "the token reached the log");
    assert_eq!(issued.len() as i64, ok.values().sum::<i64>());
    for secret in seeded.connections.iter().map(|(_, s)| s).chain(&issued) {
        assert!(!all.contains(secret.as_str()), "a secret reached the log");
    }
}

/// The stop flushes a backlog larger than one relay batch (200 rows), not just its first
/// batch. The rows are fresh, so the sweeper (which waits `SWEEP_AFTER`) leaves them to
/// the flush.
#[actix_web::test]
async fn the_stop_flushes_an_outbox_backlog_of_several_batches() {
    let app = crate::support::TestApp::spawn_with(|c| c.run_workers = false).await;
    let (client_id, _) = app.client_owned_by("MSP", "en").await;
    let (connection_id, _) = app.connection(client_id).await;
    let token = app.token(client_id, ALL_SCOPES).await;
    let response = app
        .http
        .patch(app.refresh_url(&client_id.to_string(), &connection_id.to_string()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A real job, copied into a backlog as if the queue had been down for a while.
    let model = outbox::Entity::find().one(&app.db).await.unwrap().unwrap();
    let backlog = 450;
    // One statement, so the rows are still younger than `SWEEP_AFTER` when the stop comes.
    let rows = (0..backlog).map(|_| outbox::ActiveModel {
        id: sea_orm::Set(Uuid::new_v4()),
        kind: sea_orm::Set(model.kind.clone()),
        payload: sea_orm::Set(model.payload.clone()),
        created_at: sea_orm::Set(Utc::now()),
        dispatched_at: sea_orm::Set(None),
        attempts: sea_orm::Set(0),
        dead_at: sea_orm::Set(None),
        settled_at: sea_orm::Set(None),
    });
    outbox::Entity::insert_many(rows)
        .exec(&app.db)
        .await
        .unwrap();
    let db = app.db.clone();
    app.stop().await;
    let undispatched = outbox::Entity::find()
        .filter(outbox::Column::DispatchedAt.is_null())
        .count(&db)
        .await
        .unwrap();
    assert_eq!(
        undispatched, 0,
        "all {backlog} rows were pushed on the way out"
    );
}
