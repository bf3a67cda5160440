//! The HTTP API: own notifications only, mark as read.

use payflow_common::ids::UserId;
use payflow_notification::metrics::Outcome;
use serde_json::json;
use uuid::Uuid;

use crate::harness::{event, Harness};

#[tokio::test]
async fn each_party_reads_only_their_own() {
    let h = Harness::start().await;
    let (alice, bob, eve) = (UserId::new(), UserId::new(), UserId::new());
    h.publish(Uuid::new_v4(), "transaction.completed", &event(Uuid::new_v4(), alice, bob, "10.00", "COMPLETED", None))
        .await;
    h.wait_for_notifications(alice, 1).await;
    h.wait_for_notifications(bob, 1).await;

    let forbidden = json!({
        "error": "Access denied - you can only access your own resources",
        "code": "forbidden"
    });
    for (caller, owner) in [(alice, bob), (bob, alice), (eve, alice)] {
        assert_eq!(h.get(&format!("/api/notifications/{owner}"), Some(caller)).await, (403, forbidden.clone()));
    }
    assert!(h.notifications_of(eve).await.is_empty());

    let (status, body) = h.get(&format!("/api/notifications/{alice}"), None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "Authentication required");
    let (status, body) = h.get("/api/notifications/not-a-uuid", Some(alice)).await;
    assert_eq!(status, 400);
    assert_eq!(body["details"][0]["path"], "userId");
    let (status, body) = h.get("/api/nope", Some(alice)).await;
    assert_eq!((status, &body["error"]), (404, &json!("Route not found")));
    h.stop().await;
}

#[tokio::test]
async fn newest_first_and_at_most_fifty() {
    let h = Harness::start().await;
    let (alice, bob) = (UserId::new(), UserId::new());
    for i in 1..=52 {
        h.publish(
            Uuid::new_v4(),
            "transaction.completed",
            &event(Uuid::new_v4(), alice, bob, &format!("{i}.00"), "COMPLETED", None),
        )
        .await;
    }
    h.wait_for_outcome(Outcome::Stored, 52).await;
    let list = h.notifications_of(alice).await;
    assert_eq!(list.len(), 50);
    let times: Vec<&str> = list.iter().map(|n| n["created_at"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    h.stop().await;
}

#[tokio::test]
async fn mark_as_read() {
    let h = Harness::start().await;
    let (alice, bob) = (UserId::new(), UserId::new());
    h.publish(Uuid::new_v4(), "transaction.completed", &event(Uuid::new_v4(), alice, bob, "7.00", "COMPLETED", None))
        .await;
    let mine = h.wait_for_notifications(alice, 1).await.remove(0);
    let id = mine["id"].as_str().unwrap().to_string();
    let path = format!("/api/notifications/{id}/read");

    let (status, first) = h.put(&path, Some(alice)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["read"], true);
    assert_eq!(first["id"], mine["id"]);
    assert_eq!(first["message"], mine["message"]);
    assert_eq!(first["created_at"], mine["created_at"]);

    // Idempotent.
    assert_eq!(h.put(&path, Some(alice)).await, (200, first.clone()));
    assert_eq!(h.notifications_of(alice).await[0]["read"], true);
    // Bob's own notification is untouched.
    assert_eq!(h.notifications_of(bob).await[0]["read"], false);

    let (status, body) = h.put(&path, Some(bob)).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = h.put(&format!("/api/notifications/{}/read", Uuid::new_v4()), Some(alice)).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "Notification not found");
    let (status, body) = h.put("/api/notifications/xyz/read", Some(alice)).await;
    assert_eq!(status, 400);
    assert_eq!(body["details"][0]["path"], "id");
    assert_eq!(h.put(&path, None).await.0, 401);
    assert_eq!(h.get(&path, Some(alice)).await.0, 405);
    h.stop().await;
}
