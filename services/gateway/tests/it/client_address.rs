//! Which address a request counts against for the per-address limit. The
//! harness's gateway listens on `::`, so this test client (127.0.0.1) is the
//! peer `::ffff:127.0.0.1`, which must match the trusted proxy `127.0.0.1`.

use crate::harness::{Options, Stack};

fn rand_u16() -> u16 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u16::from_be_bytes([b[0], b[1]])
}

/// The statuses of `GET /api/auth/me` (no token: 401 unless limited) sent
/// with these `X-Forwarded-For` lines.
async fn statuses(s: &Stack, requests: &[Vec<String>]) -> Vec<u16> {
    let mut out = Vec::new();
    for lines in requests {
        let mut req = s.http.get(s.url("/api/auth/me"));
        for line in lines {
            req = req.header("x-forwarded-for", line);
        }
        out.push(req.send().await.expect("call").status().as_u16());
    }
    out
}

/// A proxy that appends its own `X-Forwarded-For` line (HAProxy) leaves the
/// client's line first; the gateway read only that line, so each request
/// could name a new address and never meet the limit.
#[tokio::test]
async fn a_client_cannot_choose_its_address_with_a_forwarded_for_line_of_its_own() {
    let s = Stack::start(Options { ip_per_minute: 3, trusted_proxies: "127.0.0.1".into(), ..Default::default() }).await;
    // A fresh address per run (IPv4 buckets are shared by every test on this Redis).
    let client = format!("2001:db8:{:x}:{:x}::1", rand_u16(), rand_u16());
    let requests: Vec<Vec<String>> = (0..5).map(|i| vec![format!("192.0.2.{}", i + 1), client.clone()]).collect();
    assert_eq!(statuses(&s, &requests).await, vec![401, 401, 401, 429, 429]);
}

/// One IPv6 subscriber holds a whole /64: a new address per request must not
/// mean a new bucket. And an IPv4-mapped peer is its IPv4 address: trusted.
#[tokio::test]
async fn ipv6_clients_are_limited_per_64_behind_a_trusted_proxy_seen_as_mapped_ipv4() {
    let s = Stack::start(Options { ip_per_minute: 3, trusted_proxies: "127.0.0.1".into(), ..Default::default() }).await;
    let prefix = format!("2001:db8:{:x}:{:x}", rand_u16(), rand_u16());
    let requests: Vec<Vec<String>> = (0..5).map(|i| vec![format!("{prefix}::{:x}", i + 1)]).collect();
    assert_eq!(statuses(&s, &requests).await, vec![401, 401, 401, 429, 429]);
    // The next /64 is somebody else.
    let other = vec![vec![format!("2001:db8:{:x}:{:x}::1", rand_u16(), rand_u16())]];
    assert_eq!(statuses(&s, &other).await, vec![401]);
}
