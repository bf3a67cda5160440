//! The `Idempotency-Key` request header, parsed once wherever a request
//! enters (the gateway, and the transaction service it forwards to).

use axum::http::HeaderMap;

use crate::error::{ApiError, ApiResult, FieldError};

/// 1-255 visible ASCII characters, sent at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const HEADER: &'static str = "idempotency-key";

    /// `None` without the header; a 400 naming the header when it is
    /// malformed or repeated (which of two keys was meant cannot be guessed).
    pub fn from_headers(headers: &HeaderMap) -> ApiResult<Option<Self>> {
        let mut values = headers.get_all(Self::HEADER).iter();
        let Some(first) = values.next() else { return Ok(None) };
        if values.next().is_some() {
            return Err(invalid("must be sent once"));
        }
        match first.to_str() {
            Ok(k) if Self::valid(k) => Ok(Some(Self(k.to_string()))),
            _ => Err(invalid("must be 1-255 visible ASCII characters")),
        }
    }

    fn valid(key: &str) -> bool {
        (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

fn invalid(msg: &str) -> ApiError {
    ApiError::validation(vec![FieldError::new("Idempotency-Key", msg)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(IdempotencyKey::HEADER, HeaderValue::from_bytes(v).expect("header value"));
        }
        h
    }

    #[test]
    fn absent_is_none_and_a_good_key_is_kept_as_sent() {
        assert_eq!(IdempotencyKey::from_headers(&headers(&[])).expect("absent"), None);
        let long = "k".repeat(255);
        let key = IdempotencyKey::from_headers(&headers(&[long.as_bytes()])).expect("valid").expect("some");
        assert_eq!(key.as_str(), long);
    }

    #[test]
    fn malformed_or_repeated_keys_are_refused() {
        let too_long = "k".repeat(256);
        for bad in [&[&b""[..]][..], &[b"a b"], &[too_long.as_bytes()], &[b"caf\xc3\xa9"], &[b"a", b"b"]] {
            let err = IdempotencyKey::from_headers(&headers(bad)).expect_err("refused");
            assert_eq!((err.status.as_u16(), err.details[0].path.as_str()), (400, "Idempotency-Key"));
        }
    }
}
