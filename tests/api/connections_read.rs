//! `GET …/connections` and `GET …/connections/{connection_id}`: shape, paging, filters,
//! and the 404 and 422 rows of API.md.
use std::collections::HashSet;

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestApp, assert_error, assert_schema};

fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn list_returns_only_this_clients_connections_in_the_ehealth_shape() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let (second, _) = app.connection(me.client_id).await;
    let other = app.owned("MSP").await;

    let (status, body) = app.list(me.client_id, "", &me.token).await;
    assert_eq!(status, 200, "{body}");
    assert_schema("connections_list_response.json", &body);
    let got: HashSet<String> = ids(&body).into_iter().collect();
    let want: HashSet<String> = [me.connection_id, second]
        .iter()
        .map(Uuid::to_string)
        .collect();
    assert_eq!(got, want);
    assert!(!got.contains(&other.connection_id.to_string()));
    assert_eq!(body["meta"]["type"], "list");
    assert_eq!(
        body["paging"],
        json!({"page_number": 1, "page_size": 50, "total_pages": 1, "total_entries": 2})
    );
    for connection in body["data"].as_array().unwrap() {
        assert!(connection.get("secret").is_none(), "{connection}");
        assert!(connection["inserted_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(connection["client_id"], me.client_id.to_string());
    }
    assert!(!body.to_string().contains(&me.secret));
}

#[actix_web::test]
async fn paging_walks_every_entry_once_and_past_the_end_is_empty() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    for _ in 0..4 {
        app.connection(me.client_id).await;
    }
    let mut seen = Vec::new();
    for (page, expected) in [(1, 2), (2, 2), (3, 1)] {
        let (status, body) = app
            .list(
                me.client_id,
                &format!("?page={page}&page_size=2"),
                &me.token,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_schema("connections_list_response.json", &body);
        assert_eq!(
            body["data"].as_array().unwrap().len(),
            expected,
            "page {page}"
        );
        assert_eq!(
            body["paging"],
            json!({"page_number": page, "page_size": 2, "total_pages": 3, "total_entries": 5})
        );
        seen.extend(ids(&body));
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 5, "no entry twice, none left out");

    for page in ["4", "1000000", "18446744073709551615"] {
        let (status, body) = app
            .list(
                me.client_id,
                &format!("?page={page}&page_size=2"),
                &me.token,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"], json!([]));
        assert_eq!(body["paging"]["page_number"].to_string(), page);
        assert_eq!(body["paging"]["total_pages"], 3);
        assert_eq!(body["paging"]["total_entries"], 5);
    }
    let (status, body) = app.list(me.client_id, "?page_size=300", &me.token).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 5);
}

#[actix_web::test]
async fn a_client_without_connections_lists_one_empty_page() {
    let app = TestApp::spawn().await;
    let nhs = app.owned("NHS").await;
    let lonely = app.client("MSP").await;
    let (status, body) = app.list(lonely, "", &nhs.token).await;
    assert_eq!(status, 200, "{body}");
    assert_schema("connections_list_response.json", &body);
    assert_eq!(body["data"], json!([]));
    assert_eq!(
        body["paging"],
        json!({"page_number": 1, "page_size": 50, "total_pages": 1, "total_entries": 0})
    );
}

#[actix_web::test]
async fn bad_paging_and_filters_are_422_query_parameters() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    for (query, entry) in [
        ("?page=0", "$.page"),
        ("?page=-1", "$.page"),
        ("?page=two", "$.page"),
        ("?page=1.5", "$.page"),
        ("?page=99999999999999999999999", "$.page"),
        ("?page_size=0", "$.page_size"),
        ("?page_size=301", "$.page_size"),
        ("?page_size=", "$.page_size"),
        ("?consumer_id=not-a-uuid", "$.consumer_id"),
        ("?redirect_uri=a%00b", "$.redirect_uri"),
    ] {
        let got = app.list(me.client_id, query, &me.token).await;
        assert_error(&got, 422, "validation_failed", None);
        let invalid = &got.1["error"]["invalid"][0];
        assert_eq!(invalid["entry"], entry, "{query}");
        assert_eq!(invalid["entry_type"], "query_parameter", "{query}");
        assert!(invalid["rules"][0]["rule"].is_string());
    }
    let got = app
        .events(me.client_id, me.connection_id, "?page_size=1000", &me.token)
        .await;
    assert_error(&got, 422, "validation_failed", None);
    assert_eq!(got.1["error"]["invalid"][0]["entry"], "$.page_size");
}

