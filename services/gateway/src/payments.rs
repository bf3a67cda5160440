//! `POST /api/transactions` at the edge: answers a retried Idempotency-Key
//! from the Redis fast path when the body is byte-identical, else forwards
//! and remembers the transaction service's final answer.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use payflow_common::bearer::AuthUser;
use payflow_common::extract::{body_too_large, MAX_BODY_BYTES};
use payflow_common::idempotency_key::IdempotencyKey;

use crate::idempotency_cache::{self, Cached};
use crate::proxy::send;
use crate::state::AppState;

pub async fn create(State(s): State<AppState>, user: AuthUser, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return body_too_large().into_response(),
    };
    let key = match IdempotencyKey::from_headers(&parts.headers) {
        Ok(Some(key)) => key.into_string(),
        Ok(None) => return send(&s, &s.upstreams.transaction, &parts, body).await,
        Err(e) => return e.into_response(),
    };
    let user_id = user.id().to_string();
    let hash = idempotency_cache::body_hash(&body);
    if let Some(hit) = idempotency_cache::get(&s.redis, &user_id, &key).await {
        if hit.body_hash == hash {
            s.gateway_metrics.idempotent_replays.inc();
            return replay(hit.status, hit.body);
        }
    }
    let res = send(&s, &s.upstreams.transaction, &parts, body).await;
    // Only final answers are worth keeping: a created transfer or a replay of one.
    let keep = res.status() == StatusCode::CREATED || res.headers().contains_key("idempotent-replayed");
    if !keep {
        return res;
    }
    let (res_parts, res_body) = res.into_parts();
    let bytes = match axum::body::to_bytes(res_body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return payflow_common::error::ApiError::internal(e).into_response(),
    };
    let cached =
        Cached { body_hash: hash, status: res_parts.status.as_u16(), body: String::from_utf8_lossy(&bytes).into() };
    // Written after the answer leaves: Redis is only a fast path (a retry
    // arriving first is answered from Postgres), so the client does not wait on it.
    let redis = s.redis.clone();
    tokio::spawn(async move { idempotency_cache::put(&redis, &user_id, &key, &cached).await });
    Response::from_parts(res_parts, Body::from(bytes))
}

fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    (
        status,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (header::HeaderName::from_static("idempotent-replayed"), HeaderValue::from_static("true")),
        ],
        body,
    )
        .into_response()
}
