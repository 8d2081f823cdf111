//! `PUT …/connections`, `PATCH …/{connection_id}`, `DELETE …/{connection_id}` and
//! `GET …/{connection_id}/events`: effects, audit events, outbox, and error rows.
use entity::{connection, connection_event, outbox};
use mithril::secrets::SecretDigest;
use reqwest::Method;
use sea_orm::{
    ColumnTrait as _, EntityTrait as _, PaginatorTrait as _, QueryFilter as _, QueryOrder as _,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestApp, assert_error, assert_schema, eventually};

async fn rows_for_pair(app: &TestApp, client_id: Uuid, consumer_id: Uuid) -> u64 {
    connection::Entity::find()
        .filter(connection::Column::ClientId.eq(client_id))
        .filter(connection::Column::ConsumerId.eq(consumer_id))
        .count(&app.db)
        .await
        .unwrap()
}

async fn event_kinds(app: &TestApp, connection_id: Uuid) -> Vec<String> {
    connection_event::Entity::find()
        .filter(connection_event::Column::ConnectionId.eq(connection_id))
        .order_by_asc(connection_event::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

#[actix_web::test]
async fn upsert_twice_creates_then_updates_one_row_and_shows_the_secret_once() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let consumer = app.client("MIS").await;

    let (status, created) = app
        .upsert(
            me.client_id,
            consumer,
            "https://mis.example.org/one",
            &me.token,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_schema("connection_with_secret_show_response.json", &created);
    let data = &created["data"];
    assert_eq!(data["client_id"], me.client_id.to_string());
    assert_eq!(data["consumer_id"], consumer.to_string());
    assert_eq!(data["redirect_uri"], "https://mis.example.org/one");
    let secret = data["secret"].as_str().unwrap().to_owned();
    assert!(
        secret.len() >= 43
            && secret
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    assert!(app.verifies(&secret).await, "the new secret works at once");
    let id: Uuid = data["id"].as_str().unwrap().parse().unwrap();

    let (status, updated) = app
        .upsert(
            me.client_id,
            consumer,
            "https://mis.example.org/two",
            &me.token,
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_schema("connection_show_response.json", &updated);
    assert!(updated["data"].get("secret").is_none(), "{updated}");
    assert_eq!(updated["data"]["id"], id.to_string());
    assert_eq!(
        updated["data"]["redirect_uri"],
        "https://mis.example.org/two"
    );
    assert_eq!(updated["data"]["inserted_at"], data["inserted_at"]);
    assert_eq!(rows_for_pair(&app, me.client_id, consumer).await, 1);
    assert!(app.verifies(&secret).await, "re-pointing keeps the secret");
    assert_eq!(event_kinds(&app, id).await, ["created", "updated"]);
    let dump = app.dump_database().await;
    assert!(!dump.contains(&secret), "only the digest is stored");
}

#[actix_web::test]
async fn concurrent_upserts_of_one_pair_create_one_row() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let consumer = app.client("MIS").await;
    let calls = (0..6).map(|i| {
        let (app, token) = (&app, &me.token);
        async move {
            app.upsert(
                me.client_id,
                consumer,
                &format!("https://mis.example.org/{i}"),
                token,
            )
            .await
            .0
        }
    });
    let mut statuses = futures_util::future::join_all(calls).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 201]);
    assert_eq!(rows_for_pair(&app, me.client_id, consumer).await, 1);
}

#[actix_web::test]
async fn a_mis_may_connect_to_itself() {
    let app = TestApp::spawn().await;
    let mis = app.owned("MIS").await;
    let (status, body) = app
        .upsert(
            mis.client_id,
            mis.client_id,
            "https://self.example.org/cb",
            &mis.token,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["consumer_id"], mis.client_id.to_string());
}

#[actix_web::test]
async fn upsert_bodies_that_break_the_rules_are_422_and_change_nothing() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let consumer = app.client("MIS").await;
    let path = format!("/api/clients/{}/connections", me.client_id);
    let stranger = Uuid::new_v4();
    for (body, entries) in [
        (
            json!({"consumer_id": consumer, "redirect_uri": "http://mis.example.org/cb"})
                .to_string(),
            vec!["$.redirect_uri"],
        ),
        (
            json!({"consumer_id": consumer, "redirect_uri": "mis.example.org"}).to_string(),
            vec!["$.redirect_uri"],
        ),
        (
            json!({"consumer_id": consumer, "redirect_uri": "https://"}).to_string(),
            vec!["$.redirect_uri"],
        ),
        (
            json!({"consumer_id": consumer, "redirect_uri": 42}).to_string(),
            vec!["$.redirect_uri"],
        ),
        (
            json!({"consumer_id": consumer}).to_string(),
            vec!["$.redirect_uri"],
        ),
        (
            json!({"consumer_id": stranger, "redirect_uri": "https://ok.example.org"}).to_string(),
            vec!["$.consumer_id"],
        ),
        (
            json!({"consumer_id": "nope", "redirect_uri": "https://ok.example.org"}).to_string(),
            vec!["$.consumer_id"],
        ),
        (
            json!({}).to_string(),
            vec!["$.consumer_id", "$.redirect_uri"],
        ),
        (
            json!({"consumer_id": stranger, "redirect_uri": "ftp://x"}).to_string(),
            vec!["$.consumer_id", "$.redirect_uri"],
        ),
        ("[]".to_owned(), vec!["$"]),
        ("{".to_owned(), vec!["$"]),
        (String::new(), vec!["$"]),
    ] {
        let got = app
            .call(Method::PUT, &path, Some(&me.token), Some(&body))
            .await;
        assert_error(&got, 422, "validation_failed", None);
        let mut got_entries: Vec<&str> = got.1["error"]["invalid"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["entry"].as_str().unwrap())
            .collect();
        got_entries.sort_unstable();
        assert_eq!(got_entries, entries, "{body}");
        for invalid in got.1["error"]["invalid"].as_array().unwrap() {
            assert_eq!(invalid["entry_type"], "json_data_property");
            assert!(invalid["rules"][0]["description"].is_string());
        }
    }
    assert_eq!(rows_for_pair(&app, me.client_id, consumer).await, 0);
    assert_eq!(
        app.query_i64("SELECT COUNT(*) FROM connection_events")
            .await,
        0
    );
}

