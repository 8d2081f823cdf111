//! Every row of API.md's status table for the refresh call, each with its body.
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use crate::support::{ALL_SCOPES, TestApp, assert_error, assert_schema};

#[actix_web::test]
async fn refresh_returns_a_new_secret_in_the_ehealth_shape() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let (status, body) = app.refresh(me.client_id, me.connection_id, &me.token).await;
    assert_eq!(status, 200, "{body}");
    assert_schema("connection_with_secret_show_response.json", &body);
    let data = body["data"].as_object().unwrap();
    let mut fields: Vec<&str> = data.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "client_id",
            "consumer_id",
            "id",
            "inserted_at",
            "redirect_uri",
            "secret",
            "updated_at"
        ]
    );
    assert_eq!(data["id"], me.connection_id.to_string());
    assert_eq!(data["client_id"], me.client_id.to_string());
    let secret = data["secret"].as_str().unwrap();
    assert!(secret.len() >= 43, "256 bits in base64url is 43 characters");
    assert!(
        secret
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    assert_ne!(secret, me.secret);
    for field in ["inserted_at", "updated_at"] {
        let at = data[field].as_str().unwrap();
        assert!(at.ends_with('Z'), "{at}");
        chrono::DateTime::parse_from_rfc3339(at).unwrap();
    }
    assert_eq!(body["meta"]["type"], "object");
    assert_eq!(body["meta"]["code"], 200);
    assert!(
        body["meta"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/actions/refresh_secret")
    );
}

#[actix_web::test]
async fn missing_authorization_header_is_401() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let got = app
        .refresh_raw(
            &me.client_id.to_string(),
            &me.connection_id.to_string(),
            None,
            None,
        )
        .await;
    assert_error(&got, 401, "access_denied", Some("Access denied"));
}

#[actix_web::test]
async fn malformed_authorization_header_is_401() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    for header in [
        "Basic dXNlcjpwYXNz".to_owned(),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        me.token.clone(),
        format!("Token {}", me.token),
    ] {
        let response = app
            .http
            .patch(app.refresh_url(&me.client_id.to_string(), &me.connection_id.to_string()))
            .header("authorization", header.as_str())
            .send()
            .await
            .unwrap();
        let got = crate::support::into_parts(response).await;
        assert_error(&got, 401, "access_denied", Some("Access denied"));
    }
}

#[actix_web::test]
async fn unknown_token_is_401() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let got = app
        .refresh(me.client_id, me.connection_id, "no-such-token")
        .await;
    assert_error(&got, 401, "access_denied", Some("Access denied"));
}

#[actix_web::test]
async fn expired_token_is_401() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let expired = app
        .token_with(
            me.client_id,
            ALL_SCOPES,
            Utc::now() - chrono::Duration::seconds(1),
            false,
        )
        .await;
    let got = app.refresh(me.client_id, me.connection_id, &expired).await;
    assert_error(&got, 401, "access_denied", Some("Access denied"));
}

#[actix_web::test]
async fn blocked_user_is_401() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let blocked = app
        .token_with(
            me.client_id,
            ALL_SCOPES,
            Utc::now() + chrono::Duration::hours(1),
            true,
        )
        .await;
    let got = app.refresh(me.client_id, me.connection_id, &blocked).await;
    assert_error(&got, 401, "access_denied", Some("Access denied"));
}

#[actix_web::test]
async fn blocked_client_is_401() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    mark_client_blocked(&app, me.client_id).await;
    let got = app.refresh(me.client_id, me.connection_id, &me.token).await;
    assert_error(&got, 401, "access_denied", Some("Access denied"));
}

async fn mark_client_blocked(app: &TestApp, client_id: Uuid) {
    use sea_orm::{ActiveModelTrait as _, ActiveValue::Set, EntityTrait as _};
    let client = entity::client::Entity::find_by_id(client_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let mut client: entity::client::ActiveModel = client.into();
    client.is_blocked = Set(true);
    client.update(&app.db).await.unwrap();
}

#[actix_web::test]
async fn token_without_the_scope_is_403_invalid_scopes() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let read_only = app
        .token(me.client_id, "connection:read connection:write")
        .await;
    let got = app
        .refresh(me.client_id, me.connection_id, &read_only)
        .await;
    assert_error(&got, 403, "forbidden", Some("Invalid scopes"));
}

