//! The webhook channel against a real local receiver.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use payflow_common::ids::UserId;
use payflow_notification::metrics::Outcome;
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::harness::{event, eventually, Harness};

const SECRET: &str = "test-webhook-secret-0123456789";

/// A receiver that records every request and answers `status`.
async fn receiver(status: StatusCode) -> (String, mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// Verifies `X-PayFlow-Signature` the way a receiver would, independently of
/// the service's own code.
fn signature_is_valid(header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x.to_string()),
            Some(("v1", x)) => v1 = hex::decode(x).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
    if age.abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

#[tokio::test]
async fn notifications_are_posted_signed() {
    let (url, mut rx) = receiver(StatusCode::NO_CONTENT).await;
    let h = Harness::start_with(&[("webhook-url", url), ("webhook-secret", SECRET.to_string())]).await;
    let (alice, bob, tx) = (UserId::new(), UserId::new(), Uuid::new_v4());
    let message_id = Uuid::new_v4();
    h.publish(message_id, "transaction.completed", &event(tx, alice, bob, "10.00", "COMPLETED", None)).await;

    let mut posts = Vec::new();
    for _ in 0..2 {
        let post = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a webhook call")
            .expect("receiver alive");
        posts.push(post);
    }
    let mut users = Vec::new();
    for (headers, body) in &posts {
        let signature = headers["x-payflow-signature"].to_str().unwrap();
        assert!(signature_is_valid(signature, body), "{signature}");
        assert!(!signature_is_valid(signature, b"{\"tampered\":true}"));
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-correlation-id"], format!("corr-{message_id}"));
        let json: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(json["transaction_id"], tx.to_string());
        assert_eq!(json["read"], false);
        users.push(json["user_id"].as_str().unwrap().to_string());
        // The same notification the API serves.
        let owner: UserId = json["user_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(h.notifications_of(owner).await[0], json);
    }
    users.sort();
    let mut expected = vec![alice.to_string(), bob.to_string()];
    expected.sort();
    assert_eq!(users, expected);

    for user in [alice, bob] {
        assert_eq!(
            h.wait_for_deliveries(user, 2).await,
            vec![("log".to_string(), "ok".to_string(), None), ("webhook".to_string(), "ok".to_string(), None),]
        );
    }
    h.stop().await;
}

/// A receiver that fails the first `failures` calls for each notification
/// with 500, then answers 204; it reports every call's notification id.
async fn flaky_receiver(failures: usize) -> (String, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<String, usize>::new()));
    let app = Router::new().route(
        "/hook",
        post(move |body: Bytes| {
            let (tx, seen) = (tx.clone(), seen.clone());
            async move {
                let id = serde_json::from_slice::<Value>(&body).unwrap()["id"].as_str().unwrap().to_string();
                let calls = {
                    let mut seen = seen.lock().unwrap();
                    let n = seen.entry(id.clone()).or_default();
                    *n += 1;
                    *n
                };
                let _ = tx.send(id);
                if calls <= failures {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// `(attempts, gave up)` of `user`'s queued webhook delivery; `None` once it is done.
async fn queued_webhook(h: &Harness, user: UserId) -> Option<(i32, bool)> {
    sqlx::query_as(
        "SELECT q.attempts, q.gave_up_at IS NOT NULL FROM notify.delivery_queue q \
         JOIN notify.notifications n ON n.id = q.notification_id \
         WHERE n.user_id = $1 AND q.channel = 'webhook'",
    )
    .bind(user)
    .fetch_optional(&h.pool)
    .await
    .expect("queue")
}

fn webhook_flags(url: String, attempts: u32) -> [(&'static str, String); 4] {
    [
        ("webhook-url", url),
        ("webhook-secret", SECRET.to_string()),
        ("notification-delivery-attempts", attempts.to_string()),
        ("notification-retry-delay-ms", "20".to_string()),
    ]
}

#[tokio::test]
async fn a_failing_webhook_is_tried_again_until_it_succeeds_without_blocking_the_ack() {
    let (url, mut calls) = flaky_receiver(2).await;
    let h = Harness::start_with(&webhook_flags(url, 5)).await;
    let (alice, bob) = (UserId::new(), UserId::new());
    h.publish(
        Uuid::new_v4(),
        "transaction.failed",
        &event(Uuid::new_v4(), alice, bob, "5.00", "FAILED", Some("Timed out")),
    )
    .await;
    h.wait_for_outcome(Outcome::Stored, 1).await;
    assert!(calls.recv().await.is_some(), "the receiver was called");
    // Stored and readable at once, whatever the webhook does.
    assert_eq!(h.notifications_of(alice).await.len(), 1);

    eventually("the third attempt delivered", || async {
        (h.deliveries_of(alice).await.len() == 4 && queued_webhook(&h, alice).await.is_none()).then_some(())
    })
    .await;
    let deliveries = h.deliveries_of(alice).await;
    let results: Vec<(&str, &str)> = deliveries.iter().map(|d| (d.0.as_str(), d.1.as_str())).collect();
    assert_eq!(results, vec![("log", "ok"), ("webhook", "failed"), ("webhook", "failed"), ("webhook", "ok")]);
    assert!(deliveries[1].2.as_deref().unwrap_or("").contains("500"), "{deliveries:?}");
    assert_eq!(h.state.counters.deliveries.with_label_values(&["webhook", "failed"]).get(), 2);
    assert_eq!(h.state.counters.deliveries.with_label_values(&["webhook", "ok"]).get(), 1);
    assert_eq!(h.state.counters.gave_up.with_label_values(&["webhook"]).get(), 0);
    assert_eq!(h.state.counters.messages_with(Outcome::Error), 0);
    // `stop` checks the message was acked.
    h.stop().await;
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_is_given_up_after_the_last_attempt() {
    let (url, mut calls) = flaky_receiver(usize::MAX).await;
    let h = Harness::start_with(&webhook_flags(url, 3)).await;
    let (alice, bob) = (UserId::new(), UserId::new());
    h.publish(Uuid::new_v4(), "transaction.completed", &event(Uuid::new_v4(), alice, bob, "1.00", "COMPLETED", None))
        .await;
    for user in [alice, bob] {
        eventually("given up", || async { (queued_webhook(&h, user).await == Some((3, true))).then_some(()) }).await;
        let results: Vec<String> =
            h.deliveries_of(user).await.into_iter().map(|d| format!("{}:{}", d.0, d.1)).collect();
        assert_eq!(results, vec!["log:ok", "webhook:failed", "webhook:failed", "webhook:failed"]);
    }
    assert_eq!(h.state.counters.gave_up.with_label_values(&["webhook"]).get(), 2);
    let mut n = 0;
    while calls.try_recv().is_ok() {
        n += 1;
    }
    assert_eq!(n, 6, "three calls per notification, none after giving up");
    assert_eq!(h.notifications_of(alice).await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_delivery_left_by_a_dead_process_is_made_when_its_lease_ends() {
    let (url, mut calls) = flaky_receiver(0).await;
    let h = Harness::start_with(&webhook_flags(url, 3)).await;
    // What a process leaves when it dies after storing a notification and before
    // delivering it: the notification and its queue row, whose lease has run out.
    let (user, id) = (UserId::new(), Uuid::now_v7());
    sqlx::query(
        "WITH n AS (INSERT INTO notify.notifications (id, event_id, user_id, type, message) \
                    VALUES ($1, $2, $3, 'WELCOME', 'Welcome to PayFlow') RETURNING id) \
         INSERT INTO notify.delivery_queue (notification_id, channel, prefix, next_attempt_at, correlation_id) \
         SELECT id, 'webhook', $4, now() - interval '1 second', 'corr-dead' FROM n",
    )
    .bind(id)
    .bind(Uuid::new_v4())
    .bind(user)
    .bind(h.topology.prefix())
    .execute(&h.pool)
    .await
    .expect("insert");

    let called = tokio::time::timeout(Duration::from_secs(20), calls.recv()).await.expect("a webhook call");
    assert_eq!(called, Some(id.to_string()));
    eventually("delivered", || async { queued_webhook(&h, user).await.is_none().then_some(()) }).await;
    let results: Vec<String> = h.deliveries_of(user).await.into_iter().map(|d| format!("{}:{}", d.0, d.1)).collect();
    assert_eq!(results, vec!["webhook:ok"]);
    h.stop().await;
}

#[tokio::test]
async fn a_webhook_without_a_secret_is_refused_at_start() {
    let cfg = {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            cfg: payflow_notification::Config,
        }
        Cli::try_parse_from(["test", "--webhook-url=http://127.0.0.1:9/hook"]).unwrap().cfg
    };
    let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy(&crate::harness::database_url()).unwrap();
    let verifier = payflow_common::jwt::JwtSigner::generate().unwrap().verifier(&Default::default());
    let err = payflow_notification::AppState::with_parts(&cfg, pool, verifier).err().expect("refused");
    assert!(err.to_string().contains("PAYFLOW_WEBHOOK_SECRET"), "{err}");
}

/// A receiver that holds every call until `true` is sent on the returned
/// sender, then answers 204.
async fn gated_receiver() -> (String, tokio::sync::watch::Sender<bool>) {
    let (open, gate) = tokio::sync::watch::channel(false);
    let app = Router::new().route(
        "/hook",
        post(move || {
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, open)
}

#[tokio::test]
async fn a_hanging_webhook_holds_neither_the_acks_nor_the_storing_of_new_notifications() {
    use payflow_notification::channels::FIRST_ATTEMPT_BATCHES;
    let (url, open) = gated_receiver().await;
    let mut flags = webhook_flags(url, 100).to_vec();
    flags.push(("webhook-timeout-ms", "60000".to_string()));
    let h = Harness::start_with(&flags).await;
    // One event per batch (each is stored before the next is published), more
    // batches than first attempts may run and more events than the prefetch (10).
    let past = 8;
    let mut users = Vec::new();
    for i in 0..FIRST_ATTEMPT_BATCHES + past {
        let (alice, bob) = (UserId::new(), UserId::new());
        h.publish(
            Uuid::new_v4(),
            "transaction.completed",
            &event(Uuid::new_v4(), alice, bob, "1.00", "COMPLETED", None),
        )
        .await;
        h.wait_for_outcome(Outcome::Stored, i as u64 + 1).await;
        users.extend([alice, bob]);
    }
    // Every webhook call still hangs: the first batches hold every slot, the
    // later ones were left to the retry loop (their log lines written at once).
    assert_eq!(h.state.counters.deferred.with_label_values(&["webhook"]).get(), 2 * past as u64);
    let last = *users.last().unwrap();
    let results: Vec<String> = h.deliveries_of(last).await.into_iter().map(|d| format!("{}:{}", d.0, d.1)).collect();
    assert_eq!(results, vec!["log:ok"]);

    open.send(true).unwrap();
    for user in &users {
        eventually("delivered", || async { queued_webhook(&h, *user).await.is_none().then_some(()) }).await;
        let results: Vec<String> =
            h.deliveries_of(*user).await.into_iter().map(|d| format!("{}:{}", d.0, d.1)).collect();
        assert_eq!(results, vec!["log:ok", "webhook:ok"], "{user}");
    }
    h.stop().await;
}
