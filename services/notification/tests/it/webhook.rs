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
        eventually("recorded deliveries", || async { (h.deliveries_of(user).await.len() == 2).then_some(()) }).await;
        assert_eq!(
            h.deliveries_of(user).await,
            vec![("log".to_string(), "ok".to_string(), None), ("webhook".to_string(), "ok".to_string(), None),]
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn a_failing_webhook_is_recorded_and_does_not_block_the_ack() {
    let (url, mut rx) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let h = Harness::start_with(&[("webhook-url", url), ("webhook-secret", SECRET.to_string())]).await;
    let (alice, bob) = (UserId::new(), UserId::new());
    h.publish(
        Uuid::new_v4(),
        "transaction.failed",
        &event(Uuid::new_v4(), alice, bob, "5.00", "FAILED", Some("Timed out")),
    )
    .await;
    h.wait_for_outcome(Outcome::Stored, 1).await;
    assert!(rx.recv().await.is_some(), "the receiver was called");

    let deliveries = h.deliveries_of(alice).await;
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    assert_eq!(deliveries[1].0, "webhook");
    assert_eq!(deliveries[1].1, "failed");
    assert!(deliveries[1].2.as_deref().unwrap_or("").contains("500"), "{deliveries:?}");
    assert_eq!(h.state.counters.deliveries.with_label_values(&["webhook", "failed"]).get(), 1);
    // Stored and readable all the same; `stop` checks the message was acked.
    assert_eq!(h.notifications_of(alice).await.len(), 1);
    assert_eq!(h.state.counters.messages_with(Outcome::Error), 0);
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
