//! The gateway's one check of a logged-out access token is the Redis
//! revocation list. Auth writes it at logout, but a failed write or a Redis
//! that lost its data (a restart without persistence) used to let the token
//! through for the rest of its life (15 min); auth now puts every unexpired
//! revocation back every few seconds.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::harness::{eventually, redis, Options, Stack};

fn jti_of(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("json");
    claims["jti"].as_str().expect("jti").to_string()
}

fn key_of(token: &str) -> String {
    format!("payflow:revoked-jti:{}", jti_of(token))
}

/// Waits until the gateway refuses `token` on a route only it guards (wallet
/// checks no revocations).
async fn refused_at_the_gateway(s: &Stack, path: &str, token: &str, what: &str) {
    eventually(what, || async {
        let (status, body) = s.get(path, token).await;
        (status == 401).then(|| assert_eq!(body["error"], "Invalid or expired token"))
    })
    .await;
}

/// Redis forgets a revocation, as a restart without persistence (or FLUSHALL)
/// would; only this token's key, since other tests share this Redis.
async fn lose(token: &str) {
    let mut conn = redis().await;
    let _: () = conn.del(key_of(token)).await.expect("del");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_token_is_refused_at_the_gateway_though_redis_missed_or_lost_the_revocation() {
    let s = Stack::start(Options::default()).await;
    let u = s.register().await;
    let wallet = format!("/api/wallets/{}", u.id);
    assert_eq!(s.get(&wallet, &u.access).await.0, 200);

    // Auth cannot reach Redis at the logout: the client is logged out anyway.
    s.cut_auth_from_redis().await;
    let (status, body) = s.post("/api/auth/logout", Some(&u.access), json!({})).await;
    assert_eq!((status, body["message"].as_str()), (200, Some("Logout successful")), "{body}");
    assert_eq!(s.get(&wallet, &u.access).await.0, 200, "not in Redis yet: the gateway cannot know");
    s.auth_redis.restore();
    refused_at_the_gateway(&s, &wallet, &u.access, "the revocation to reach Redis after it returned").await;

    lose(&u.access).await;
    refused_at_the_gateway(&s, &wallet, &u.access, "the lost revocation to be put back").await;
    // For the token's own remaining lifetime (15 min by default, plus the verifiers' 5 s leeway).
    let ttl: i64 = redis().await.ttl(key_of(&u.access)).await.expect("ttl");
    assert!((800..=905).contains(&ttl), "ttl {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_of_a_reused_refresh_token_stay_refused_after_redis_lost_them() {
    let s = Stack::start(Options::default()).await;
    let u = s.register().await;
    let wallet = format!("/api/wallets/{}", u.id);
    let (status, rotated) = s.post("/api/auth/refresh", None, json!({"refreshToken": u.refresh})).await;
    assert_eq!(status, 200, "{rotated}");
    let newer = rotated["accessToken"].as_str().expect("accessToken").to_string();
    assert_eq!(s.get(&wallet, &newer).await.0, 200);

    // The rotated token again: reuse, and the whole session ends.
    let (status, _) = s.post("/api/auth/refresh", None, json!({"refreshToken": u.refresh})).await;
    assert_eq!(status, 401);
    for token in [&u.access, &newer] {
        refused_at_the_gateway(&s, &wallet, token, "the session's tokens to be refused").await;
        lose(token).await;
    }
    for token in [&u.access, &newer] {
        refused_at_the_gateway(&s, &wallet, token, "the lost revocations to be put back").await;
    }
}
