//! The broker goes away while requests keep arriving: sends are still
//! accepted (the outbox holds their messages) and settle once it is back.
//!
//! The outage is made by a TCP proxy that this test owns (`crate::proxy`), so it
//! cuts only this stack's connections and the other tests, sharing the same
//! RabbitMQ, go on.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::harness::{amqp_url, Options, Stack};
use crate::payments::{assert_invariants, send, wait_final};
use crate::proxy::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_are_accepted_while_the_broker_is_away_and_settle_when_it_returns() {
    let mut url = reqwest::Url::parse(&amqp_url()).expect("amqp url");
    let upstream = format!("{}:{}", url.host_str().expect("host"), url.port().unwrap_or(5672));
    let proxy = Proxy::start(upstream).await;
    url.set_port(Some(proxy.addr.port())).expect("port");
    let s = Stack::start_with(Options { amqp_url: Some(url.to_string()), ..Default::default() }).await;
    let a = s.register().await;
    let b = s.register().await;

    let mut ids = Vec::new();
    let send_batch = |n: usize| {
        let (s, a, b) = (&s, &a, &b);
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let sent = send(s, a, &b.id, json!(1), None).await;
                assert_eq!(sent.status, 201, "accepted whatever the broker does: {}", sent.body);
                out.push(Uuid::parse_str(sent.body["id"].as_str().expect("id")).expect("uuid"));
            }
            out
        }
    };
    ids.extend(send_batch(5).await);
    wait_final(&s, &ids, Duration::from_secs(15)).await;

    proxy.cut();
    let during = send_batch(10).await;
    let open: i64 =
        sqlx::query_scalar("SELECT count(*) FROM txn.transactions WHERE id = ANY($1) AND status = 'PENDING'")
            .bind(&during)
            .fetch_one(&s.pool)
            .await
            .expect("count");
    assert!(open > 0, "with the broker away, nothing can settle");
    proxy.restore();
    ids.extend(during);
    ids.extend(send_batch(5).await);
    wait_final(&s, &ids, Duration::from_secs(60)).await;
    assert_invariants(&s, &ids).await;
    let (_, w) = crate::harness::get(&s, &format!("/api/wallets/{}", a.id), &a.access).await;
    assert_eq!(w["balance"], "980.00", "20 transfers of 1.00, each once: {w}");
}

/// The real thing: the test stack's RabbitMQ node is stopped and started
/// again (scripts/stack.sh restart-rabbitmq) while sends keep arriving.
/// Ignored in the parallel suite because every test shares that node;
/// scripts/test.sh runs it on its own afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the shared RabbitMQ; scripts/test.sh runs it alone after the suite"]
async fn rabbitmq_restarted_while_requests_arrive() {
    let s = Stack::start().await;
    let a = s.register().await;
    let b = s.register().await;
    let mut ids = Vec::new();
    let mut accept = |sent: crate::payments::Sent| {
        assert_eq!(sent.status, 201, "accepted whatever the broker does: {}", sent.body);
        ids.push(Uuid::parse_str(sent.body["id"].as_str().expect("id")).expect("uuid"));
    };
    for _ in 0..5 {
        accept(send(&s, &a, &b.id, json!(1), None).await);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/stack.sh");
    let mut restart = tokio::process::Command::new("bash")
        .args([script, "restart-rabbitmq", "test"])
        .kill_on_drop(true)
        .spawn()
        .expect("restart rabbitmq");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut pace = tokio::time::interval(Duration::from_millis(200));
    let status = loop {
        if let Some(status) = restart.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "restart took too long");
        pace.tick().await;
        accept(send(&s, &a, &b.id, json!(1), None).await);
    };
    assert!(status.success(), "restart-rabbitmq failed: {status:?}");
    for _ in 0..5 {
        accept(send(&s, &a, &b.id, json!(1), None).await);
    }
    wait_final(&s, &ids, Duration::from_secs(90)).await;
    assert_invariants(&s, &ids).await;
    let (_, w) = crate::harness::get(&s, &format!("/api/wallets/{}", a.id), &a.access).await;
    assert_eq!(w["balance"], format!("{}.00", 1000 - ids.len()), "{} transfers, each once: {w}", ids.len());
}
