//! An `{id}` that is a dot segment must not reach a service: the gateway
//! forwards the path as sent and its HTTP client resolves `..` (also
//! `%2e%2e`), so `GET /api/transactions/..` reached the transaction service as
//! `GET /api/`. Requests are written by hand: an HTTP client would resolve the
//! dots before sending.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Options, Stack};

/// Sends `method path` as written, with the bearer token; the status and JSON body.
async fn raw(s: &Stack, method: &str, path: &str, token: &str) -> (u16, Value) {
    let addr = s.gateway.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn dot_segments_as_ids_are_refused_at_the_gateway() {
    let s = Stack::start(Options::default()).await;
    let u = s.register().await;
    for (method, path) in [
        ("GET", "/api/transactions/.."),
        ("GET", "/api/transactions/%2e%2e"),
        ("GET", "/api/transactions/%2E%2E"),
        ("GET", "/api/transactions/not-a-uuid"),
        ("PUT", "/api/notifications/../read"),
        ("PUT", "/api/notifications/%2e%2e/read"),
    ] {
        let (status, body) = raw(&s, method, path, &u.access).await;
        // The services' own answer to a malformed id.
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert_eq!(
            (body["code"].as_str(), body["details"][0]["path"].as_str()),
            (Some("validation_failed"), Some("id"))
        );
    }
    // A well-formed id is forwarded (here to a transaction service that is not running).
    let (status, _) = raw(&s, "GET", &format!("/api/transactions/{}", uuid::Uuid::new_v4()), &u.access).await;
    assert_eq!(status, 503);
}
