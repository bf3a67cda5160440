//! A message of many events (one worker batch) names one correlation id in
//! its header, the first transfer's; each event's own id, when it carries one,
//! is what its notifications are delivered with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use payflow_common::ids::UserId;
use payflow_messaging::Message;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::harness::{event, eventually, Harness};

/// A webhook receiver that answers 500 and keeps each call's `X-Correlation-Id` by
/// transaction id, so the deliveries stay queued for their retries too.
async fn recording_receiver() -> (String, Arc<Mutex<HashMap<String, Vec<String>>>>) {
    let seen: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let record = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            async move {
                let tx = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|b| b["transaction_id"].as_str().map(str::to_string));
                let corr = headers.get("x-correlation-id").and_then(|v| v.to_str().ok()).map(str::to_string);
                if let (Some(tx), Some(corr), Ok(mut seen)) = (tx, corr, record.lock()) {
                    seen.entry(tx).or_default().push(corr);
                }
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn each_event_of_a_batch_is_delivered_with_its_own_correlation_id() {
    let (url, seen) = recording_receiver().await;
    let h = Harness::start_with(&[
        ("webhook-url", url),
        ("webhook-secret", "test-webhook-secret-0123456789".to_string()),
        // No retry during the test: the queued rows are read as stored.
        ("notification-retry-delay-ms", "600000".to_string()),
    ])
    .await;
    let (alice, bob, carol) = (UserId::new(), UserId::new(), UserId::new());
    let (t1, t2, t3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let with_id = |mut e: Value, id: &str| {
        e["correlationId"] = json!(id);
        e
    };
    let body = json!({"events": [
        with_id(event(t1, alice, bob, "1.00", "COMPLETED", None), "req-one"),
        with_id(event(t2, bob, carol, "2.00", "COMPLETED", None), "req-two"),
        // As a producer of an older release wrote it: no id of its own.
        event(t3, carol, alice, "3.00", "COMPLETED", None),
    ]});
    let msg = Message {
        id: Uuid::new_v4(),
        kind: "transaction.completed".into(),
        correlation_id: "req-one".into(),
        timestamp: chrono::Utc::now().timestamp() as u64,
        body: serde_json::to_vec(&body).expect("json"),
        attempt: 0,
    };
    h.publisher.publish(&h.topology.events_exchange(), &msg.kind, &msg).await.expect("publish");

    let expected = HashMap::from([(t1, "req-one"), (t2, "req-two"), (t3, "req-one")]);
    // First attempts: two notifications per transfer, each posted with its transfer's id.
    let posted = eventually("six webhook calls", || async {
        let seen = seen.lock().ok()?.clone();
        (seen.values().map(Vec::len).sum::<usize>() == 6).then_some(seen)
    })
    .await;
    for (tx, corr) in &expected {
        assert_eq!(posted.get(&tx.to_string()), Some(&vec![corr.to_string(), corr.to_string()]), "{tx}");
    }
    // Retries: the queued rows keep the same ids.
    let queued: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT n.transaction_id, q.correlation_id FROM notify.delivery_queue q \
         JOIN notify.notifications n ON n.id = q.notification_id WHERE n.transaction_id = ANY($1)",
    )
    .bind(vec![t1, t2, t3])
    .fetch_all(&h.pool)
    .await
    .expect("queue");
    assert_eq!(queued.len(), 6, "{queued:?}");
    for (tx, corr) in &queued {
        assert_eq!(corr, expected[tx], "{tx}");
    }
    h.stop().await;
}
