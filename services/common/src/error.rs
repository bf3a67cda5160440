//! The one error shape every PayFlow endpoint answers with:
//! `{"error":"<human message>","code":"<machine code>","details":[{"path","msg"}]}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FieldError {
    pub path: String,
    pub msg: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Self { path: path.into(), msg: msg.into() }
    }
}

/// An error answer. Internal causes are logged, never sent to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub code: &'static str,
    pub details: Vec<FieldError>,
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    details: &'a [FieldError],
    #[serde(rename = "retryAfter", skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), code, details: Vec::new(), retry_after: None }
    }

    pub fn validation(details: Vec<FieldError>) -> Self {
        Self { details, ..Self::new(StatusCode::BAD_REQUEST, "validation_failed", "Validation failed") }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>, details: Vec<FieldError>) -> Self {
        Self { details, ..Self::new(StatusCode::BAD_REQUEST, code, message) }
    }

    pub fn authentication_required() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_required", "Authentication required")
    }

    pub fn invalid_token() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_token", "Invalid or expired token")
    }

    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Access denied - you can only access your own resources")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn route_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "route_not_found", "Route not found")
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", message)
    }

    /// The same error with another machine-readable code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    pub fn with_details(mut self, details: Vec<FieldError>) -> Self {
        self.details = details;
        self
    }

    /// Logs the cause and answers a generic 500.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "Internal server error")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    fn body(&self) -> Body<'_> {
        Body { error: &self.message, code: self.code, details: &self.details, retry_after: self.retry_after }
    }

    /// The JSON body this error answers with, for an answer that carries
    /// several results (a batch endpoint).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.body()).unwrap_or(serde_json::Value::Null)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let json =
            serde_json::to_vec(&self.body()).unwrap_or_else(|_| b"{\"error\":\"Internal server error\"}".to_vec());
        let mut res =
            (self.status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // A lost connection or a restarting server is worth a retry: 503, not 500.
        if crate::db::is_transient(&e) {
            tracing::warn!(error = %e, "database unavailable");
            return Self::unavailable("Service temporarily unavailable, please retry")
                .with_code("database_unavailable");
        }
        Self::internal(e)
    }
}

/// `Result` for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_database_connection_is_a_503_and_a_bad_query_a_500() {
        let lost = ApiError::from(sqlx::Error::Io(std::io::Error::other("connection reset")));
        assert_eq!((lost.status, lost.code), (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"));
        let bug = ApiError::from(sqlx::Error::ColumnNotFound("x".into()));
        assert_eq!(bug.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
