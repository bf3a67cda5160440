//! Events the database refuses (or would) in a batch with good ones: the good
//! ones are stored, only the refused ones are dead-lettered.

use std::collections::HashSet;

use payflow_common::ids::UserId;
use payflow_notification::metrics::Outcome;
use uuid::Uuid;

use crate::harness::{event, Harness, Options};

const COMPLETED: &str = "transaction.completed";

/// Makes Postgres refuse, with a data exception (22023), every notification of one transaction:
/// a stand-in for whatever data the consumer's own checks let through. Only this transaction is
/// affected, so the tests sharing the table go on.
struct Refusal {
    name: String,
}

impl Refusal {
    async fn install(pool: &sqlx::PgPool, transaction: Uuid) -> Self {
        let name = format!("test_refuse_{}", Uuid::new_v4().simple());
        sqlx::raw_sql(&format!(
            "CREATE FUNCTION notify.{name}() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN RAISE EXCEPTION 'test: refused' USING ERRCODE = '22023'; END $$; \
             CREATE TRIGGER {name} BEFORE INSERT ON notify.notifications FOR EACH ROW \
               WHEN (NEW.transaction_id = '{transaction}') EXECUTE FUNCTION notify.{name}();"
        ))
        .execute(pool)
        .await
        .expect("install the refusal");
        Self { name }
    }

    async fn remove(self, pool: &sqlx::PgPool) {
        sqlx::raw_sql(&format!("DROP FUNCTION notify.{}() CASCADE", self.name))
            .execute(pool)
            .await
            .expect("remove the refusal");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_event_in_a_batch_dead_letters_only_itself() {
    // One delivery only: had the batch gone back to the queue, all of it would be dead-lettered.
    let flags = [("amqp-delivery-limit", "1".to_string())];
    let mut h = Harness::start_opts(Options { flags: &flags, no_consumer: true, ..Default::default() }).await;
    let refused_tx = Uuid::new_v4();
    let refusal = Refusal::install(&h.pool, refused_tx).await;

    // Published before the consumer starts, so they arrive (and are stored) together.
    let mut good = Vec::new();
    let mut publish_good = async |h: &Harness| {
        let (from, to) = (UserId::new(), UserId::new());
        h.publish(Uuid::new_v4(), COMPLETED, &event(Uuid::new_v4(), from, to, "1.00", "COMPLETED", None)).await;
        good.push(from);
    };
    publish_good(&h).await;
    let (alice, bob) = (UserId::new(), UserId::new());
    let refused = Uuid::new_v4();
    h.publish(refused, COMPLETED, &event(refused_tx, alice, bob, "2.00", "COMPLETED", None)).await;
    publish_good(&h).await;
    // A date Postgres cannot store (chrono can read it): refused when parsed, before any statement.
    let ancient = Uuid::new_v4();
    let mut body = event(Uuid::new_v4(), alice, bob, "3.00", "COMPLETED", None);
    body["occurredAt"] = "-5000-01-01T00:00:00Z".into();
    h.publish(ancient, COMPLETED, &body).await;
    publish_good(&h).await;
    h.start_consumer();

    for user in &good {
        h.wait_for_notifications(*user, 1).await;
    }
    h.wait_for_outcome(Outcome::Stored, 3).await;
    h.wait_for_outcome(Outcome::Poison, 2).await;
    let dead = h.dead_letters(2).await;
    let ids: HashSet<String> =
        dead.iter().filter_map(|m| m.delivery.properties.message_id().as_ref().map(|s| s.to_string())).collect();
    assert_eq!(ids, HashSet::from([refused.to_string(), ancient.to_string()]));
    for m in &dead {
        let reason =
            m.delivery.properties.headers().as_ref().and_then(|h| h.inner().get("x-first-death-reason").cloned());
        assert!(
            matches!(&reason, Some(lapin::types::AMQPValue::LongString(s)) if s.to_string() == "rejected"),
            "rejected by the consumer, not over its delivery limit: {reason:?}"
        );
    }
    assert!(h.take_dead_letter().await.is_none(), "no other");
    assert!(h.notifications_of(alice).await.is_empty());
    refusal.remove(&h.pool).await;
    h.stop().await;
}
