//! `mithril seed FILE` run again: idempotent by id. A connection that exists keeps its
//! secret, its version and its state; a retired secret is never made current again.
use std::process::Command;

use chrono::{Duration, Utc};
use entity::connection;
use sea_orm::EntityTrait as _;
use serde_json::json;
use uuid::Uuid;

use crate::support::{TestApp, TestDatabase};

struct SeedData {
    owner: Uuid,
    consumer: Uuid,
    client_id: Uuid,
    connection_id: Uuid,
    token: String,
}

/// A seed file with one clinic, its connection (secret `secret`) and the owner's token.
fn seed_file(dir: &std::path::Path, data: &SeedData, secret: &str) -> std::path::PathBuf {
    let (owner, consumer) = (data.owner, data.consumer);
    let file = json!({
        "users": [{"id": owner, "email": "owner@clinic.example.org"}],
        "clients": [
            {"id": data.client_id, "name": format!("Clinic {}", data.client_id),
             "client_type": "MSP", "user_id": owner},
            {"id": consumer, "name": format!("MIS {consumer}"), "client_type": "MIS",
             "user_id": owner}
        ],
        "connections": [{
            "id": data.connection_id, "client_id": data.client_id, "consumer_id": consumer,
            "redirect_uri": "https://mis.example.org/cb", "secret": secret
        }],
        "tokens": [{
            "value": data.token, "user_id": owner, "client_id": data.client_id,
            "scope": "connection:refresh_secret connection:read",
            "expires_at": Utc::now() + Duration::days(1)
        }]
    });
    let path = dir.join(format!("seed-{}.json", Uuid::new_v4()));
    std::fs::write(&path, file.to_string()).unwrap();
    path
}

/// Runs `mithril seed FILE` off the test's runtime thread (the app shares that thread: a
/// task of it frozen mid-transaction would hold SQLite's write lock against the command).
async fn seed(url: &str, file: &std::path::Path) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mithril"));
    command
        .arg("seed")
        .arg(file)
        .env("DATABASE_URL", url)
        .env_remove("REDIS_URL")
        .env_remove("SMTP_URL");
    let output = actix_web::rt::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[actix_web::test]
async fn seeding_again_keeps_a_rotated_secret_and_never_revives_the_retired_one() {
    let database = std::sync::Arc::new(TestDatabase::new().await);
    let data = SeedData {
        owner: Uuid::new_v4(),
        consumer: Uuid::new_v4(),
        client_id: Uuid::new_v4(),
        connection_id: Uuid::new_v4(),
        token: format!("token-{}", Uuid::new_v4().simple()),
    };
    let first_secret = format!("seeded-{}", Uuid::new_v4().simple());
    let file = seed_file(database.dir.path(), &data, &first_secret);
    seed(&database.url, &file).await;

    let app = TestApp::spawn_on(database.clone(), |_| {}).await;
    assert!(app.verifies(&first_secret).await);
    let (status, body) = app
        .refresh(data.client_id, data.connection_id, &data.token)
        .await;
    assert_eq!(status, 200, "{body}");
    let rotated = body["data"]["secret"].as_str().unwrap().to_owned();
    let before = connection::Entity::find_by_id(data.connection_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();

    // The same file again, and one that names another secret for the connection.
    let again = seed(&database.url, &file).await;
    let other = seed_file(
        database.dir.path(),
        &data,
        &format!("other-{}", Uuid::new_v4().simple()),
    );
    seed(&database.url, &other).await;

    let after = connection::Entity::find_by_id(data.connection_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.secret_hash, before.secret_hash, "the digest is kept");
    assert_eq!(after.secret_version, before.secret_version);
    assert_eq!(after.state_version, before.state_version);
    assert_eq!(after.previous_secret_hash, before.previous_secret_hash);

    // A cold instance (nothing cached) answers from the database.
    let cold = TestApp::spawn_on(database, |_| {}).await;
    assert!(cold.verifies(&rotated).await, "the rotated secret verifies");
    assert!(
        !cold.verifies(&first_secret).await,
        "the retired secret stays retired"
    );
    assert!(app.verifies(&rotated).await);
    assert!(!app.verifies(&first_secret).await);
    assert!(
        again.contains(&data.connection_id.to_string()) && again.contains("kept"),
        "the output names the connection it kept: {again}"
    );
}
