//! Request headers read into typed values, or `invalid` entries naming the header.
use zeroize::Zeroizing;

use super::{ApiError, Invalid};

/// The `Idempotency-Key` header, read as API.md says: an RFC 8941 String (`"…"`, with
/// `\"` and `\\` escapes) or the same characters unquoted; 16 to 255 visible ASCII
/// characters. `None` when absent.
pub fn idempotency_key(
    req: &actix_web::HttpRequest,
) -> Result<Option<Zeroizing<String>>, ApiError> {
    let mut values = req.headers().get_all(IDEMPOTENCY_KEY);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let refused = |why: &str| {
        ApiError::Validation(vec![Invalid::header(
            "Idempotency-Key",
            "format",
            format!("{why}; expected a quoted string of 16 to 255 visible ASCII characters"),
        )])
    };
    if values.next().is_some() {
        return Err(refused("the header is given more than once"));
    }
    let raw = value
        .to_str()
        .map_err(|_| refused("the header is not visible ASCII"))?
        .trim_matches([' ', '\t']);
    let key = match raw.strip_prefix('"') {
        Some(quoted) => {
            let inner = quoted
                .strip_suffix('"')
                .ok_or_else(|| refused("the string is not closed"))?;
            let mut key = Zeroizing::new(String::with_capacity(inner.len()));
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(escaped @ ('"' | '\\')) => key.push(escaped),
                        _ => return Err(refused("a backslash escapes only \\ or \"")),
                    },
                    '"' => return Err(refused("a quote inside the string is not escaped")),
                    c => key.push(c),
                }
            }
            key
        }
        None => Zeroizing::new(raw.to_owned()),
    };
    if !(16..=255).contains(&key.len()) {
        return Err(refused("the key's length is out of range"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(refused("the key holds characters other than visible ASCII"));
    }
    Ok(Some(key))
}

/// The request header of a retryable refresh.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
