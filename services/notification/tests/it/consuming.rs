//! Events in, notifications stored: once per event and recipient, poison to
//! the dead-letter queue, event types of a newer release ignored. (Database
//! trouble: `outages` and `refusals`.)

use std::collections::HashSet;

use lapin::BasicProperties;
use payflow_common::ids::UserId;
use payflow_notification::metrics::Outcome;
use serde_json::Value;
use uuid::Uuid;

use crate::harness::{event, Harness};

const COMPLETED: &str = "transaction.completed";
const FAILED: &str = "transaction.failed";

#[tokio::test]
async fn completed_event_notifies_sender_and_receiver() {
    let h = Harness::start().await;
    let (alice, bob, tx) = (UserId::new(), UserId::new(), Uuid::new_v4());
    h.publish(Uuid::new_v4(), COMPLETED, &event(tx, alice, bob, "10.00", "COMPLETED", None)).await;

    let sent = h.wait_for_notifications(alice, 1).await;
    let received = h.wait_for_notifications(bob, 1).await;
    let (sent, received) = (&sent[0], &received[0]);

    // Exactly the contract's fields.
    let keys: HashSet<&str> = sent.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, HashSet::from(["id", "user_id", "type", "message", "transaction_id", "read", "created_at"]));
    assert_eq!(sent["user_id"], alice.to_string());
    assert_eq!(sent["type"], "TRANSACTION_COMPLETED");
    assert_eq!(sent["message"], "You sent 10.00 USD");
    assert_eq!(sent["transaction_id"], tx.to_string());
    assert_eq!(sent["read"], false);
    let created = sent["created_at"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(created).is_ok() && created.ends_with('Z'), "{created}");

    assert_eq!(received["user_id"], bob.to_string());
    assert_eq!(received["type"], "TRANSACTION_RECEIVED");
    assert_eq!(received["message"], "You received 10.00 USD");
    assert_eq!(received["transaction_id"], tx.to_string());

    h.wait_for_outcome(Outcome::Stored, 1).await;
    // The log channel is always on and every attempt is recorded.
    for user in [alice, bob] {
        assert_eq!(h.wait_for_deliveries(user, 1).await, vec![("log".to_string(), "ok".to_string(), None)]);
    }
    let c = &h.state.counters;
    assert_eq!(c.stored.with_label_values(&["TRANSACTION_COMPLETED"]).get(), 1);
    assert_eq!(c.stored.with_label_values(&["TRANSACTION_RECEIVED"]).get(), 1);
    assert_eq!(c.deliveries.with_label_values(&["log", "ok"]).get(), 2);

    // The metrics are scraped with the rest of the service's.
    let text = h.http.get(format!("{}/metrics", h.base)).send().await.unwrap().text().await.unwrap();
    for name in [
        "payflow_notification_messages_total",
        "payflow_notifications_stored_total",
        "payflow_notification_deliveries_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    h.stop().await;
}

