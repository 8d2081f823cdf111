//! The served OpenAPI document against the route table the app registers, and the docs
//! page.
use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;

use crate::support::TestApp;

async fn document(app: &TestApp) -> Value {
    let (status, text) = app.get_text("/api/openapi.json").await;
    assert_eq!(status, 200);
    serde_json::from_str(&text).unwrap()
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if [
                "get", "put", "post", "patch", "delete", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                routes.insert((method.clone(), path.clone()));
            }
        }
    }
    routes
}

#[actix_web::test]
async fn the_document_lists_exactly_the_registered_routes() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let registered: BTreeSet<(String, String)> = mithril::http::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert!(registered.len() >= 13, "{registered:?}");
    assert_eq!(documented(&doc), registered);
    for must in [
        (
            "patch",
            "/api/clients/{id}/connections/{connection_id}/actions/refresh_secret",
        ),
        ("post", "/api/connections/actions/verify"),
        ("get", "/health/ready"),
        ("get", "/metrics"),
    ] {
        assert!(
            registered.contains(&(must.0.to_owned(), must.1.to_owned())),
            "{must:?}"
        );
    }
}

/// The table is what actix serves: every entry answers on the live server with
/// something other than "no such route" or "no such method".
#[actix_web::test]
async fn every_route_in_the_table_is_served() {
    let app = TestApp::spawn().await;
    let fill = |path: &str| {
        path.replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{connection_id}", &uuid::Uuid::new_v4().to_string())
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (method, path) in mithril::http::ROUTES {
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = client
            .request(method.clone(), format!("{}{}", app.address, fill(path)))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        // Without a token, API routes answer 401 before looking anything up.
        assert!(![404, 405].contains(&status), "{method} {path}: {status}");
        // The document promises this header on every answer.
        assert!(
            response.headers().contains_key("x-request-id"),
            "{method} {path}"
        );
    }
    // And a route outside the table is not.
    let (status, _) = app.call(Method::GET, "/api/clients", None, None).await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn every_operation_documents_its_statuses_and_security() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "api-key");
    for schema in [
        "ErrorResponse",
        "Meta",
        "Paging",
        "Invalid",
        "ConnectionView",
        "EventView",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "{schema}"
        );
    }
    let scopes = [
        "connection:read",
        "connection:write",
        "connection:delete",
        "connection:refresh_secret",
    ];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let statuses: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            let name = format!("{method} {path}");
            assert!(
                op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == "x-request-id" && p["in"] == "header"),
                "{name} takes x-request-id"
            );
            for (status, response) in op["responses"].as_object().unwrap() {
                assert!(
                    response["headers"].get("x-request-id").is_some(),
                    "{name} {status} answers with x-request-id"
                );
            }
            assert!(
                statuses
                    .iter()
                    .any(|s| s.starts_with('2') || s.starts_with('3')),
                "{name}"
            );
            if path.starts_with("/api/clients/") {
                let security = &op["security"][0]["bearer"];
                let scope = security[0]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: {op}"));
                assert!(scopes.contains(&scope), "{name}");
                for status in ["401", "403", "404", "503"] {
                    assert!(
                        statuses.iter().any(|s| *s == status),
                        "{name} lacks {status}"
                    );
                }
            }
        }
    }
    let verify = &doc["paths"]["/api/connections/actions/verify"]["post"];
    assert!(verify["security"][0].get("api_key").is_some(), "{verify}");
    assert!(verify["responses"].get("401").is_some());
    let upsert = &doc["paths"]["/api/clients/{id}/connections"]["put"]["responses"];
    assert!(
        upsert.get("200").is_some() && upsert.get("201").is_some() && upsert.get("422").is_some()
    );
}

#[actix_web::test]
async fn docs_page_is_served_from_the_binary_and_points_at_the_document() {
    let app = TestApp::spawn().await;
    let (status, html) = app.get_text("/docs").await;
    assert_eq!(status, 200, "/docs redirects to /docs/");
    assert!(html.contains("swagger-ui"), "{html}");
    let (status, init) = app.get_text("/docs/swagger-initializer.js").await;
    assert_eq!(status, 200);
    assert!(init.contains("/api/openapi.json"), "{init}");
    for asset in ["/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js"] {
        let (status, body) = app.get_text(asset).await;
        assert_eq!(status, 200, "{asset}");
        assert!(body.len() > 1000, "{asset}");
    }
    assert!(!html.contains("https://"), "no asset from a CDN");
}
