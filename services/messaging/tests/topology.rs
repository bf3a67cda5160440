//! Declaring the topology against the test stack's RabbitMQ. Every test uses
//! its own prefix, so its queues are its own.

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use payflow_messaging::{declared, Topology};
use uuid::Uuid;

fn amqp_url() -> String {
    std::env::var("PAYFLOW_TEST_AMQP_URL")
        .expect("PAYFLOW_TEST_AMQP_URL is not set: eval \"$(PAYFLOW_STACK_RABBITMQ=1 bash scripts/stack.sh env test)\"")
}

/// Deletes everything `topology` declares.
async fn remove(ch: &lapin::Channel, topology: &Topology) {
    for q in [topology.transactions_queue(), topology.notifications_queue()] {
        for name in [topology.retry_queue(&q), topology.dead_letter_queue(&q), q] {
            let _ = ch.queue_delete(&name, QueueDeleteOptions::default()).await;
        }
    }
    for ex in [topology.work_exchange(), topology.events_exchange(), topology.dead_letter_exchange()] {
        let _ = ch.exchange_delete(&ex, Default::default()).await;
    }
}

#[tokio::test]
async fn a_queue_with_other_arguments_is_reported_until_it_is_fixed() {
    let conn = payflow_messaging::connect(&amqp_url()).await.expect("connect");
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let topology = Topology::new(&prefix, 5);
    let queue = topology.notifications_queue();

    // An earlier configuration made the queue with a delivery limit of 3.
    let ch = conn.create_channel().await.expect("channel");
    let args = Topology::new(&prefix, 3).work_queue_arguments(&queue);
    ch.queue_declare(&queue, QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await
        .expect("pre-declare");
    assert_eq!(declared::failure(&prefix), None, "nothing refused yet");

    // A refusal closes the channel, so each attempt gets a fresh one, as a session does.
    let err = topology.declare(&conn.create_channel().await.expect("channel")).await.expect_err("refused");
    assert!(err.refused(), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("queue '{queue}'")), "names the queue: {text}");
    assert!(text.contains("PRECONDITION_FAILED") && text.contains("x-delivery-limit"), "says what differs: {text}");
    assert!(text.contains("'5'") && text.contains("'3'"), "wanted and existing values: {text}");
    let failure = declared::failure(&prefix).expect("recorded for readiness");
    assert!(failure.contains("x-delivery-limit"), "{failure}");
    // Other PayFlows on the broker are not affected.
    assert_eq!(declared::failure(&format!("{prefix}-other")), None);

    // The operator removes the old queue: the next declaration goes through and clears it.
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_delete(&queue, QueueDeleteOptions::default()).await.expect("delete");
    topology.declare(&ch).await.expect("declared once the queue is gone");
    assert_eq!(declared::failure(&prefix), None);

    remove(&ch, &topology).await;
    let _ = conn.close(200, "test done").await;
}

#[tokio::test]
async fn declaring_twice_with_the_same_settings_is_fine() {
    let conn = payflow_messaging::connect(&amqp_url()).await.expect("connect");
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let topology = Topology::new(&prefix, 5);
    let ch = conn.create_channel().await.expect("channel");
    topology.declare(&ch).await.expect("first");
    topology.declare(&ch).await.expect("again, idempotent");
    assert_eq!(declared::failure(&prefix), None);
    remove(&ch, &topology).await;
    let _ = conn.close(200, "test done").await;
}
