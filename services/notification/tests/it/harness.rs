//! Runs the notification service (HTTP API and consumer) in this process
//! against the real Postgres and RabbitMQ of the test stack. Every harness
//! has its own AMQP prefix, so tests run in parallel without seeing each
//! other's messages, and tests use fresh user ids, so they share the database.

use std::future::Future;
use std::time::{Duration, Instant};

use clap::Parser;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use payflow_common::config::JwtClaimArgs;
use payflow_common::ids::UserId;
use payflow_common::jwt::{AccessClaims, JwtSigner, ACCESS_TYP};
use payflow_messaging::{Message, Publisher, Topology};
use payflow_notification::consumer::Patience;
use payflow_notification::{AppState, Config};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Longest any condition is waited for.
const DEADLINE: Duration = Duration::from_secs(20);

pub fn database_url() -> String {
    std::env::var("PAYFLOW_TEST_DATABASE_URL").expect(
        "PAYFLOW_TEST_DATABASE_URL is not set: eval \"$(PAYFLOW_STACK_RABBITMQ=1 bash scripts/stack.sh env test)\"",
    )
}

pub fn amqp_url() -> String {
    std::env::var("PAYFLOW_TEST_AMQP_URL")
        .expect("PAYFLOW_TEST_AMQP_URL is not set: eval \"$(PAYFLOW_STACK_RABBITMQ=1 bash scripts/stack.sh env test)\"")
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    cfg: Config,
}

/// The service's configuration: the test stack, a private AMQP `prefix`, and
/// `flags` (`name`, `value`) on top, which win over the defaults here.
pub fn config(prefix: &str, flags: &[(&str, String)]) -> Config {
    let defaults = [
        ("database-url", database_url()),
        ("db-max-connections", "5".to_string()),
        ("amqp-url", amqp_url()),
        ("amqp-prefix", prefix.to_string()),
        ("notification-prefetch", "10".to_string()),
    ];
    let argv = std::iter::once("test".to_string())
        .chain(
            defaults
                .iter()
                .filter(|(k, _)| !flags.iter().any(|(f, _)| f == k))
                .chain(flags.iter())
                .map(|(k, v)| format!("--{k}={v}")),
        )
        .collect::<Vec<_>>();
    Cli::try_parse_from(argv).expect("valid test configuration").cfg
}

/// Polls `check` every 20 ms until it yields a value, failing after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct Harness {
    pub state: AppState,
    pub pool: PgPool,
    pub base: String,
    pub http: reqwest::Client,
    pub topology: Topology,
    pub publisher: Publisher,
    amqp: lapin::Connection,
    signer: JwtSigner,
    cancel: CancellationToken,
    consumer: Option<JoinHandle<anyhow::Result<()>>>,
    cfg: Config,
    patience: Patience,
}

