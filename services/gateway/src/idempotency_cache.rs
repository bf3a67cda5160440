//! The Redis fast path for `Idempotency-Key`: finished answers of the
//! transaction service are kept here so a retry is answered at the edge.
//! Postgres (in the transaction service) stays the source of truth: a miss, a
//! different body, or Redis being down just forwards the request.

use payflow_common::redis_conn::Redis;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Kept as long as the transaction service promises (24 h).
const TTL_SECS: u64 = 24 * 3600;

#[derive(Serialize, Deserialize)]
pub struct Cached {
    /// SHA-256 of the request body bytes.
    pub body_hash: String,
    pub status: u16,
    pub body: String,
}

fn key(user: &str, idempotency_key: &str) -> String {
    format!("payflow:idem:{user}:{}", hex::encode(Sha256::digest(idempotency_key.as_bytes())))
}

pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

pub async fn get(redis: &Redis, user: &str, idempotency_key: &str) -> Option<Cached> {
    let mut conn = redis.clone();
    let raw: Option<String> = match conn.get(key(user, idempotency_key)).await {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(error = %e, "idempotency cache unavailable");
            return None;
        }
    };
    raw.and_then(|r| serde_json::from_str(&r).ok())
}

pub async fn put(redis: &Redis, user: &str, idempotency_key: &str, value: &Cached) {
    let Ok(text) = serde_json::to_string(value) else { return };
    let mut conn = redis.clone();
    if let Err(e) = conn.set_ex::<_, _, ()>(key(user, idempotency_key), text, TTL_SECS).await {
        tracing::debug!(error = %e, "idempotency cache write failed");
    }
}
