//! The circuit breaker in front of an upstream that hangs.

use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::harness::{eventually, Options, Stack};

/// An upstream that takes connections and requests and never answers.
async fn hanging_upstream() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = l.accept().await {
            held.push(conn);
        }
    });
    url
}

/// The breaker's one trial request after the open period was a GET whose
/// client went away: nothing recorded its outcome, and the breaker stayed
/// half-open for good (503 for that upstream until the gateway restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_request_dropped_by_its_client_does_not_leave_the_breaker_stuck() {
    let s = Stack::start(Options {
        transaction_url: Some(hanging_upstream().await),
        upstream_timeout_ms: Some(300),
        breaker_failures: Some(1),
        breaker_open_secs: Some(1),
        ..Default::default()
    })
    .await;
    let u = s.register().await;
    let (status, body) = s.get("/api/transactions", &u.access).await;
    assert_eq!((status, body["code"].as_str()), (504, Some("upstream_timeout")), "{body}");
    let opened = Instant::now();
    let (status, body) = s.get("/api/transactions", &u.access).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("upstream_unavailable")), "open: {body}");

    // After the open period, the trial goes out, and its client gives up first.
    tokio::time::sleep_until((opened + Duration::from_millis(1_100)).into()).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(100)).build().expect("client");
    let dropped = impatient.get(s.url("/api/transactions")).bearer_auth(&u.access).send().await;
    assert!(dropped.is_err_and(|e| e.is_timeout()), "the trial was meant to be cut off by its client");

    // Later requests are tried again (504 after the upstream timeout), not refused for good.
    eventually("a request to reach the upstream again", || async {
        let (status, _) = s.get("/api/transactions", &u.access).await;
        (status == 504).then_some(())
    })
    .await;
}
