//! Reading queue depths against the test stack's RabbitMQ. Every test uses its
//! own prefix, so its queues are its own.

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeleteOptions};
use lapin::types::AMQPValue;
use payflow_messaging::depth::queue_depth;
use payflow_messaging::topology::SETTLE;
use payflow_messaging::{DepthProbe, Message, Publisher, Topology};
use uuid::Uuid;

fn amqp_url() -> String {
    std::env::var("PAYFLOW_TEST_AMQP_URL")
        .expect("PAYFLOW_TEST_AMQP_URL is not set: eval \"$(PAYFLOW_STACK_RABBITMQ=1 bash scripts/stack.sh env test)\"")
}

fn message() -> Message {
    Message {
        id: Uuid::new_v4(),
        kind: SETTLE.to_string(),
        correlation_id: "test-depth".to_string(),
        timestamp: 0,
        body: b"{}".to_vec(),
        attempt: 0,
    }
}

/// Deletes every queue and exchange `topology` declares.
async fn remove(conn: &lapin::Connection, topology: &Topology) {
    let ch = conn.create_channel().await.expect("channel");
    for q in topology.work_queues() {
        for name in [topology.retry_queue(&q), topology.dead_letter_queue(&q), q] {
            let _ = ch.queue_delete(&name, QueueDeleteOptions::default()).await;
        }
    }
    for ex in [topology.work_exchange(), topology.events_exchange(), topology.dead_letter_exchange()] {
        let _ = ch.exchange_delete(&ex, Default::default()).await;
    }
}

#[tokio::test]
async fn the_depth_of_a_dead_letter_queue_counts_what_the_broker_dead_lettered() {
    let conn = payflow_messaging::connect(&amqp_url()).await.expect("connect");
    let topology = Topology::new(&format!("test-{}", Uuid::new_v4().simple()), 1);
    let publisher = Publisher::new(&conn).await.expect("publisher");
    topology.declare(publisher.channel()).await.expect("declare");
    let queue = topology.transactions_queue();
    let dlq = topology.dead_letter_queue(&queue);
    let mut probe = DepthProbe::new(Duration::from_secs(5));
    assert_eq!(probe.depth(&conn, &dlq).await.expect("depth"), Some(0));

    for _ in 0..2 {
        publisher.publish(&topology.work_exchange(), SETTLE, &message()).await.expect("publish");
    }
    // A consumer that keeps giving the messages back: past the delivery limit (1), the broker
    // dead-letters them itself; no consumer ever sees that happen.
    let ch = conn.create_channel().await.expect("channel");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the broker did not dead-letter both messages");
        match ch.basic_get(&queue, BasicGetOptions::default()).await.expect("get") {
            Some(d) => d.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.expect("nack"),
            None if probe.depth(&conn, &dlq).await.expect("depth") == Some(2) => break,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(probe.depth(&conn, &queue).await.expect("depth"), Some(0));

    // They are there, dead-lettered for going over the limit (what the runbook tells to look for).
    let d = ch.basic_get(&dlq, BasicGetOptions::default()).await.expect("get").expect("a dead-lettered message");
    let headers = d.properties.headers().clone().expect("headers");
    let reason = headers.inner().get("x-first-death-reason").cloned();
    assert!(
        matches!(&reason, Some(AMQPValue::LongString(s)) if s.to_string() == "delivery_limit"),
        "x-first-death-reason: {reason:?}"
    );

    remove(&conn, &topology).await;
    let _ = conn.close(200, "test done").await;
}

#[tokio::test]
async fn a_missing_queue_is_absent_and_closes_only_the_probes_channel() {
    let conn = payflow_messaging::connect(&amqp_url()).await.expect("connect");
    let topology = Topology::new(&format!("test-{}", Uuid::new_v4().simple()), 5);
    let publisher = Publisher::new(&conn).await.expect("publisher");
    topology.declare(publisher.channel()).await.expect("declare");
    let dlq = topology.dead_letter_queue(&topology.notifications_queue());
    let missing = format!("{}.no-such-queue", topology.prefix());

    // On a bare channel: absent, and the broker closed that channel (hence the probe's own).
    let ch = conn.create_channel().await.expect("channel");
    assert_eq!(queue_depth(&ch, &missing).await.expect("depth"), None);
    assert!(!ch.status().connected(), "a passive declare of a missing queue closes its channel");

    let mut probe = DepthProbe::new(Duration::from_secs(5));
    assert_eq!(probe.depth(&conn, &missing).await.expect("depth"), None);
    // The probe opens a new channel for the next read; publishing was never disturbed.
    publisher.publish("", &dlq, &message()).await.expect("publish after the 404");
    assert_eq!(probe.depth(&conn, &dlq).await.expect("depth"), Some(1));
    assert!(publisher.channel().status().connected());

    // A queue deleted after it was read is absent again, not an error.
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_delete(&dlq, QueueDeleteOptions::default()).await.expect("delete");
    assert_eq!(probe.depth(&conn, &dlq).await.expect("depth"), None);

    remove(&conn, &topology).await;
    let _ = conn.close(200, "test done").await;
}