#[tokio::test]
async fn failed_event_notifies_the_sender_only() {
    let h = Harness::start().await;
    let (alice, bob, tx) = (UserId::new(), UserId::new(), Uuid::new_v4());
    h.publish(Uuid::new_v4(), FAILED, &event(tx, alice, bob, "25.5", "FAILED", Some("Transfer timed out"))).await;
    h.wait_for_outcome(Outcome::Stored, 1).await;

    let list = h.notifications_of(alice).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["type"], "TRANSACTION_FAILED");
    assert_eq!(list[0]["message"], "Your transfer of 25.50 USD failed: Transfer timed out");
    assert_eq!(list[0]["transaction_id"], tx.to_string());
    assert!(h.notifications_of(bob).await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn the_same_event_twice_is_stored_once() {
    let h = Harness::start().await;
    let (alice, bob, tx) = (UserId::new(), UserId::new(), Uuid::new_v4());
    let id = Uuid::new_v4();
    let body = event(tx, alice, bob, "1.00", "COMPLETED", None);
    h.publish(id, COMPLETED, &body).await;
    h.publish(id, COMPLETED, &body).await;
    h.wait_for_outcome(Outcome::Stored, 1).await;
    h.wait_for_outcome(Outcome::Duplicate, 1).await;

    // A producer that re-emits the same completion under a new message id is
    // caught by the per-transaction guard.
    h.publish(Uuid::new_v4(), COMPLETED, &body).await;
    h.wait_for_outcome(Outcome::Duplicate, 2).await;

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM notify.notifications WHERE transaction_id = $1")
        .bind(tx)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(rows, 2, "one per recipient");
    assert_eq!(h.notifications_of(alice).await.len(), 1);
    assert_eq!(h.notifications_of(bob).await.len(), 1);
    // Deliveries happened once too.
    assert_eq!(h.wait_for_deliveries(alice, 1).await.len(), 1);
    assert_eq!(h.state.counters.messages_with(Outcome::Poison), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_message_of_many_events_stores_each_and_a_redelivery_nothing() {
    let h = Harness::start().await;
    let (alice, bob, carol) = (UserId::new(), UserId::new(), UserId::new());
    let (t1, t2, t3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    // Alice sends twice in one batch: two TRANSACTION_COMPLETED for her, both kept.
    let body = serde_json::json!({"events": [
        event(t1, alice, bob, "1.00", "COMPLETED", None),
        event(t2, alice, carol, "2.00", "COMPLETED", None),
        event(t3, bob, carol, "3.00", "COMPLETED", None),
    ]});
    let id = Uuid::new_v4();
    h.publish(id, COMPLETED, &body).await;
    h.publish(id, COMPLETED, &body).await;
    h.wait_for_outcome(Outcome::Stored, 1).await;
    h.wait_for_outcome(Outcome::Duplicate, 1).await;

    let types = |list: Vec<Value>| {
        let mut v: Vec<(String, String)> =
            list.iter().map(|n| (n["type"].as_str().unwrap().into(), n["message"].as_str().unwrap().into())).collect();
        v.sort();
        v
    };
    let sent = |m: &str| ("TRANSACTION_COMPLETED".to_string(), m.to_string());
    let got = |m: &str| ("TRANSACTION_RECEIVED".to_string(), m.to_string());
    assert_eq!(
        types(h.wait_for_notifications(alice, 2).await),
        vec![sent("You sent 1.00 USD"), sent("You sent 2.00 USD")]
    );
    assert_eq!(
        types(h.wait_for_notifications(bob, 2).await),
        vec![sent("You sent 3.00 USD"), got("You received 1.00 USD")]
    );
    assert_eq!(
        types(h.wait_for_notifications(carol, 2).await),
        vec![got("You received 2.00 USD"), got("You received 3.00 USD")]
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM notify.notifications WHERE transaction_id = ANY($1)")
        .bind(vec![t1, t2, t3])
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(rows, 6, "two per transfer, the redelivery added none");
    assert_eq!(h.wait_for_deliveries(alice, 2).await.len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_message_of_many_events_with_one_bad_is_dead_lettered_whole() {
    let h = Harness::start().await;
    let (alice, bob) = (UserId::new(), UserId::new());
    let good = event(Uuid::new_v4(), alice, bob, "1.00", "COMPLETED", None);
    let bad = event(Uuid::new_v4(), alice, bob, "1e3", "COMPLETED", None);
    let (mixed, empty) = (Uuid::new_v4(), Uuid::new_v4());
    h.publish(mixed, COMPLETED, &serde_json::json!({"events": [good, bad]})).await;
    h.publish(empty, COMPLETED, &serde_json::json!({"events": []})).await;
    h.wait_for_outcome(Outcome::Poison, 2).await;

    let dead: HashSet<String> = h
        .dead_letters(2)
        .await
        .iter()
        .map(|m| m.delivery.properties.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default())
        .collect();
    assert_eq!(dead, HashSet::from([mixed.to_string(), empty.to_string()]));
    assert!(h.notifications_of(alice).await.is_empty(), "nothing stored from a message dead-lettered whole");
    h.stop().await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_consuming_goes_on() {
    let h = Harness::start().await;
    let (alice, bob) = (UserId::new(), UserId::new());
    let good = |tx| event(tx, alice, bob, "3.00", "COMPLETED", None);
    let props = |id: Uuid, kind: &str| {
        BasicProperties::default()
            .with_message_id(id.to_string().into())
            .with_type(kind.into())
            .with_content_type("application/json".into())
    };

    let bad_json = Uuid::new_v4();
    h.publish_raw(COMPLETED, props(bad_json, COMPLETED), b"{not json").await;
    // No message id at all.
    h.publish_raw(
        COMPLETED,
        BasicProperties::default().with_type(COMPLETED.into()),
        &serde_json::to_vec(&good(Uuid::new_v4())).unwrap(),
    )
    .await;
    // A type of a newer producer: not poison, acked and counted.
    let unknown_type = Uuid::new_v4();
    h.publish(unknown_type, "transaction.exploded", &good(Uuid::new_v4())).await;
    let mismatch = Uuid::new_v4();
    h.publish(mismatch, COMPLETED, &event(Uuid::new_v4(), alice, bob, "3.00", "FAILED", Some("x"))).await;
    let bad_amount = Uuid::new_v4();
    h.publish(bad_amount, COMPLETED, &event(Uuid::new_v4(), alice, bob, "1e3", "COMPLETED", None)).await;

    // The consumer keeps going after all of them.
    let tx = Uuid::new_v4();
    h.publish(Uuid::new_v4(), COMPLETED, &good(tx)).await;
    h.wait_for_outcome(Outcome::Stored, 1).await;
    h.wait_for_outcome(Outcome::Poison, 4).await;
    h.wait_for_outcome(Outcome::Ignored, 1).await;
    let list = h.wait_for_notifications(alice, 1).await;
    assert_eq!(list[0]["transaction_id"], tx.to_string());

    let dead = h.dead_letters(4).await;
    // Nothing beyond the four.
    assert!(h.take_dead_letter().await.is_none());
    assert_eq!(dead.len(), 4);
    let ids: HashSet<String> =
        dead.iter().filter_map(|m| m.delivery.properties.message_id().as_ref().map(|s| s.to_string())).collect();
    let expected: HashSet<String> = [bad_json, mismatch, bad_amount].iter().map(Uuid::to_string).collect();
    assert_eq!(ids, expected, "plus the one without an id");
    let bodies: Vec<&[u8]> = dead.iter().map(|m| m.delivery.data.as_slice()).collect();
    assert!(bodies.contains(&b"{not json".as_slice()));
    // The broker marks why it dead-lettered them.
    let reason =
        dead[0].delivery.properties.headers().as_ref().and_then(|h| h.inner().get("x-first-death-reason").cloned());
    assert!(
        matches!(&reason, Some(lapin::types::AMQPValue::LongString(s)) if s.to_string() == "rejected"),
        "{reason:?}"
    );
    assert!(
        h.notifications_of(bob).await.iter().all(|n| n["transaction_id"] == Value::String(tx.to_string())),
        "nothing stored from the poison messages"
    );
    h.stop().await;
}

/// The RabbitMQ management API of the test stack.
fn management_url() -> reqwest::Url {
    let raw = std::env::var("PAYFLOW_TEST_RABBITMQ_MANAGEMENT_URL")
        .expect("PAYFLOW_TEST_RABBITMQ_MANAGEMENT_URL is not set: start the test stack with PAYFLOW_STACK_RABBITMQ=1");
    raw.parse().expect("management URL")
}

/// Names of the broker connections consuming `queue`.
async fn consumer_connections(http: &reqwest::Client, queue: &str) -> Vec<String> {
    let mut url = management_url();
    let (user, pass) = (url.username().to_string(), url.password().unwrap_or_default().to_string());
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.path_segments_mut().expect("base").extend(["api", "queues", "/", queue]);
    let res = http.get(url).basic_auth(user, Some(pass)).send().await.expect("management API");
    if !res.status().is_success() {
        return Vec::new();
    }
    let body: Value = res.json().await.expect("json");
    body["consumer_details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["channel_details"]["connection_name"].as_str().map(str::to_string))
        .collect()
}

async fn close_connection(http: &reqwest::Client, name: &str) {
    let mut url = management_url();
    let (user, pass) = (url.username().to_string(), url.password().unwrap_or_default().to_string());
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.path_segments_mut().expect("base").extend(["api", "connections", name]);
    let res = http
        .delete(url)
        .basic_auth(user, Some(pass))
        .header("x-reason", "test: broker connection lost")
        .send()
        .await
        .expect("management API");
    assert!(res.status().is_success(), "closing {name}: {}", res.status());
}

#[tokio::test]
async fn the_consumer_reconnects_after_losing_the_broker() {
    let h = Harness::start().await;
    let (alice, bob) = (UserId::new(), UserId::new());
    h.publish(Uuid::new_v4(), COMPLETED, &event(Uuid::new_v4(), alice, bob, "1.00", "COMPLETED", None)).await;
    h.wait_for_outcome(Outcome::Stored, 1).await;

    let queue = h.topology.notifications_queue();
    let before = crate::harness::eventually("the consumer on the broker", || async {
        let c = consumer_connections(&h.http, &queue).await;
        (c.len() == 1).then_some(c)
    })
    .await;
    close_connection(&h.http, &before[0]).await;

    // Published while the consumer is (probably) away: the queue keeps it.
    h.publish(Uuid::new_v4(), COMPLETED, &event(Uuid::new_v4(), alice, bob, "2.00", "COMPLETED", None)).await;
    h.wait_for_outcome(Outcome::Stored, 2).await;
    assert_eq!(h.notifications_of(alice).await.len(), 2);
    // The management API's view lags a few seconds behind the broker.
    crate::harness::eventually("one new consumer connection", || async {
        let after = consumer_connections(&h.http, &queue).await;
        (after.len() == 1 && after != before).then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn one_batch_stores_each_event_once_even_when_it_repeats_an_id() {
    use payflow_notification::events::{NewNotification, NotificationType};
    use payflow_notification::store::{record_events, EventToStore, Queue, Recorded};
    let h = Harness::start().await;
    // A message of one event: its notifications are stored under the message id.
    let note = |event: Uuid, user: UserId, kind| {
        let n = NewNotification {
            user_id: user,
            kind,
            message: "You received 1.00 USD".into(),
            transaction_id: Some(Uuid::new_v4()),
            occurred_at: None,
        };
        (event, n)
    };
    let (a, b, c) = (UserId::new(), UserId::new(), UserId::new());
    let (ea, eb, ec) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (na, nb, nc) = (
        [note(ea, a, NotificationType::TransactionReceived)],
        [note(eb, b, NotificationType::TransactionReceived)],
        [note(ec, c, NotificationType::TransactionReceived)],
    );
    let event =
        |message_id, notifications| EventToStore { message_id, kind: COMPLETED, correlation_id: "c", notifications };
    // A channel no process has, so no retry loop takes these queue rows.
    let lease = std::time::Duration::from_secs(60);
    let queue = Queue { channels: &["test-only-channel"], prefix: "test-only-prefix", lease };
    // `ec` was processed before; `ea` comes twice in the batch.
    let before = record_events(&h.pool, &[event(ec, &nc)], &Queue { channels: &[], ..queue }).await.expect("store");
    assert!(matches!(before[..], [Recorded::Stored(ref s)] if s.len() == 1));
    let batch = [event(ea, &na), event(eb, &nb), event(ea, &na), event(ec, &nc)];
    let recorded = record_events(&h.pool, &batch, &queue).await.expect("store");
    let stored: Vec<Option<Vec<UserId>>> = recorded
        .iter()
        .map(|r| match r {
            Recorded::Stored(s) => Some(s.iter().map(|n| n.user_id).collect()),
            Recorded::Duplicate => None,
        })
        .collect();
    assert_eq!(stored, vec![Some(vec![a]), Some(vec![b]), None, None]);
    for user in [a, b, c] {
        assert_eq!(h.notifications_of(user).await.len(), 1, "{user}");
    }
    // Queued in the same statement: one row per stored notification of that batch, leased.
    let queue: Vec<(UserId, String, i32, bool)> = sqlx::query_as(
        "SELECT n.user_id, q.channel, q.attempts, q.next_attempt_at > now() + interval '50 seconds' \
         FROM notify.delivery_queue q JOIN notify.notifications n ON n.id = q.notification_id \
         WHERE n.user_id = ANY($1) ORDER BY n.user_id",
    )
    .bind(vec![a, b, c])
    .fetch_all(&h.pool)
    .await
    .expect("queue");
    let mut expected =
        vec![(a, "test-only-channel".to_string(), 0, true), (b, "test-only-channel".to_string(), 0, true)];
    expected.sort();
    assert_eq!(queue, expected);
}

#[tokio::test]
async fn processed_message_ids_are_forgotten_after_the_retention_only() {
    let h = Harness::start().await;
    let (old, fresh) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO notify.processed_messages (message_id, kind, processed_at) \
         VALUES ($1, 'transaction.completed', now() - interval '8 days'), ($2, 'transaction.completed', now())",
    )
    .bind(old)
    .bind(fresh)
    .execute(&h.pool)
    .await
    .expect("insert");
    let deleted = payflow_notification::store::purge_processed(&h.pool, 7).await.expect("purge");
    assert!(deleted >= 1);
    let left: Vec<Uuid> =
        sqlx::query_scalar("SELECT message_id FROM notify.processed_messages WHERE message_id = ANY($1)")
            .bind(vec![old, fresh])
            .fetch_all(&h.pool)
            .await
            .expect("select");
    assert_eq!(left, vec![fresh]);
}
