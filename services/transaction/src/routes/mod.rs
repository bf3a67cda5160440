//! `POST /api/transactions`, `GET /api/transactions`, `GET /api/transactions/:id`.

mod create;
mod read;

use axum::routing::get;
use axum::Router;
use payflow_common::health::Readiness;
use payflow_common::server::{with_common_layers, ServiceInfo};

use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let info = ServiceInfo::new(
        crate::SERVICE_NAME,
        state.metrics.clone(),
        // Not ready while RabbitMQ refuses the topology the relay declares (a queue exists with
        // other arguments): accepted transfers would never be published, and the reversal would
        // fail each one.
        Readiness::postgres(state.pool.clone())
            .with_keys(state.verifier.clone())
            .with_state_check(payflow_messaging::declared::readiness_check(state.topology.prefix())),
    );
    let api = Router::new()
        .route("/api/transactions", get(read::list).post(create::create))
        .route("/api/transactions/{id}", get(read::get_one))
        .with_state(state);
    with_common_layers(api, &info)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    use payflow_common::config::JwtClaimArgs;
    use payflow_common::jwt::JwtSigner;
    use tokio_util::sync::CancellationToken;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cfg: crate::Config,
    }

    fn amqp_url() -> String {
        std::env::var("PAYFLOW_TEST_AMQP_URL")
            .expect("PAYFLOW_TEST_AMQP_URL is not set: run the tests with scripts/test.sh")
    }

    async fn readyz(http: &reqwest::Client, base: &str) -> (u16, serde_json::Value) {
        let res = http.get(format!("{base}/readyz")).send().await.expect("readyz");
        let status = res.status().as_u16();
        (status, res.json().await.expect("json"))
    }

    #[tokio::test]
    async fn not_ready_while_rabbitmq_refuses_the_topology() {
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let cfg = Cli::try_parse_from([
            "test".to_string(),
            format!("--amqp-prefix={prefix}"),
            format!("--amqp-url={}", amqp_url()),
            "--service-token=test-service-token-0123456789".to_string(),
        ])
        .expect("config")
        .cfg;
        let verifier = JwtSigner::generate().expect("key").verifier(&JwtClaimArgs::default());
        let state = AppState::with_parts(&cfg, crate::test_pool(2).await, verifier).expect("state");
        let topology = cfg.amqp.topology();
        let cancel = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(payflow_common::server::serve(listener, router(state), cancel.clone()));
        let http = reqwest::Client::new();
        assert_eq!(readyz(&http, &base).await.0, 200);

        // The settle queue exists with a delivery limit of 3; this release asks for 5. The relay
        // of this process declares the topology; here the test does, as the relay would.
        let conn = payflow_messaging::connect(&amqp_url()).await.expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        let queue = topology.transactions_queue();
        let args = payflow_messaging::Topology::new(topology.prefix(), 3).work_queue_arguments(&queue);
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(&queue, durable, args).await.expect("pre-declare");
        let refused = conn.create_channel().await.expect("channel");
        topology.declare(&refused).await.expect_err("refused");

        let (status, body) = readyz(&http, &base).await;
        assert_eq!(status, 503, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(&queue) && error.contains("x-delivery-limit"), "{body}");

        // Fixed (the old queue removed): the next declaration makes it ready again.
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_delete(&queue, QueueDeleteOptions::default()).await.expect("delete");
        topology.declare(&ch).await.expect("declare");
        assert_eq!(readyz(&http, &base).await.0, 200);

        for q in [topology.transactions_queue(), topology.notifications_queue()] {
            for name in [topology.retry_queue(&q), topology.dead_letter_queue(&q), q] {
                let _ = ch.queue_delete(&name, QueueDeleteOptions::default()).await;
            }
        }
        for ex in [topology.work_exchange(), topology.events_exchange(), topology.dead_letter_exchange()] {
            let _ = ch.exchange_delete(&ex, Default::default()).await;
        }
        let _ = conn.close(200, "test done").await;
        cancel.cancel();
    }
}
