//! Query parameters and JSON bodies, checked into typed values or `invalid` entries
//! (422), never a 400 or a 500.
use std::collections::HashMap;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use actix_web::web::{self, Bytes};

use super::{ApiError, Invalid};
use crate::connections::ListFilter;
use crate::paging::PageRequest;

pub const DEFAULT_PAGE_SIZE: u64 = 50;
pub const MAX_PAGE_SIZE: u64 = 300;
/// Longest `redirect_uri` accepted.
pub const MAX_REDIRECT_URI: usize = 2048;

/// The most a request body may hold: every body of this API is a small JSON object.
pub const BODY_LIMIT: usize = 4 * 1024;

/// Whether the request announces a body: a length above zero, or chunks.
pub fn has_body(req: &actix_web::HttpRequest) -> bool {
    let headers = req.headers();
    headers.contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || headers
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|length| length > 0)
}

/// Reads a request's body, once the checks before it have passed: over `BODY_LIMIT` is
/// 413 (by its declared length without reading it, else as soon as it grows past).
pub async fn body(req: &actix_web::HttpRequest, payload: web::Payload) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > BODY_LIMIT as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    match payload.to_bytes_limited(BODY_LIMIT).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::unreadable_body()),
        Err(_) => Err(ApiError::PayloadTooLarge),
    }
}

/// The query string as name → value; of a repeated name the last value counts.
pub fn params(query_string: &str) -> Result<HashMap<String, String>, Vec<Invalid>> {
    let pairs: Vec<(String, String)> = serde_urlencoded_pairs(query_string)?;
    Ok(pairs.into_iter().collect())
}

fn serde_urlencoded_pairs(query_string: &str) -> Result<Vec<(String, String)>, Vec<Invalid>> {
    actix_web::web::Query::<Vec<(String, String)>>::from_query(query_string)
        .map(actix_web::web::Query::into_inner)
        .map_err(|_| {
            vec![Invalid::query_parameter(
                "$",
                "format",
                "the query string is not valid URL encoding",
                vec![],
            )]
        })
}

/// `page` (from 1, default 1) and `page_size` (1 to 300, default 50).
pub fn page_request(params: &HashMap<String, String>, invalid: &mut Vec<Invalid>) -> PageRequest {
    let page = bounded(params, "page", 1, u64::MAX, 1, invalid);
    let page_size = bounded(
        params,
        "page_size",
        1,
        MAX_PAGE_SIZE,
        DEFAULT_PAGE_SIZE,
        invalid,
    );
    PageRequest { page, page_size }
}

fn bounded(
    params: &HashMap<String, String>,
    name: &str,
    min: u64,
    max: u64,
    default: u64,
    invalid: &mut Vec<Invalid>,
) -> u64 {
    let Some(raw) = params.get(name) else {
        return default;
    };
    match raw.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => n,
        _ => {
            let rule = if max == u64::MAX {
                json!({"greater_than_or_equal_to": min})
            } else {
                json!({"greater_than_or_equal_to": min, "less_than_or_equal_to": max})
            };
            invalid.push(Invalid::query_parameter(
                format!("$.{name}"),
                "number",
                if max == u64::MAX {
                    format!("expected an integer of at least {min}")
                } else {
                    format!("expected an integer from {min} to {max}")
                },
                vec![rule],
            ));
            default
        }
    }
}

/// The list's filters: `consumer_id` (a UUID) and `redirect_uri` (a substring).
pub fn list_filter(params: &HashMap<String, String>, invalid: &mut Vec<Invalid>) -> ListFilter {
    let consumer_id = params
        .get("consumer_id")
        .and_then(|raw| match Uuid::parse_str(raw.trim()) {
            Ok(id) => Some(id),
            Err(_) => {
                invalid.push(Invalid::query_parameter(
                    "$.consumer_id",
                    "uuid",
                    "expected a UUID",
                    vec![],
                ));
                None
            }
        });
    // No stored `redirect_uri` holds a control character, and PostgreSQL refuses a NUL in
    // a text parameter: such a filter is the caller's error, not the database's.
    let redirect_uri = params.get("redirect_uri").and_then(|needle| {
        if needle.chars().any(char::is_control) {
            invalid.push(Invalid::query_parameter(
                "$.redirect_uri",
                "format",
                "control characters are not allowed",
                vec![],
            ));
            None
        } else {
            Some(needle.clone())
        }
    });
    ListFilter {
        consumer_id,
        redirect_uri,
    }
}

/// The request body as a JSON object.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, Vec<Invalid>> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        vec![Invalid::json_property(
            "$",
            "json",
            "the request body is not valid JSON",
            vec![],
        )]
    })?;
    match value {
        Value::Object(fields) => Ok(fields),
        _ => Err(vec![Invalid::json_property(
            "$",
            "type",
            "type mismatch. Expected object",
            vec![json!("object")],
        )]),
    }
}

fn required<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
    invalid: &mut Vec<Invalid>,
) -> Option<&'a str> {
    match fields.get(name) {
        None | Some(Value::Null) => {
            invalid.push(Invalid::json_property(
                format!("$.{name}"),
                "required",
                "required property is missing",
                vec![],
            ));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            invalid.push(Invalid::json_property(
                format!("$.{name}"),
                "type",
                "type mismatch. Expected string",
                vec![json!("string")],
            ));
            None
        }
    }
}

