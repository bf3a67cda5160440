//! The internal service credential: a shared secret in the
//! `X-PayFlow-Service-Token` header, compared in constant time.

use axum::extract::{Request, State};
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

pub const HEADER: HeaderName = HeaderName::from_static("x-payflow-service-token");

#[derive(Clone)]
pub struct ServiceToken(std::sync::Arc<str>);

impl ServiceToken {
    /// Refuses an empty or short secret: an internal API behind a guessable
    /// credential is an open API.
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(secret.len() >= 16, "the service token must be at least 16 characters");
        Ok(Self(secret.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// Middleware for internal routes.
pub async fn require(State(token): State<ServiceToken>, req: Request, next: Next) -> Response {
    let ok = req.headers().get(&HEADER).map(|v| token.matches(v.as_bytes())).unwrap_or(false);
    if !ok {
        return ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "service_credential_required",
            "Service credential required",
        )
        .into_response();
    }
    next.run(req).await
}
