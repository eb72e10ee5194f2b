//! The bearer-key check: when `DISPATCHER_API_KEYS` is set, every `/v1` request must carry one of
//! the keys, compared in constant time (`subtle`) against every key, so that timing says nothing
//! about which key or which prefix matched.

use axum::http::{header, HeaderMap};
use shared::config::Secret;
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// Whether `headers` carry one of `keys` as a bearer token; any request passes when no keys are set.
pub(super) fn authorize(keys: &[Secret<String>], headers: &HeaderMap) -> Result<(), ApiError> {
    if keys.is_empty() {
        return Ok(());
    }
    let presented = bearer_token(headers).ok_or(ApiError::Unauthorized)?;
    let matched = keys
        .iter()
        .fold(subtle::Choice::from(0), |found, key| found | key.expose().as_bytes().ct_eq(presented));
    if bool::from(matched) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = value.get(..7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| value[7..].trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_compared_exactly() {
        let keys =
            [Secret::new("abc-0123456789-key".to_string()), Secret::new("second-key-0123456".to_string())];
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            authorize(&keys, &headers).is_ok()
        };
        assert!(with("bearer  abc-0123456789-key "));
        assert!(with("Bearer second-key-0123456"));
        assert!(!with("Bearer abc-0123456789-ke"));
        assert!(!with("Bearer abc-0123456789-keyy"));
        assert!(!with("Basic abc-0123456789-key"));
        assert!(authorize(&keys, &HeaderMap::new()).is_err());
        assert!(authorize(&[], &HeaderMap::new()).is_ok(), "no keys: open (loopback only)");
    }
}
