//! Correlation ids: taken from `X-Correlation-Id` when the caller sends a sane
//! one, generated otherwise, attached to every log line of the request, sent
//! back on the response and forwarded to upstream calls.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-correlation-id");

/// The request's correlation id, available as a request extension.
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

impl CorrelationId {
    /// Accepts 1-128 visible ASCII characters; anything else is replaced so a
    /// client cannot inject log lines or huge values.
    pub fn from_header(value: Option<&HeaderValue>) -> Self {
        value
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
            .map(|s| CorrelationId(s.to_string()))
            .unwrap_or_else(|| CorrelationId(uuid::Uuid::new_v4().to_string()))
    }
}

/// Middleware: assigns the id, logs one line per request, echoes the header.
pub async fn middleware(mut req: Request, next: Next) -> Response {
    let id = CorrelationId::from_header(req.headers().get(&HEADER));
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        req.headers_mut().insert(HEADER, v);
    }
    req.extensions_mut().insert(id.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", correlation_id = %id.0, %method, %path);
    let started = Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    let status = res.status().as_u16();
    span.in_scope(|| tracing::info!(status, latency_ms = started.elapsed().as_secs_f64() * 1000.0, "request finished"));
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        res.headers_mut().insert(HEADER, v);
    }
    res
}
