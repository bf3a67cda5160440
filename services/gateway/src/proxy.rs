//! Forwarding a request to an upstream service and its answer back, with a
//! time limit and the upstream's circuit breaker.

use std::net::IpAddr;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use payflow_common::correlation::{self, CorrelationId};
use payflow_common::error::ApiError;
use payflow_common::extract::{body_too_large, MAX_BODY_BYTES};

use crate::state::{AppState, Upstream};

/// Request headers an upstream needs; everything else (cookies, hop-by-hop) stays here.
const FORWARDED_REQUEST: &[&str] =
    &["authorization", "content-type", "accept", "idempotency-key", "user-agent", "accept-language"];
/// Response headers a client needs.
const FORWARDED_RESPONSE: &[&str] =
    &["content-type", "retry-after", "idempotent-replayed", "location", "x-next-cursor"];

/// The client address, set by the rate-limit middleware.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

pub async fn forward(state: &AppState, upstream: &Upstream, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return body_too_large().into_response(),
    };
    send(state, upstream, &parts, body).await
}

/// Sends an already-read request to `upstream` and relays its answer.
pub async fn send(state: &AppState, upstream: &Upstream, parts: &Parts, body: Bytes) -> Response {
    let outcome = |o: &str| state.gateway_metrics.upstream_requests.with_label_values(&[upstream.name, o]).inc();
    // Dropped without a verdict when this request is (a client that went away
    // during a GET): a half-open trial then frees its slot instead of holding it.
    let Some(attempt) = upstream.breaker.attempt() else {
        outcome("breaker_open");
        return unavailable(false, false);
    };
    let client_ip = parts.extensions.get::<ClientIp>().map(|c| c.0);
    let correlation = parts.extensions.get::<CorrelationId>().cloned();
    let method = parts.method.clone();
    let writes = !method.is_safe();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let headers = &parts.headers;

    let mut call = state.http.request(method, format!("{}{}", upstream.base_url, path));
    for name in FORWARDED_REQUEST {
        if let Some(v) = headers.get(*name) {
            call = call.header(*name, v);
        }
    }
    if let Some(ip) = client_ip {
        call = call.header("x-forwarded-for", ip.to_string());
    }
    if let Some(id) = correlation {
        call = call.header(correlation::HEADER, id.0);
    }
    let res = match call.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            attempt.failed();
            let timed_out = e.is_timeout();
            outcome(if timed_out { "timeout" } else { "error" });
            tracing::warn!(upstream = upstream.name, error = %e, "upstream call failed");
            // A failed connect sent nothing: plainly unavailable, whatever the method.
            let sent = !e.is_connect();
            return unavailable(sent && timed_out, sent && writes);
        }
    };
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    // Any answer, 5xx included, shows the upstream reachable and quick: the breaker
    // exists for upstreams that hang or refuse connections. Counting 5xx turned a
    // 0.5 s database restart behind the transaction service into 10 s of 503s here.
    attempt.succeeded();
    outcome(if status.is_server_error() { "server_error" } else { "ok" });
    let mut out = Response::builder().status(status);
    for name in FORWARDED_RESPONSE {
        if let Some(v) = res.headers().get(*name) {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(v.as_bytes())) {
                out = out.header(n, v);
            }
        }
    }
    match res.bytes().await {
        Ok(bytes) => out.body(Body::from(bytes)).unwrap_or_else(|e| ApiError::internal(e).into_response()),
        Err(e) => {
            upstream.breaker.record_failure();
            tracing::warn!(upstream = upstream.name, error = %e, "upstream body failed");
            unavailable(false, writes)
        }
    }
}

/// The answer to a call that got none. `maybe_done`: a write reached the
/// upstream, which finishes writes whoever waits for them, so the client must
/// not take this for a refusal.
fn unavailable(timed_out: bool, maybe_done: bool) -> Response {
    let (status, code, message) = if timed_out {
        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "Service did not answer in time")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable", "Service temporarily unavailable")
    };
    let message = if maybe_done {
        format!(
            "{message}; the request may have been carried out: retry with the same Idempotency-Key to get its outcome"
        )
    } else {
        message.to_string()
    };
    // No `details`: api.md keeps them for validation errors, and clients show them as such.
    // Which upstream failed is in `payflow_gateway_upstream_requests_total` (and the log).
    ApiError::new(status, code, message).into_response()
}