#[actix_web::test]
async fn upsert_for_an_unknown_client_is_404_before_the_body() {
    let app = TestApp::spawn().await;
    let nhs = app.owned("NHS").await;
    for client in [Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let got = app
            .call(
                Method::PUT,
                &format!("/api/clients/{client}/connections"),
                Some(&nhs.token),
                Some("{"),
            )
            .await;
        assert_error(&got, 404, "not_found", None);
    }
}

#[actix_web::test]
async fn patch_repoints_and_records_an_event() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    // Fill the verify cache with the old redirect_uri first.
    let (_, before) = app.verify(&me.secret).await;
    assert_eq!(before["data"]["redirect_uri"], "https://mis.example.org/cb");
    let (status, body) = app
        .repoint(
            me.client_id,
            me.connection_id,
            "https://new.example.org/cb",
            &me.token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_schema("connection_show_response.json", &body);
    assert!(body["data"].get("secret").is_none());
    assert_eq!(body["data"]["redirect_uri"], "https://new.example.org/cb");
    let (_, shown) = app.show(me.client_id, me.connection_id, &me.token).await;
    assert_eq!(shown["data"]["redirect_uri"], "https://new.example.org/cb");
    let (status, after) = app.verify(&me.secret).await;
    assert_eq!(status, 200, "re-pointing keeps the secret");
    assert_eq!(
        after["data"]["redirect_uri"], "https://new.example.org/cb",
        "not a stale cache entry"
    );
    assert_eq!(event_kinds(&app, me.connection_id).await, ["updated"]);
}

#[actix_web::test]
async fn patch_errors_answer_in_api_order() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let path = |id: Uuid| format!("/api/clients/{}/connections/{id}", me.client_id);
    // Existence before the body.
    let got = app
        .call(
            Method::PATCH,
            &path(Uuid::new_v4()),
            Some(&me.token),
            Some("{"),
        )
        .await;
    assert_error(&got, 404, "not_found", None);
    for body in [
        r#"{"redirect_uri": "http://x.org"}"#,
        "{}",
        r#"{"redirect_uri": null}"#,
        "not json",
        "",
    ] {
        let got = app
            .call(
                Method::PATCH,
                &path(me.connection_id),
                Some(&me.token),
                Some(body),
            )
            .await;
        assert_error(&got, 422, "validation_failed", None);
    }
    let (_, shown) = app.show(me.client_id, me.connection_id, &me.token).await;
    assert_eq!(
        shown["data"]["redirect_uri"], "https://mis.example.org/cb",
        "unchanged"
    );
}

