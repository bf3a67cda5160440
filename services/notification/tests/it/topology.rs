//! A queue that exists with other arguments than this release declares: the
//! consumer cannot start, and readiness says so (and why) until it is fixed.

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use payflow_common::config::JwtClaimArgs;
use payflow_common::jwt::JwtSigner;
use payflow_notification::AppState;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{amqp_url, config, database_url, eventually};

#[tokio::test]
async fn not_ready_while_the_queue_has_other_arguments_and_ready_once_fixed() {
    payflow_common::telemetry::init();
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let cfg = config(&prefix, &[("amqp-delivery-limit", "5".to_string())]);
    let topology = cfg.amqp.topology();
    let queue = topology.notifications_queue();

    // Made earlier with a delivery limit of 3 (another setting of PAYFLOW_AMQP_DELIVERY_LIMIT).
    let conn = payflow_messaging::connect(&amqp_url()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let args = payflow_messaging::Topology::new(topology.prefix(), 3).work_queue_arguments(&queue);
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(&queue, durable, args).await.expect("pre-declare");

    let pool = sqlx::PgPool::connect(&database_url()).await.expect("connect");
    payflow_notification::migrate(&pool).await.expect("migrate");
    let verifier = JwtSigner::generate().expect("key").verifier(&JwtClaimArgs::default());
    let state = AppState::with_parts(&cfg, pool, verifier).expect("state");
    let cancel = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let readyz = format!("http://{}/readyz", listener.local_addr().expect("addr"));
    tokio::spawn(payflow_common::server::serve(listener, payflow_notification::router(state.clone()), cancel.clone()));
    let consumer = {
        let (cfg, cancel) = (cfg.clone(), cancel.clone());
        tokio::spawn(async move { payflow_notification::consume(state, &cfg, cancel).await })
    };
    let http = reqwest::Client::new();
    let ready = |http: reqwest::Client, url: String| async move {
        let res = http.get(url).send().await.expect("readyz");
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.expect("json"))
    };

    let body = eventually("not ready, naming the argument", || async {
        let (status, body) = ready(http.clone(), readyz.clone()).await;
        (status == 503).then_some(body)
    })
    .await;
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains(&queue) && error.contains("x-delivery-limit"), "{body}");
    assert!(error.contains("'5'") && error.contains("'3'"), "wanted and existing values: {body}");

    // The operator removes the old queue (it was drained first): the consumer's next session
    // declares it, and the service is ready again.
    ch.queue_delete(&queue, QueueDeleteOptions::default()).await.expect("delete");
    eventually("ready again", || async { (ready(http.clone(), readyz.clone()).await.0 == 200).then_some(()) }).await;
    eventually("the consumer on the queue", || async {
        let c = conn.create_channel().await.ok()?;
        let q =
            c.queue_declare(&queue, QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default());
        (q.await.ok()?.consumer_count() == 1).then_some(())
    })
    .await;

    cancel.cancel();
    consumer.await.expect("task").expect("the consumer ends without error");
    for q in [topology.transactions_queue(), queue] {
        for name in [topology.retry_queue(&q), topology.dead_letter_queue(&q), q] {
            let _ = ch.queue_delete(&name, QueueDeleteOptions::default()).await;
        }
    }
    for ex in [topology.work_exchange(), topology.events_exchange(), topology.dead_letter_exchange()] {
        let _ = ch.exchange_delete(&ex, Default::default()).await;
    }
    let _ = conn.close(200, "test done").await;
}