#[actix_web::test]
async fn another_clients_id_is_403_forbidden() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let other = app.owned("MSP").await;
    let got = app
        .refresh(other.client_id, other.connection_id, &me.token)
        .await;
    assert_error(&got, 403, "forbidden", Some("Forbidden"));
}

#[actix_web::test]
async fn nhs_may_refresh_another_clients_connection() {
    let app = TestApp::spawn().await;
    let nhs = app.owned("NHS").await;
    let clinic = app.owned("MSP").await;
    let (status, body) = app
        .refresh(clinic.client_id, clinic.connection_id, &nhs.token)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["client_id"], clinic.client_id.to_string());
}

#[actix_web::test]
async fn unknown_client_is_404() {
    let app = TestApp::spawn().await;
    let nhs = app.owned("NHS").await;
    let got = app
        .refresh(Uuid::new_v4(), nhs.connection_id, &nhs.token)
        .await;
    assert_error(&got, 404, "not_found", None);
}

#[actix_web::test]
async fn unknown_connection_is_404() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let got = app.refresh(me.client_id, Uuid::new_v4(), &me.token).await;
    assert_error(&got, 404, "not_found", None);
}

#[actix_web::test]
async fn connection_of_another_client_is_404_and_untouched() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let other = app.owned("MSP").await;
    let got = app
        .refresh(me.client_id, other.connection_id, &me.token)
        .await;
    assert_error(&got, 404, "not_found", None);
    assert!(
        app.verifies(&other.secret).await,
        "the other client's secret still works"
    );
}

#[actix_web::test]
async fn non_uuid_ids_are_404() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let nhs = app.owned("NHS").await;
    let got = app
        .refresh_raw(
            &me.client_id.to_string(),
            "not-a-uuid",
            Some(&me.token),
            None,
        )
        .await;
    assert_error(&got, 404, "not_found", None);
    let got = app
        .refresh_raw(
            "not-a-uuid",
            &me.connection_id.to_string(),
            Some(&nhs.token),
            None,
        )
        .await;
    assert_error(&got, 404, "not_found", None);
}

#[actix_web::test]
async fn uppercase_ids_name_the_same_client() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let (status, body) = app
        .refresh_raw(
            &me.client_id.to_string().to_uppercase(),
            &me.connection_id.to_string().to_uppercase(),
            Some(&me.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["id"],
        me.connection_id.to_string(),
        "ids answer lowercase"
    );
}

#[actix_web::test]
async fn grace_period_out_of_range_is_422_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let max = 7 * 24 * 3600;
    for body in [
        json!({"grace_period": -1}),
        json!({"grace_period": max + 1}),
        json!({"grace_period": 1.5}),
        json!({"grace_period": "60"}),
        json!({"grace_period": true}),
    ] {
        let got = app
            .refresh_raw(
                &me.client_id.to_string(),
                &me.connection_id.to_string(),
                Some(&me.token),
                Some(&body.to_string()),
            )
            .await;
        assert_error(&got, 422, "validation_failed", None);
        let invalid = &got.1["error"]["invalid"][0];
        assert_eq!(invalid["entry"], "$.grace_period", "{body}");
        assert_eq!(invalid["entry_type"], "json_data_property");
        assert!(invalid["rules"][0]["rule"].is_string());
    }
    assert!(
        app.verifies(&me.secret).await,
        "a refused refresh rotates nothing"
    );
    assert_eq!(
        app.query_i64("SELECT COUNT(*) FROM connection_events")
            .await,
        0,
        "and records nothing"
    );
}

