use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{get, redis_url, Options, Stack};
use crate::proxy::Proxy;

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_per_client_address() {
    let s = Stack::start_with(Options { ip_per_minute: 5, trusted_proxies: "127.0.0.1".into(), ..Default::default() })
        .await;
    // A unique address per run, so parallel tests never share a bucket.
    let ip = format!("198.51.100.{}", rand_octet());
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..7 {
        let res = s.http.get(s.url("/api/auth/me")).header("x-forwarded-for", &ip).send().await.expect("call");
        statuses.push(res.status().as_u16());
        last = Some(res);
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert_eq!(statuses[6], 429, "{statuses:?}");
    let res = last.expect("response");
    let retry: u64 = res.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry));
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["error"], "Too many requests");
    assert_eq!(body["retryAfter"], retry);

    // Another client address has its own bucket.
    let other = format!("203.0.113.{}", rand_octet());
    let res = s.http.get(s.url("/api/auth/me")).header("x-forwarded-for", other).send().await.expect("call");
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn per_user_limit_applies_to_authenticated_calls() {
    let s = Stack::start_with(Options { user_per_minute: 3, ..Default::default() }).await;
    let u = s.register().await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(&s, &format!("/api/wallets/{}", u.id), &u.access).await.0);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
}

fn rand_octet() -> u8 {
    (uuid::Uuid::new_v4().as_bytes()[0] % 250) + 1
}

#[tokio::test]
async fn an_unreachable_upstream_gives_a_fast_503_and_opens_the_breaker() {
    let s = Stack::start_with(Options { wallet_down: true, ..Default::default() }).await;
    let u = s.register().await;
    for _ in 0..5 {
        let started = Instant::now();
        let (status, body) = get(&s, &format!("/api/wallets/{}", u.id), &u.access).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["code"], "upstream_unavailable");
        // `details` are validation errors to clients (api.md); this is none.
        assert!(body.get("details").is_none(), "{body}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // Auth is unaffected by the wallet's breaker.
    assert_eq!(get(&s, "/api/auth/me", &u.access).await.0, 200);
}

#[tokio::test]
async fn cors_preflight_allows_configured_origins_only() {
    let s = Stack::start().await;
    let preflight = |origin: &'static str| {
        s.http
            .request(reqwest::Method::OPTIONS, s.url("/api/transactions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type,idempotency-key")
            .header("x-correlation-id", "preflight-1")
            .send()
    };
    let ok = preflight("http://localhost:3000").await.expect("preflight");
    assert_eq!(ok.headers()["access-control-allow-origin"], "http://localhost:3000");
    // Preflights are answers too: they carry the correlation id like every other.
    assert_eq!(ok.headers()["x-correlation-id"], "preflight-1");
    let allowed = ok.headers()["access-control-allow-headers"].to_str().expect("ascii").to_lowercase();
    assert!(allowed.contains("idempotency-key") && allowed.contains("authorization"), "{allowed}");
    let bad = preflight("http://evil.example").await.expect("preflight");
    assert!(bad.headers().get("access-control-allow-origin").is_none());
    assert_eq!(bad.headers()["x-correlation-id"], "preflight-1");

    let res = s.http.get(s.url("/health")).header("origin", "http://localhost:8080").send().await.expect("get");
    assert_eq!(res.headers()["access-control-allow-origin"], "http://localhost:8080");
    let exposed = res.headers()["access-control-expose-headers"].to_str().expect("ascii").to_lowercase();
    for h in ["retry-after", "idempotent-replayed", "x-correlation-id", "x-next-cursor"] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }
    let _ = json!({});
}

/// Redis goes away and comes back, as in a restart: no request hangs on it
/// (revocations fail closed, at once), and the gateway uses it again within
/// seconds of its return. The reconnect backoff of the Redis client once made
/// a 2 s restart cost two minutes of 504s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_costs_a_bounded_wait_and_ends_when_redis_returns() {
    let url = reqwest::Url::parse(&redis_url()).expect("redis url");
    let proxy = Proxy::start(format!("{}:{}", url.host_str().expect("host"), url.port().unwrap_or(6379))).await;
    let s =
        Stack::start_with(Options { redis_url: Some(format!("redis://{}", proxy.addr)), ..Default::default() }).await;
    let a = s.register().await;
    let path = format!("/api/wallets/{}", a.id);
    assert_eq!(get(&s, &path, &a.access).await.0, 200);

    proxy.cut();
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = get(&s, &path, &a.access).await;
        assert_eq!(status, 503, "revocations cannot be checked: fail closed: {body}");
        assert!(started.elapsed() < Duration::from_secs(4), "answered after {:?}", started.elapsed());
    }

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let (status, body) = get(&s, &path, &a.access).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still {status} 6 s after Redis returned: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
