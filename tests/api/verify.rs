//! `POST /api/connections/actions/verify`.
use crate::support::{TestApp, assert_error};

#[actix_web::test]
async fn current_secret_verifies_without_revealing_it() {
    let app = TestApp::spawn().await;
    let me = app.owned("MSP").await;
    let (status, body) = app.verify(&me.secret).await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_object().unwrap();
    let mut fields: Vec<&str> = data.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["client_id", "consumer_id", "id", "redirect_uri"]);
    assert_eq!(data["id"], me.connection_id.to_string());
    assert!(!body.to_string().contains(&me.secret));
}

#[actix_web::test]
async fn missing_api_key_is_401() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .post(format!("{}/api/connections/actions/verify", app.address))
        .send()
        .await
        .unwrap();
    let got = crate::support::into_parts(response).await;
    assert_error(&got, 401, "access_denied", Some("api-key header not set"));
}

#[actix_web::test]
async fn unknown_secret_is_401() {
    let app = TestApp::spawn().await;
    app.owned("MSP").await;
    let got = app.verify("not-a-secret").await;
    assert_error(&got, 401, "access_denied", Some("invalid api-key header"));
}
