//! Reading answers and asserting on them; polls with deadlines instead of sleeps.
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub async fn into_parts(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, body)
}

/// Asserts an error envelope: status, `error.type`, `error.message`, and `meta`.
#[track_caller]
pub fn assert_error(actual: &(u16, Value), status: u16, error_type: &str, message: Option<&str>) {
    let (code, body) = actual;
    assert_eq!(*code, status, "{body}");
    assert_eq!(body["error"]["type"], error_type, "{body}");
    if let Some(message) = message {
        assert_eq!(body["error"]["message"], message, "{body}");
    }
    assert_eq!(body["meta"]["code"], status, "{body}");
    assert!(
        body["meta"]["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    assert!(body.get("data").is_none(), "{body}");
}

/// Polls `check` until it holds or `deadline` passes; whether it did.
///
/// `must_use` applies to the awaited answer: a poll whose answer nobody asserts proves
/// nothing, and is refused at compile time (`-D warnings`).
#[must_use = "assert it: a poll nobody asserts proves nothing"]
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `refused` until it holds, asserting it never holds before `expires`: each
/// round's end time proves the refusal was not early.
pub async fn assert_refused_from<F, Fut>(expires: DateTime<Utc>, deadline: Duration, mut refused: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let give_up = std::time::Instant::now() + deadline;
    loop {
        let now_refused = refused().await;
        let round_ended = Utc::now();
        if now_refused {
            assert!(
                round_ended >= expires,
                "refused before the grace period ended"
            );
            return;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "still accepted {deadline:?} after the grace period"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// eHealth's published schema for `name`, vendored under `tests/fixtures`.
pub fn ehealth_schema(name: &str) -> jsonschema::Validator {
    let path = format!(
        "{}/tests/fixtures/ehealth-schemas/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::draft4::new(&schema).unwrap()
}

#[track_caller]
pub fn assert_schema(schema: &str, body: &Value) {
    let validator = ehealth_schema(schema);
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{schema}: {errors:?}\n{body}");
}

/// The value of the metric line of a `/metrics` text that starts with `line_start`, or 0.
pub fn metric(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