#[actix_web::test]
async fn filters_by_consumer_and_redirect_uri_substring() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let a = app.client("MIS").await;
    let b = app.client("MIS").await;
    let (status, _) = app
        .upsert(
            me.client_id,
            a,
            "https://alpha.example.org/cb?x=100%",
            &me.token,
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = app
        .upsert(
            me.client_id,
            b,
            "https://beta.example.org/callback",
            &me.token,
        )
        .await;
    assert_eq!(status, 201);

    let (_, body) = app
        .list(me.client_id, &format!("?consumer_id={a}"), &me.token)
        .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["consumer_id"], a.to_string());
    assert_eq!(body["paging"]["total_entries"], 1);

    let (_, body) = app
        .list(
            me.client_id,
            &format!("?consumer_id={}", Uuid::new_v4()),
            &me.token,
        )
        .await;
    assert_eq!(body["data"], json!([]));

    let count = |body: &Value| body["data"].as_array().unwrap().len();
    let (_, body) = app
        .list(me.client_id, "?redirect_uri=beta.example", &me.token)
        .await;
    assert_eq!(count(&body), 1);
    assert_eq!(body["data"][0]["consumer_id"], b.to_string());
    // The seeded connection and both new ones share the scheme.
    let (_, body) = app
        .list(me.client_id, "?redirect_uri=https%3A%2F%2F", &me.token)
        .await;
    assert_eq!(count(&body), 3);
    // `%` and `_` mean themselves, not LIKE wildcards; the match is case-sensitive.
    let (_, body) = app
        .list(me.client_id, "?redirect_uri=100%25", &me.token)
        .await;
    assert_eq!(count(&body), 1);
    let (_, body) = app.list(me.client_id, "?redirect_uri=%25", &me.token).await;
    assert_eq!(count(&body), 1);
    let (_, body) = app.list(me.client_id, "?redirect_uri=_", &me.token).await;
    assert_eq!(count(&body), 0);
    let (_, body) = app
        .list(me.client_id, "?redirect_uri=BETA", &me.token)
        .await;
    assert_eq!(count(&body), 0);
    // Both filters at once.
    let (_, body) = app
        .list(
            me.client_id,
            &format!("?consumer_id={a}&redirect_uri=beta"),
            &me.token,
        )
        .await;
    assert_eq!(count(&body), 0);
}

#[actix_web::test]
async fn show_returns_one_connection_without_its_secret() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let (status, body) = app.show(me.client_id, me.connection_id, &me.token).await;
    assert_eq!(status, 200, "{body}");
    assert_schema("connection_show_response.json", &body);
    let mut fields: Vec<&str> = body["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "client_id",
            "consumer_id",
            "id",
            "inserted_at",
            "redirect_uri",
            "updated_at"
        ]
    );
    assert_eq!(body["data"]["id"], me.connection_id.to_string());
    assert_eq!(body["meta"]["type"], "object");
}

#[actix_web::test]
async fn missing_foreign_and_malformed_ids_are_404() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let other = app.owned("MSP").await;
    let nhs = app.owned("NHS").await;
    let client = me.client_id.to_string();
    for (path, token) in [
        (
            format!("/api/clients/{client}/connections/{}", Uuid::new_v4()),
            &me.token,
        ),
        (
            format!("/api/clients/{client}/connections/{}", other.connection_id),
            &me.token,
        ),
        (
            format!("/api/clients/{client}/connections/not-a-uuid"),
            &me.token,
        ),
        (
            format!("/api/clients/{}/connections", Uuid::new_v4()),
            &nhs.token,
        ),
        ("/api/clients/not-a-uuid/connections".to_owned(), &nhs.token),
        (
            format!(
                "/api/clients/{}/connections/{}",
                Uuid::new_v4(),
                me.connection_id
            ),
            &nhs.token,
        ),
        (
            format!(
                "/api/clients/{client}/connections/{}/events",
                Uuid::new_v4()
            ),
            &me.token,
        ),
        (
            format!(
                "/api/clients/{client}/connections/{}/events",
                other.connection_id
            ),
            &me.token,
        ),
    ] {
        let got = app.call(Method::GET, &path, Some(token), None).await;
        assert_error(&got, 404, "not_found", None);
    }
}

#[actix_web::test]
async fn uppercase_ids_name_the_same_connection() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let path = format!(
        "/api/clients/{}/connections/{}",
        me.client_id.to_string().to_uppercase(),
        me.connection_id.to_string().to_uppercase()
    );
    let (status, body) = app.call(Method::GET, &path, Some(&me.token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["id"], me.connection_id.to_string());
}
