//! The database away or refusing writes for much longer than the consumer
//! retries in place: the events wait in the retry queue (which does not spend
//! their delivery limit) and are stored once it is back; none is dead-lettered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use payflow_common::ids::UserId;
use payflow_notification::consumer::Patience;
use payflow_notification::metrics::Outcome;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::harness::{database_url, event, eventually, Harness, Options};
use crate::proxy::Proxy;

const COMPLETED: &str = "transaction.completed";

/// Retries in place for well under a second, so a few seconds of outage are many budgets.
const SHORT: Patience = Patience { first: Duration::from_millis(200), longest: Duration::from_millis(400) };

/// One delivery only: a single nack back to the queue would dead-letter the message.
fn flags() -> [(&'static str, String); 1] {
    [("amqp-delivery-limit", "1".to_string())]
}

/// The transactions of `user`'s notifications, read directly (the service's own pool may
/// still be finding out that its connections were cut).
async fn transactions_of(h: &Harness, user: UserId) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT transaction_id FROM notify.notifications WHERE user_id = $1 ORDER BY transaction_id")
        .bind(user)
        .fetch_all(&h.pool)
        .await
        .expect("notifications")
}

async fn wait_for_transactions(h: &Harness, user: UserId, n: usize) -> Vec<Uuid> {
    eventually(&format!("{n} notifications for {user}"), || async {
        let list = transactions_of(h, user).await;
        (list.len() == n).then_some(list)
    })
    .await
}

async fn wait_for_retries(h: &Harness, n: u64) {
    eventually(&format!("{n} messages sent to the retry queue"), || async {
        (h.state.counters.messages_with(Outcome::Retried) >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_of_many_retry_budgets_dead_letters_nothing() {
    let mut url = reqwest::Url::parse(&database_url()).expect("database url");
    let upstream = format!("{}:{}", url.host_str().expect("host"), url.port().unwrap_or(5432));
    let proxy = Proxy::start(upstream).await;
    url.set_port(Some(proxy.addr.port())).expect("port");
    // A short acquire timeout, so each try during the outage fails quickly.
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_millis(300))
        .connect(url.as_str())
        .await
        .expect("connect through the proxy");
    let flags = flags();
    let h =
        Harness::start_opts(Options { flags: &flags, pool: Some(pool), patience: Some(SHORT), ..Default::default() })
            .await;
    let (alice, bob) = (UserId::new(), UserId::new());
    let t1 = Uuid::new_v4();
    h.publish(Uuid::new_v4(), COMPLETED, &event(t1, alice, bob, "1.00", "COMPLETED", None)).await;
    wait_for_transactions(&h, alice, 1).await;

    proxy.cut();
    let (t2, t3) = (Uuid::new_v4(), Uuid::new_v4());
    h.publish(Uuid::new_v4(), COMPLETED, &event(t2, alice, bob, "2.00", "COMPLETED", None)).await;
    h.publish(Uuid::new_v4(), COMPLETED, &event(t3, alice, bob, "3.00", "COMPLETED", None)).await;
    // Three rounds each through the retry queue, every one after an in-place budget spent.
    wait_for_retries(&h, 6).await;
    assert!(h.take_dead_letter().await.is_none(), "nothing dead-lettered during the outage");
    proxy.restore();

    let mut all = vec![t1, t2, t3];
    all.sort();
    assert_eq!(wait_for_transactions(&h, alice, 3).await, all);
    assert_eq!(wait_for_transactions(&h, bob, 3).await, all);
    assert!(h.take_dead_letter().await.is_none(), "nothing dead-lettered after it either");
    assert_eq!(h.state.counters.messages_with(Outcome::Error), 0, "nothing nacked back to the queue");
    assert_eq!(h.state.counters.messages_with(Outcome::Poison), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_refuses_writes_is_waited_out_not_dead_lettered() {
    // Every session is read-only while the flag is set, so storing fails with 25006, an error
    // that is not transient and not the message's fault either (a failover, a setting).
    let read_only = Arc::new(AtomicBool::new(true));
    let flag = read_only.clone();
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .before_acquire(move |conn, _| {
            let on = flag.load(Ordering::SeqCst);
            Box::pin(async move {
                let set = if on { "on" } else { "off" };
                sqlx::query(&format!("SET default_transaction_read_only = {set}")).execute(&mut *conn).await?;
                Ok(true)
            })
        })
        .connect(&database_url())
        .await
        .expect("connect");
    let flags = flags();
    let h =
        Harness::start_opts(Options { flags: &flags, pool: Some(pool), patience: Some(SHORT), ..Default::default() })
            .await;
    let (alice, bob, tx) = (UserId::new(), UserId::new(), Uuid::new_v4());
    h.publish(Uuid::new_v4(), COMPLETED, &event(tx, alice, bob, "4.00", "COMPLETED", None)).await;

    wait_for_retries(&h, 3).await;
    assert!(h.take_dead_letter().await.is_none(), "not dead-lettered while the database refuses writes");
    assert!(transactions_of(&h, alice).await.is_empty());
    read_only.store(false, Ordering::SeqCst);

    assert_eq!(wait_for_transactions(&h, alice, 1).await, vec![tx]);
    assert!(h.take_dead_letter().await.is_none());
    assert_eq!(h.state.counters.messages_with(Outcome::Error), 0);
    h.stop().await;
}
