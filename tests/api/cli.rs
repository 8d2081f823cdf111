//! The command line as a newcomer uses it: `mithril seed --demo` prints a working token.
use std::process::Command;

use crate::support::{TestApp, TestDatabase};

#[actix_web::test]
async fn seed_demo_prints_a_token_and_curl_that_work() {
    let database = std::sync::Arc::new(TestDatabase::new().await);
    let output = Command::new(env!("CARGO_BIN_EXE_mithril"))
        .args(["seed", "--demo"])
        .env("DATABASE_URL", &database.url)
        .env_remove("REDIS_URL")
        .env_remove("SMTP_URL")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let curl_start = stdout.find("curl ").expect("a curl command");
    let curl = &stdout[curl_start..];
    let url = curl
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let token = curl
        .split("Bearer ")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert!(stdout.contains(token), "the token is printed");

    let app = TestApp::spawn_on(database, |_| {}).await;
    let path = &url[url.find("/api/").unwrap()..];
    let response = app
        .http
        .patch(format!("{}{path}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