#[actix_web::test]
async fn grace_period_at_the_maximum_is_accepted() {
    let app =
        TestApp::spawn_with(|c| c.rotation.max_grace_period = std::time::Duration::from_secs(600))
            .await;
    let me = app.owned("MSP").await;
    let (status, _) = app
        .refresh_with_grace(me.client_id, me.connection_id, &me.token, 600)
        .await;
    assert_eq!(status, 200);
    let got = app
        .refresh_with_grace(me.client_id, me.connection_id, &me.token, 601)
        .await;
    assert_error(&got, 422, "validation_failed", None);
}

#[actix_web::test]
async fn malformed_json_body_is_422() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    for body in [r#"{"grace_period": "#, "not json", "[1, 2]", "42"] {
        let got = app
            .refresh_raw(
                &me.client_id.to_string(),
                &me.connection_id.to_string(),
                Some(&me.token),
                Some(body),
            )
            .await;
        assert_error(&got, 422, "validation_failed", None);
        assert_eq!(got.1["error"]["invalid"][0]["entry"], "$", "{body}");
    }
    assert!(app.verifies(&me.secret).await);
}

#[actix_web::test]
async fn checks_answer_in_api_order() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let other = app.owned("MSP").await;
    let bad_body = Some("{");
    let (client, connection) = (me.client_id.to_string(), me.connection_id.to_string());
    // Token before scope, context, existence and body.
    let got = app
        .refresh_raw(&other.client_id.to_string(), "x", Some("nope"), bad_body)
        .await;
    assert_error(&got, 401, "access_denied", None);
    // Scope before context.
    let read_only = app.token(me.client_id, "connection:read").await;
    let got = app
        .refresh_raw(
            &other.client_id.to_string(),
            "x",
            Some(&read_only),
            bad_body,
        )
        .await;
    assert_error(&got, 403, "forbidden", Some("Invalid scopes"));
    // Context before existence.
    let got = app
        .refresh_raw(
            &other.client_id.to_string(),
            &Uuid::new_v4().to_string(),
            Some(&me.token),
            bad_body,
        )
        .await;
    assert_error(&got, 403, "forbidden", Some("Forbidden"));
    // Existence before body.
    let got = app
        .refresh_raw(
            &client,
            &Uuid::new_v4().to_string(),
            Some(&me.token),
            bad_body,
        )
        .await;
    assert_error(&got, 404, "not_found", None);
    // Body last.
    let got = app
        .refresh_raw(&client, &connection, Some(&me.token), bad_body)
        .await;
    assert_error(&got, 422, "validation_failed", None);
}

/// Issue "ten holes", 1: a refresh of a connection that does not exist never spends the
/// client's budget (with or without a body), so a token that may name any client cannot
/// stop one from rotating.
#[actix_web::test]
async fn refreshes_of_missing_connections_take_nothing_from_the_clients_budget() {
    // API.md's default budget (the test configuration turns it off).
    let app = TestApp::spawn_with(|c| {
        c.rotation.refresh_limit = Some(mithril::config::RateLimit::DEFAULT);
    })
    .await;
    let nhs = app.owned("NHS").await;
    let clinic = app.owned("MSP").await;
    for _ in 0..60 {
        let got = app
            .refresh(clinic.client_id, Uuid::new_v4(), &nhs.token)
            .await;
        assert_error(&got, 404, "not_found", None);
    }
    let got = app
        .refresh_with_grace(clinic.client_id, Uuid::new_v4(), &nhs.token, 0)
        .await;
    assert_error(&got, 404, "not_found", None);
    let (status, body) = app
        .refresh(clinic.client_id, clinic.connection_id, &clinic.token)
        .await;
    assert_eq!(
        status, 200,
        "the client's own refresh still has its budget: {body}"
    );
}

/// Issue "ten holes", 1: actors exist only for clients that exist.
#[actix_web::test]
async fn refreshes_on_unknown_clients_start_no_actor() {
    let app = TestApp::spawn().await;
    let nhs = app.owned("NHS").await;
    let before = app.state.connections.active_actors().await;
    for _ in 0..1000 {
        let got = app
            .refresh(Uuid::new_v4(), Uuid::new_v4(), &nhs.token)
            .await;
        assert_error(&got, 404, "not_found", None);
    }
    assert_eq!(app.state.connections.active_actors().await, before);
}