#[actix_web::test]
async fn delete_is_204_retires_both_secrets_and_a_second_delete_is_404() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    // A rotation with a grace period leaves two working secrets.
    let (status, body) = app
        .refresh_with_grace(me.client_id, me.connection_id, &me.token, 3600)
        .await;
    assert_eq!(status, 200);
    let current = body["data"]["secret"].as_str().unwrap().to_owned();
    assert!(app.verifies(&me.secret).await && app.verifies(&current).await);

    let response = app
        .http
        .delete(format!(
            "{}/api/clients/{}/connections/{}",
            app.address, me.client_id, me.connection_id
        ))
        .bearer_auth(&me.token)
        .header("x-request-id", "delete-me")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["x-request-id"], "delete-me");
    assert!(response.text().await.unwrap().is_empty(), "no body");

    assert!(
        !app.verifies(&current).await,
        "the current secret no longer verifies"
    );
    assert!(
        !app.verifies(&me.secret).await,
        "nor the one in its grace period"
    );
    let got = app.delete(me.client_id, me.connection_id, &me.token).await;
    assert_error(&got, 404, "not_found", None);
    let got = app.show(me.client_id, me.connection_id, &me.token).await;
    assert_error(&got, 404, "not_found", None);

    // The audit trail outlives the connection.
    let events = connection_event::Entity::find()
        .filter(connection_event::Column::ConnectionId.eq(me.connection_id))
        .order_by_asc(connection_event::Column::Id)
        .all(&app.db)
        .await
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["secret_refreshed", "deleted"]);
    let deleted = &events[1];
    assert_eq!(deleted.request_id, "delete-me");
    assert_eq!(deleted.secret_version, Some(1));

    // One invalidation job, in rotation's shape, retiring both digests now.
    let rows = outbox::Entity::find()
        .filter(outbox::Column::Kind.eq("invalidate_credentials"))
        .all(&app.db)
        .await
        .unwrap();
    let row = rows
        .iter()
        .find(|r| r.payload["event_id"] == deleted.id.to_string())
        .expect("the delete's row");
    let invalidation = &row.payload["invalidation"];
    assert_eq!(
        invalidation["connection"]["id"],
        me.connection_id.to_string()
    );
    assert_eq!(invalidation["still_valid"], json!([]));
    let retire: Vec<&str> = invalidation["retire"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(
        retire,
        [
            SecretDigest::of(&current).as_str(),
            SecretDigest::of(&me.secret).as_str()
        ]
    );
    // The relay pushes it to the queue after commit.
    let row_id = row.id;
    let dispatched = eventually(std::time::Duration::from_secs(10), || async {
        outbox::Entity::find_by_id(row_id)
            .one(&app.db)
            .await
            .unwrap()
            .is_some_and(|r| r.dispatched_at.is_some())
    })
    .await;
    assert!(dispatched, "the delete's job reached the queue");
}

#[actix_web::test]
async fn events_are_newest_first_paged_and_carry_no_secret() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let (_, refreshed) = app
        .refresh_with_grace(me.client_id, me.connection_id, &me.token, 60)
        .await;
    let secret = refreshed["data"]["secret"].as_str().unwrap().to_owned();
    let (status, _) = app
        .repoint(
            me.client_id,
            me.connection_id,
            "https://new.example.org",
            &me.token,
        )
        .await;
    assert_eq!(status, 200);

    let (status, body) = app
        .events(me.client_id, me.connection_id, "", &me.token)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["meta"]["type"], "list");
    assert_eq!(
        body["paging"],
        json!({"page_number": 1, "page_size": 50, "total_pages": 1, "total_entries": 2})
    );
    let events = body["data"].as_array().unwrap();
    assert_eq!(events[0]["kind"], "updated");
    assert_eq!(events[1]["kind"], "secret_refreshed");
    let mut fields: Vec<&str> = events[1]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "actor_client_id",
            "actor_user_id",
            "client_id",
            "connection_id",
            "grace_period",
            "id",
            "kind",
            "occurred_at",
            "remote_address",
            "request_id",
            "secret_expires_at",
            "secret_version"
        ]
    );
    assert_eq!(events[1]["grace_period"], 60);
    assert!(
        events[1]["secret_expires_at"].is_null(),
        "no lifetime policy, no expiry"
    );
    assert_eq!(events[1]["secret_version"], 1);
    assert_eq!(events[1]["actor_client_id"], me.client_id.to_string());
    assert_eq!(events[1]["connection_id"], me.connection_id.to_string());
    assert_eq!(events[1]["remote_address"], "127.0.0.1");
    assert_eq!(events[0]["grace_period"], Value::Null);
    for event in events {
        assert!(event["occurred_at"].as_str().unwrap().ends_with('Z'));
        assert!(!event["request_id"].as_str().unwrap().is_empty());
    }
    assert!(!body.to_string().contains(&secret));

    let (_, second) = app
        .events(
            me.client_id,
            me.connection_id,
            "?page=2&page_size=1",
            &me.token,
        )
        .await;
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_eq!(second["data"][0]["kind"], "secret_refreshed");
    assert_eq!(
        second["paging"],
        json!({"page_number": 2, "page_size": 1, "total_pages": 2, "total_entries": 2})
    );
    let (_, past) = app
        .events(
            me.client_id,
            me.connection_id,
            "?page=3&page_size=1",
            &me.token,
        )
        .await;
    assert_eq!(past["data"], json!([]));
    assert_eq!(past["paging"]["total_entries"], 2);
}