/// What a test changes about its service.
#[derive(Default)]
pub struct Options<'a> {
    /// Extra `--name=value` settings (e.g. the webhook).
    pub flags: &'a [(&'a str, String)],
    /// The service's pool (default: one on the configured database URL).
    pub pool: Option<PgPool>,
    /// How long the consumer retries the database in place (default: the service's).
    pub patience: Option<Patience>,
    /// Start without the consumer; [`Harness::start_consumer`] starts it.
    pub no_consumer: bool,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// `flags` are extra `--name=value` settings (e.g. the webhook).
    pub async fn start_with(flags: &[(&str, String)]) -> Self {
        Self::start_opts(Options { flags, ..Default::default() }).await
    }

    pub async fn start_opts(o: Options<'_>) -> Self {
        payflow_common::telemetry::init();
        let prefix = format!("test-{}", Uuid::new_v4().simple());
        let cfg = config(&prefix, o.flags);
        // Migrations and the test's own queries use the plain URL; the
        // service uses whatever the flags say (a test may break it on purpose).
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .connect(&database_url())
            .await
            .expect("connect to the test database");
        payflow_notification::migrate(&pool).await.expect("notify migrations");
        let service_pool = match o.pool {
            Some(pool) => pool,
            None => payflow_common::db::connect(&cfg.db, "notification").await.expect("connect to the test database"),
        };
        let signer = JwtSigner::generate().expect("key");
        let state = AppState::with_parts(&cfg, service_pool, signer.verifier(&JwtClaimArgs::default())).expect("state");

        // Declare the topology before publishing anything: a message sent to
        // an exchange with no bound queue yet would be dropped.
        let amqp = payflow_messaging::connect(&amqp_url()).await.expect("connect to RabbitMQ");
        let publisher = Publisher::new(&amqp).await.expect("publisher");
        let topology = cfg.amqp.topology();
        topology.declare(publisher.channel()).await.expect("declare topology");

        let cancel = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let router = payflow_notification::router(state.clone());
        tokio::spawn(payflow_common::server::serve(listener, router, cancel.clone()));
        tokio::spawn(payflow_notification::channels::retry::run(state.clone(), cancel.clone()));
        let mut h = Self {
            state,
            pool,
            base,
            http: reqwest::Client::new(),
            topology,
            publisher,
            amqp,
            signer,
            cancel,
            consumer: None,
            cfg,
            patience: o.patience.unwrap_or_default(),
        };
        if !o.no_consumer {
            h.start_consumer();
        }
        h
    }

    /// Starts the event consumer (once).
    pub fn start_consumer(&mut self) {
        assert!(self.consumer.is_none(), "the consumer runs already");
        let (state, cfg, cancel, patience) = (self.state.clone(), self.cfg.clone(), self.cancel.clone(), self.patience);
        self.consumer = Some(tokio::spawn(async move {
            payflow_notification::consumer::consume_with(state, &cfg, patience, cancel).await
        }));
    }

    pub fn token(&self, user: UserId) -> String {
        let now = chrono::Utc::now().timestamp();
        self.signer
            .sign(&AccessClaims {
                sub: user,
                email: format!("{user}@example.com"),
                role: "user".into(),
                iss: "payflow-auth".into(),
                aud: "payflow-api".into(),
                exp: now + 300,
                nbf: now,
                iat: now,
                jti: Uuid::new_v4().to_string(),
                typ: ACCESS_TYP.into(),
            })
            .expect("sign")
    }

    /// Publishes an event the way producers do (confirmed, persistent).
    pub async fn publish(&self, id: Uuid, kind: &str, body: &Value) {
        let msg = Message {
            id,
            kind: kind.to_string(),
            correlation_id: format!("corr-{id}"),
            timestamp: chrono::Utc::now().timestamp() as u64,
            body: serde_json::to_vec(body).expect("json"),
            attempt: 0,
        };
        self.publisher.publish(&self.topology.events_exchange(), kind, &msg).await.expect("publish");
    }

    /// Publishes arbitrary bytes with arbitrary properties to the events exchange.
    pub async fn publish_raw(&self, routing_key: &str, props: BasicProperties, body: &[u8]) {
        self.publisher
            .channel()
            .basic_publish(
                &self.topology.events_exchange(),
                routing_key,
                BasicPublishOptions::default(),
                body,
                props.with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    /// Takes one message from the notifications dead-letter queue, if any.
    pub async fn take_dead_letter(&self) -> Option<lapin::message::BasicGetMessage> {
        let dlq = self.topology.dead_letter_queue(&self.topology.notifications_queue());
        self.publisher.channel().basic_get(&dlq, BasicGetOptions { no_ack: true }).await.expect("basic_get")
    }

    /// Waits (at most 20 s) for `n` messages in the dead-letter queue and takes them.
    pub async fn dead_letters(&self, n: usize) -> Vec<lapin::message::BasicGetMessage> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut dead = Vec::with_capacity(n);
        while dead.len() < n {
            match self.take_dead_letter().await {
                Some(m) => dead.push(m),
                None => {
                    assert!(std::time::Instant::now() < deadline, "timed out waiting for dead letters");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
        dead
    }

    pub async fn get(&self, path: &str, user: Option<UserId>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(u) = user {
            req = req.bearer_auth(self.token(u));
        }
        answer(req).await
    }

    pub async fn put(&self, path: &str, user: Option<UserId>) -> (u16, Value) {
        let mut req = self.http.put(format!("{}{path}", self.base));
        if let Some(u) = user {
            req = req.bearer_auth(self.token(u));
        }
        answer(req).await
    }

    pub async fn notifications_of(&self, user: UserId) -> Vec<Value> {
        let (status, body) = self.get(&format!("/api/notifications/{user}"), Some(user)).await;
        assert_eq!(status, 200, "{body}");
        body.as_array().expect("an array").clone()
    }

    /// Waits until `user` has `n` notifications and returns them.
    pub async fn wait_for_notifications(&self, user: UserId, n: usize) -> Vec<Value> {
        eventually(&format!("{n} notifications for {user}"), || async {
            let list = self.notifications_of(user).await;
            (list.len() == n).then_some(list)
        })
        .await
    }

    /// Waits until the consumer counted `n` messages with `outcome`.
    pub async fn wait_for_outcome(&self, outcome: payflow_notification::metrics::Outcome, n: u64) {
        eventually(&format!("{n} messages {outcome:?}"), || async {
            (self.state.counters.messages_with(outcome) >= n).then_some(())
        })
        .await;
        assert_eq!(self.state.counters.messages_with(outcome), n, "{outcome:?}");
    }

    /// Delivery attempts recorded for `user`'s notifications: (channel, result, error).
    pub async fn deliveries_of(&self, user: UserId) -> Vec<(String, String, Option<String>)> {
        sqlx::query_as(
            "SELECT d.channel, d.result, d.error FROM notify.deliveries d \
             JOIN notify.notifications n ON n.id = d.notification_id \
             WHERE n.user_id = $1 ORDER BY d.channel, d.id",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .expect("deliveries")
    }

    /// Waits until `n` delivery attempts are recorded for `user`'s notifications
    /// (they are recorded after the notification is stored) and returns them.
    pub async fn wait_for_deliveries(&self, user: UserId, n: usize) -> Vec<(String, String, Option<String>)> {
        eventually(&format!("{n} deliveries for {user}"), || async {
            let list = self.deliveries_of(user).await;
            (list.len() == n).then_some(list)
        })
        .await
    }

    /// Stops the consumer (which must end cleanly), checks that nothing was
    /// left unacked (the channel's close would have requeued it) and removes
    /// this harness' queues and exchanges.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(consumer) = self.consumer.take() {
            tokio::time::timeout(DEADLINE, consumer)
                .await
                .expect("consumer stops when cancelled")
                .expect("consumer task")
                .expect("consumer ends without error");
        }
        let ch = self.publisher.channel();
        let queue = self.topology.notifications_queue();
        let left = ch
            .queue_declare(&queue, QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
            .await
            .expect("queue exists");
        assert_eq!(left.message_count(), 0, "every message was acked or rejected");

        for q in [self.topology.transactions_queue(), queue.clone()] {
            for name in [self.topology.retry_queue(&q), self.topology.dead_letter_queue(&q), q.clone()] {
                let _ = ch.queue_delete(&name, QueueDeleteOptions::default()).await;
            }
        }
        for ex in [self.topology.work_exchange(), self.topology.events_exchange(), self.topology.dead_letter_exchange()]
        {
            let _ = ch.exchange_delete(&ex, ExchangeDeleteOptions::default()).await;
        }
        let _ = self.amqp.close(200, "test done").await;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // A failed test still stops its consumer and server.
        self.cancel.cancel();
    }
}

async fn answer(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// An event body as the transaction worker and reversal publish it.
pub fn event(tx: Uuid, from: UserId, to: UserId, amount: &str, status: &str, reason: Option<&str>) -> Value {
    json!({
        "transactionId": tx,
        "fromUserId": from,
        "toUserId": to,
        "amount": amount,
        "currency": "USD",
        "status": status,
        "reason": reason,
        "occurredAt": payflow_common::telemetry::now_rfc3339(),
    })
}