/// `redirect_uri`: required, an absolute `https://` URL with a host.
pub fn redirect_uri(fields: &Map<String, Value>, invalid: &mut Vec<Invalid>) -> Option<String> {
    let raw = required(fields, "redirect_uri", invalid)?;
    if is_https_url(raw) {
        Some(raw.to_owned())
    } else {
        invalid.push(Invalid::json_property(
            "$.redirect_uri",
            "format",
            format!("expected an https:// URL of at most {MAX_REDIRECT_URI} characters"),
            vec![json!("^https://")],
        ));
        None
    }
}

/// `consumer_id`: required, a UUID. Whether that client exists is the caller's check.
pub fn consumer_id(fields: &Map<String, Value>, invalid: &mut Vec<Invalid>) -> Option<Uuid> {
    let raw = required(fields, "consumer_id", invalid)?;
    match Uuid::parse_str(raw) {
        Ok(id) => Some(id),
        Err(_) => {
            invalid.push(Invalid::json_property(
                "$.consumer_id",
                "uuid",
                "expected a UUID",
                vec![],
            ));
            None
        }
    }
}

/// The refresh body: empty, or an object whose optional `grace_period` is a whole number
/// of seconds in `0..=max` (`null` is 0).
pub fn grace_period(body: &[u8], max: u64) -> Result<i64, Vec<Invalid>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(0);
    }
    let fields = json_object(body)?;
    let out_of_range = || {
        vec![Invalid::json_property(
            "$.grace_period",
            "number",
            format!("expected an integer from 0 to {max}"),
            vec![json!({"greater_than_or_equal_to": 0, "less_than_or_equal_to": max})],
        )]
    };
    match fields.get("grace_period") {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n
            .as_u64()
            .filter(|secs| *secs <= max)
            .and_then(|secs| i64::try_from(secs).ok())
            .ok_or_else(out_of_range),
        Some(_) => Err(vec![Invalid::json_property(
            "$.grace_period",
            "type",
            "type mismatch. Expected integer",
            vec![json!("integer")],
        )]),
    }
}

fn is_https_url(raw: &str) -> bool {
    raw.len() <= MAX_REDIRECT_URI
        && raw
            .strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && !raw.chars().any(|c| c.is_whitespace() || c.is_control())
        && url::Url::parse(raw).is_ok_and(|u| u.scheme() == "https" && u.host().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(query: &str) -> (PageRequest, ListFilter, Vec<Invalid>) {
        let mut invalid = Vec::new();
        let params = params(query).unwrap();
        let page = page_request(&params, &mut invalid);
        let filter = list_filter(&params, &mut invalid);
        (page, filter, invalid)
    }

    #[test]
    fn paging_defaults_and_bounds() {
        let (page, _, invalid) = parsed("");
        assert_eq!((page.page, page.page_size), (1, 50));
        assert!(invalid.is_empty());
        let (page, _, invalid) = parsed("page=3&page_size=300");
        assert_eq!((page.page, page.page_size), (3, 300));
        assert!(invalid.is_empty());
        for bad in [
            "page=0",
            "page=-1",
            "page=x",
            "page_size=0",
            "page_size=301",
            "page=1.5",
        ] {
            let (_, _, invalid) = parsed(bad);
            assert_eq!(invalid.len(), 1, "{bad}");
            assert_eq!(invalid[0].entry_type, "query_parameter");
        }
    }

    #[test]
    fn consumer_id_must_be_a_uuid() {
        let (_, filter, invalid) = parsed("consumer_id=nope&redirect_uri=%25x");
        assert_eq!(invalid[0].entry, "$.consumer_id");
        assert_eq!(filter.redirect_uri.as_deref(), Some("%x"));
        let (_, _, invalid) = parsed("redirect_uri=a%00b");
        assert_eq!(invalid[0].entry, "$.redirect_uri");
    }

    #[test]
    fn grace_period_rules() {
        assert_eq!(grace_period(b"", 10).unwrap(), 0);
        assert_eq!(grace_period(b" \n", 10).unwrap(), 0);
        assert_eq!(grace_period(b"{}", 10).unwrap(), 0);
        assert_eq!(grace_period(br#"{"grace_period": 10}"#, 10).unwrap(), 10);
        assert_eq!(grace_period(br#"{"grace_period": null}"#, 10).unwrap(), 0);
        for bad in [
            &br#"{"grace_period": 11}"#[..],
            br#"{"grace_period": -1}"#,
            br#"{"grace_period": 1.5}"#,
            br#"{"grace_period": "5"}"#,
            br#"[1]"#,
            br#"{"grace_period": "#,
        ] {
            let invalid = grace_period(bad, 10).unwrap_err();
            assert_eq!(invalid.len(), 1, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn redirect_uri_must_be_https_with_a_host() {
        for good in ["https://mis.example.org/cb", "https://a.b:8443/x?y=1"] {
            assert!(is_https_url(good), "{good}");
        }
        for bad in [
            "http://mis.example.org/cb",
            "https://",
            "HTTPS://x.org",
            "https:///path",
            "ftp://x",
            "https://x.org/a b",
            "mis.example.org",
            "",
        ] {
            assert!(!is_https_url(bad), "{bad}");
        }
    }
}