/// Issue "ten holes", 6: the database pages the merge of events and sightings; every
/// page, on either backend, holds the right entries in the right order.
#[actix_web::test]
async fn events_and_sightings_merge_newest_first_across_pages() {
    use chrono::{Datelike as _, Duration, TimeZone as _, Utc};
    use entity::secret_sighting;
    use sea_orm::ActiveValue::Set;

    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    // Inside the sighting window: the sightings' writer forgets older ones (at start, too).
    let start = Utc::now() - Duration::days(20);
    let start = Utc
        .with_ymd_and_hms(start.year(), start.month(), start.day(), 0, 0, 0)
        .unwrap();
    // 120 events an hour apart, and 5 sightings a day apart, each 30 s after an event;
    // what the trail must show, newest first.
    let mut expected: Vec<(chrono::DateTime<Utc>, String)> = Vec::new();
    let events: Vec<connection_event::ActiveModel> = (0..120i64)
        .map(|hour| {
            let at = start + Duration::hours(hour);
            expected.push((at, format!("event-{hour}")));
            connection_event::ActiveModel {
                id: Set(Uuid::now_v7()),
                connection_id: Set(me.connection_id),
                client_id: Set(me.client_id),
                kind: Set("updated".to_owned()),
                actor_user_id: Set(Uuid::new_v4()),
                actor_client_id: Set(me.client_id),
                request_id: Set(format!("event-{hour}")),
                remote_address: Set(None),
                secret_version: Set(Some(0)),
                grace_period: Set(None),
                secret_expires_at: Set(None),
                occurred_at: Set(at),
            }
        })
        .collect();
    connection_event::Entity::insert_many(events)
        .exec_without_returning(&app.db)
        .await
        .unwrap();
    for day in 0..5i64 {
        let at = start + Duration::days(day) + Duration::seconds(30);
        expected.push((at, format!("sighting-{day}")));
        secret_sighting::Entity::insert(secret_sighting::ActiveModel {
            id: Set(Uuid::now_v7()),
            connection_id: Set(me.connection_id),
            client_id: Set(me.client_id),
            consumer_id: Set(Uuid::new_v4()),
            day: Set(at.date_naive()),
            reason: Set(secret_sighting::reason::RETIRED.to_owned()),
            count: Set(day + 1),
            first_seen_at: Set(at),
            last_seen_at: Set(at),
            last_address: Set(None),
        })
        .exec_without_returning(&app.db)
        .await
        .unwrap();
    }
    expected.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let expected: Vec<String> = expected.into_iter().map(|(_, name)| name).collect();

    let mut seen = Vec::new();
    for page in 1..=3 {
        let (status, body) = app
            .events(
                me.client_id,
                me.connection_id,
                &format!("?page={page}&page_size=50"),
                &me.token,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["paging"]["total_entries"], 125);
        for entry in body["data"].as_array().unwrap() {
            seen.push(match entry["kind"].as_str().unwrap() {
                "updated" => entry["request_id"].as_str().unwrap().to_owned(),
                "stale_secret_presented" => {
                    format!("sighting-{}", entry["count"].as_i64().unwrap() - 1)
                }
                other => panic!("unexpected kind {other}"),
            });
        }
    }
    assert_eq!(seen, expected);
}
