//! `run`: the HTTP server and the consumer together, stopped by the token.

use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use payflow_messaging::Publisher;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{amqp_url, config};

#[tokio::test]
async fn run_consumes_and_stops_on_cancel() {
    payflow_common::telemetry::init();
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let cfg = config(&prefix, &[("notification-port", "0".to_string()), ("bind", "127.0.0.1".to_string())]);
    let pool = sqlx::PgPool::connect(&crate::harness::database_url()).await.unwrap();
    payflow_notification::migrate(&pool).await.unwrap();

    let cancel = CancellationToken::new();
    let running = tokio::spawn(payflow_notification::run(cfg.clone(), cancel.clone()));

    // The consumer is up once the queue has one.
    let conn = payflow_messaging::connect(&amqp_url()).await.unwrap();
    let publisher = Publisher::new(&conn).await.unwrap();
    let queue = cfg.amqp.topology().notifications_queue();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A passive declare of a missing queue closes the channel: use a fresh one.
        let ch = conn.create_channel().await.unwrap();
        if let Ok(q) = ch.queue_declare(&queue, passive, FieldTable::default()).await {
            if q.consumer_count() == 1 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the consumer never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("run stops when cancelled")
        .expect("task")
        .expect("run ends without error");

    let topology = cfg.amqp.topology();
    let ch = publisher.channel();
    for q in [topology.transactions_queue(), queue] {
        for name in [topology.retry_queue(&q), topology.dead_letter_queue(&q), q.clone()] {
            let _ = ch.queue_delete(&name, Default::default()).await;
        }
    }
    for ex in [topology.work_exchange(), topology.events_exchange(), topology.dead_letter_exchange()] {
        let _ = ch.exchange_delete(&ex, Default::default()).await;
    }
    let _ = conn.close(200, "test done").await;
}
