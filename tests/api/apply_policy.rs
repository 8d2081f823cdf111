//! `mithril secrets apply-policy`, run as operators run it: secrets issued before the
//! lifetime policy get their last rotation + the lifetime, never sooner than the floor;
//! a summary per week; a second run changes nothing.
use std::collections::BTreeMap;
use std::process::{Command, Output};

use chrono::{DateTime, Datelike as _, SubsecRound as _, Utc};
use entity::{connection, connection_event};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _};
use uuid::Uuid;

use crate::support::{ALL_SCOPES, TestApp};

/// Runs the command off the test's runtime thread: the app under test shares that
/// thread, and a task of it frozen mid-transaction would hold SQLite's write lock
/// against the command.
async fn apply_policy(app: &TestApp, lifetime: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mithril"));
    command
        .args(["secrets", "apply-policy"])
        .args(args)
        .env("DATABASE_URL", &app.state.config.database.url)
        .env_remove("REDIS_URL")
        .env_remove("SMTP_URL")
        .env_remove("MITHRIL_SECRET_LIFETIME");
    if let Some(lifetime) = lifetime {
        command.env("MITHRIL_SECRET_LIFETIME", lifetime);
    }
    actix_web::rt::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The number after `label` on its line of the report.
fn count(report: &str, label: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} in:\n{report}"));
    line[label.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The report's per-week lines: `  2026-W52 (from 2026-12-21): 3`.
fn weeks(report: &str) -> BTreeMap<String, u64> {
    report
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains("-W"))
        .map(|l| {
            let (week, n) = l.trim().split_once(' ').unwrap();
            let n = n.rsplit(": ").next().unwrap().parse().unwrap();
            (week.to_owned(), n)
        })
        .collect()
}

async fn rows(app: &TestApp) -> Vec<connection::Model> {
    connection::Entity::find()
        .order_by_asc(connection::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
}

async fn find(app: &TestApp, id: Uuid) -> connection::Model {
    connection::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
}

async fn set(app: &TestApp, id: Uuid, column: connection::Column, at: DateTime<Utc>) {
    connection::Entity::update_many()
        .col_expr(column, Expr::value(at))
        .filter(connection::Column::Id.eq(id))
        .exec(&app.db)
        .await
        .unwrap();
}

/// Dates the rotation event of `id`'s current secret back to `at`.
async fn rotated_at(app: &TestApp, id: Uuid, at: DateTime<Utc>) {
    connection_event::Entity::update_many()
        .col_expr(connection_event::Column::OccurredAt, Expr::value(at))
        .filter(connection_event::Column::ConnectionId.eq(id))
        .filter(connection_event::Column::Kind.eq("secret_refreshed"))
        .exec(&app.db)
        .await
        .unwrap();
}

async fn refreshed_at(app: &TestApp, id: Uuid) -> DateTime<Utc> {
    connection_event::Entity::find()
        .filter(connection_event::Column::ConnectionId.eq(id))
        .filter(connection_event::Column::Kind.eq("secret_refreshed"))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .occurred_at
}

#[actix_web::test]
async fn apply_policy_gives_older_secrets_an_expiry_never_sooner_than_the_floor() {
    // The API runs without a policy yet: every secret below is issued without expiry.
    let app = TestApp::spawn().await;
    let client_id = app.client("MSP").await;
    let token = app.token(client_id, ALL_SCOPES).await;
    let days = chrono::Duration::days;
    let now = Utc::now();

    let (fresh, _) = app.connection(client_id).await;
    let (old_seeded, _) = app.connection(client_id).await;
    set(
        &app,
        old_seeded,
        connection::Column::InsertedAt,
        now - days(170),
    )
    .await;
    // Re-pointed today: `updated_at` moves, the secret's age does not.
    let (repointed, _) = app.connection(client_id).await;
    set(
        &app,
        repointed,
        connection::Column::InsertedAt,
        now - days(50),
    )
    .await;
    let (status, _) = app
        .repoint(client_id, repointed, "https://mis.example.org/v2", &token)
        .await;
    assert_eq!(status, 200);
    let (rotated, _) = app.connection(client_id).await;
    assert_eq!(app.refresh(client_id, rotated, &token).await.0, 200);
    rotated_at(&app, rotated, now - days(100)).await;
    let (ancient, _) = app.connection(client_id).await;
    assert_eq!(app.refresh(client_id, ancient, &token).await.0, 200);
    rotated_at(&app, ancient, now - days(400)).await;
    // Issued under the policy already: left alone.
    let (already, _) = app.connection(client_id).await;
    let already_expires = (now + days(5)).trunc_subsecs(6);
    set(
        &app,
        already,
        connection::Column::SecretExpiresAt,
        already_expires,
    )
    .await;
    let before = rows(&app).await;

    // Off, it refuses and changes nothing.
    let refused = apply_policy(&app, None, &[]).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("MITHRIL_SECRET_LIFETIME"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(rows(&app).await, before);

    let started = Utc::now();
    let report = stdout_of(&apply_policy(&app, Some("180d"), &[]).await);
    let ended = Utc::now();
    assert_eq!(count(&report, "secrets given an expiry:"), 5, "{report}");
    assert!(report.contains("(2 of them at the floor)"), "{report}");
    assert_eq!(count(&report, "secrets without an expiry:"), 0);
    assert_eq!(count(&report, "secrets already expired:"), 0);

    let lifetime = days(180);
    let by_lifetime = |issued: DateTime<Utc>| (issued + lifetime).trunc_subsecs(6);
    let expiry = |row: &connection::Model| row.secret_expires_at.unwrap();
    let (floor_from, floor_to) = (
        (started + days(30)).trunc_subsecs(6),
        (ended + days(30)).trunc_subsecs(6),
    );

    let row = find(&app, fresh).await;
    assert_eq!(
        expiry(&row),
        by_lifetime(row.inserted_at),
        "issued at creation"
    );
    let row = find(&app, repointed).await;
    assert_eq!(
        expiry(&row),
        by_lifetime(row.inserted_at),
        "a re-point is no rotation"
    );
    let row = find(&app, rotated).await;
    assert_eq!(expiry(&row), by_lifetime(refreshed_at(&app, rotated).await));
    for id in [old_seeded, ancient] {
        let at = expiry(&find(&app, id).await);
        assert!(
            at >= floor_from && at <= floor_to,
            "the floor, 30 days from the run: {at}"
        );
    }
    let row = find(&app, already).await;
    assert_eq!(row.secret_expires_at, Some(already_expires));

    // Each change is a new state for verify, and is audited.
    for (was, is) in before.iter().zip(rows(&app).await) {
        let bump = if was.id == already { 0 } else { 1 };
        assert_eq!(is.state_version, was.state_version + bump, "{}", was.id);
        assert_eq!(is.secret_version, was.secret_version);
        assert_eq!(is.secret_hash, was.secret_hash);
        if bump == 1 {
            let audited = connection_event::Entity::find()
                .filter(connection_event::Column::ConnectionId.eq(is.id))
                .filter(connection_event::Column::Kind.eq("secret_expiry_set"))
                .all(&app.db)
                .await
                .unwrap();
            assert_eq!(audited.len(), 1);
            assert_eq!(audited[0].secret_expires_at, is.secret_expires_at);
        }
    }

    // The summary counts every secret with an expiry, by ISO week.
    let mut expected = BTreeMap::<String, u64>::new();
    for row in rows(&app).await {
        let week = row.secret_expires_at.unwrap().iso_week();
        *expected
            .entry(format!("{}-W{:02}", week.year(), week.week()))
            .or_default() += 1;
    }
    assert_eq!(weeks(&report), expected, "{report}");
    assert!(
        report.contains(&format!("(from {})", {
            let week = floor_from.iso_week();
            chrono::NaiveDate::from_isoywd_opt(week.year(), week.week(), chrono::Weekday::Mon)
                .unwrap()
        })),
        "{report}"
    );

    // Idempotent, whatever the floor of the second run.
    let after = rows(&app).await;
    let again = stdout_of(&apply_policy(&app, Some("180d"), &["--min-remaining", "400d"]).await);
    assert_eq!(count(&again, "secrets given an expiry:"), 0, "{again}");
    assert_eq!(weeks(&again), expected);
    assert_eq!(rows(&app).await, after);

    // None that the run gave an expiry expires sooner than the floor.
    for row in after.iter().filter(|r| r.id != already) {
        assert!(row.secret_expires_at.unwrap() >= floor_from, "{}", row.id);
    }
}
