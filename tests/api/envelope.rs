//! The envelope and request id on every answer, including actix's own 404 and 405.
use crate::support::{TestApp, assert_error, into_parts};

#[actix_web::test]
async fn caller_request_id_is_echoed_in_header_and_meta() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let response = app
        .http
        .patch(app.refresh_url(&me.client_id.to_string(), &me.connection_id.to_string()))
        .bearer_auth(&me.token)
        .header("x-request-id", "caller-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "caller-id-42");
    let (status, body) = into_parts(response).await;
    assert_eq!(status, 200);
    assert_eq!(body["meta"]["request_id"], "caller-id-42");
}

#[actix_web::test]
async fn unusable_request_id_is_replaced_by_a_uuid() {
    let app = TestApp::spawn().await;
    for sent in ["x".repeat(201), String::new()] {
        let response = app
            .http
            .post(format!("{}/api/connections/actions/verify", app.address))
            .header("x-request-id", sent.as_str())
            .send()
            .await
            .unwrap();
        let header = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(uuid::Uuid::parse_str(&header).is_ok(), "{header}");
        let (_, body) = into_parts(response).await;
        assert_eq!(body["meta"]["request_id"], header.as_str());
    }
}

#[actix_web::test]
async fn unknown_route_is_404_in_the_envelope() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .get(format!("{}/api/nowhere", app.address))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("x-request-id"));
    let got = into_parts(response).await;
    assert_error(&got, 404, "not_found", None);
    assert!(
        got.1["meta"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/api/nowhere")
    );
}

#[actix_web::test]
async fn wrong_method_is_405_in_the_envelope() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let response = app
        .http
        .get(app.refresh_url(&me.client_id.to_string(), &me.connection_id.to_string()))
        .bearer_auth(&me.token)
        .send()
        .await
        .unwrap();
    let got = into_parts(response).await;
    assert_error(&got, 405, "method_not_allowed", None);
}
