//! Request extractors that turn every kind of bad input into a clear 400 JSON
//! answer with details, instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, FieldError};

/// Largest request body any PayFlow endpoint accepts.
pub const MAX_BODY_BYTES: usize = 10 * 1024;

/// JSON body extractor: size limit, syntax errors and type errors all become
/// `400 {"error","details":[{"path","msg"}]}`.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let body = read_body(req).await?;
        parse_json(&body).map(ApiJson)
    }
}

/// Reads a whole body, enforcing [`MAX_BODY_BYTES`].
pub async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await.map_err(|_| body_too_large())
}

pub fn body_too_large() -> ApiError {
    ApiError::bad_request(
        "payload_too_large",
        "Request body too large",
        vec![FieldError::new("body", format!("must be at most {MAX_BODY_BYTES} bytes"))],
    )
}

/// Parses JSON, reporting the path of the first offending field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "malformed_json",
            "Request body must be JSON",
            vec![FieldError::new("body", "is empty")],
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // Valid JSON whose number no field can hold: the field's fault, not the syntax's.
        if msg.starts_with("number out of range") && path != "." {
            return ApiError::validation(vec![FieldError::new(path, "is out of range")]);
        }
        if inner.is_syntax() || inner.is_eof() {
            malformed(msg)
        } else {
            let msg = strip_position(&msg);
            // serde reports a missing field at its parent; name the field itself.
            if let Some(field) = msg.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
                let full = if path == "." { field.to_string() } else { format!("{path}.{field}") };
                return ApiError::validation(vec![FieldError::new(full, "is required")]);
            }
            let path = if path == "." { "body".to_string() } else { path };
            ApiError::validation(vec![FieldError::new(path, msg)])
        }
    })?;
    // One JSON value per body: anything after it is malformed, not ignored.
    de.end().map_err(|e| malformed(e.to_string()))?;
    Ok(value)
}

fn malformed(msg: String) -> ApiError {
    ApiError::bad_request("malformed_json", "Malformed JSON", vec![FieldError::new("body", msg)])
}

/// serde_json appends " at line 1 column 17", which means nothing to a client.
pub fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The peer address, when the server was started with connect info.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<std::net::SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerAddr(parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0)))
    }
}

/// The one parameter of a route's path, as text. Unlike `Path<String>`, a
/// segment that does not decode (`%FF`) is a JSON 400, not axum's plain text.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(raw)) => Ok(PathParam(raw)),
            Err(_) => Err(ApiError::validation(vec![FieldError::new("path", "must be valid percent-encoded UTF-8")])),
        }
    }
}

/// Parses an id from a path segment; a malformed one is a 400 naming the parameter.
pub fn parse_path_id<T: std::str::FromStr>(raw: &str, name: &str) -> Result<T, ApiError> {
    raw.parse().map_err(|_| ApiError::validation(vec![FieldError::new(name, "must be a UUID")]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Req {
        email: String,
        age: u8,
    }

    #[test]
    fn malformed_json_is_reported_as_such() {
        let err = parse_json::<Req>(b"{\"email\":").unwrap_err();
        assert_eq!(err.code, "malformed_json");
        assert_eq!(err.status, 400);
    }

    #[test]
    fn anything_after_the_value_is_malformed() {
        let err = parse_json::<Req>(br#"{"email":"a@b.c","age":3} x"#).unwrap_err();
        assert_eq!((err.code, err.details[0].path.as_str()), ("malformed_json", "body"));
        assert!(parse_json::<Req>(b"{\"email\":\"a@b.c\",\"age\":3}\n ").is_ok());
    }

    #[test]
    fn a_number_out_of_range_names_its_field() {
        let err = parse_json::<serde_json::Value>(br#"{"amount":1e400}"#).unwrap_err();
        assert_eq!(err.code, "validation_failed");
        assert_eq!(err.details[0], FieldError::new("amount", "is out of range"));
    }

    #[test]
    fn type_errors_name_the_field() {
        let err = parse_json::<Req>(br#"{"email":"a@b.c","age":"x"}"#).unwrap_err();
        assert_eq!(err.details[0].path, "age");
        assert!(!err.details[0].msg.contains("line"));
    }

    #[test]
    fn missing_field_is_a_validation_error() {
        let err = parse_json::<Req>(br#"{"email":"a@b.c"}"#).unwrap_err();
        assert_eq!(err.code, "validation_failed");
        assert_eq!(err.details[0], FieldError::new("age", "is required"));
    }
}
