//! Starts auth, wallet and the gateway in this process on random ports.
//! Transaction and notification are not run: their upstream is a closed port,
//! so a request the gateway forwards there answers 503. Auth reaches Redis
//! through a proxy the test can cut; the gateway reaches it directly. The
//! gateway listens on `::`, so IPv4 clients reach it as `::ffff:127.0.0.1`,
//! as behind an IPv6-capable bind in Kubernetes.

use std::future::Future;
use std::time::{Duration, Instant};

use payflow_common::jwt::JwtSigner;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::Proxy;

/// Longest any condition is waited for.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn database_url() -> String {
    std::env::var("PAYFLOW_TEST_DATABASE_URL")
        .expect("PAYFLOW_TEST_DATABASE_URL is not set: eval \"$(bash scripts/stack.sh env test)\"")
}

pub fn redis_url() -> String {
    std::env::var("PAYFLOW_TEST_REDIS_URL")
        .expect("PAYFLOW_TEST_REDIS_URL is not set: eval \"$(bash scripts/stack.sh env test)\"")
}

fn component<T: clap::Args>(flags: &[(&str, String)]) -> T {
    payflow_common::config::parse_component(flags.iter().map(|(k, v)| format!("--{k}={v}")))
        .expect("valid test configuration")
}

/// Knobs a test may turn.
#[derive(Clone, Default)]
pub struct Options {
    /// Per-address limit (0: off, as tests share 127.0.0.1).
    pub ip_per_minute: u32,
    pub trusted_proxies: String,
    /// Where the gateway's transaction upstream is (default: a closed port).
    pub transaction_url: Option<String>,
    pub upstream_timeout_ms: Option<u64>,
    pub breaker_failures: Option<u32>,
    pub breaker_open_secs: Option<u64>,
}

pub struct Stack {
    pub gateway: String,
    pub auth: String,
    pub http: reqwest::Client,
    /// Between auth and Redis.
    pub auth_redis: Proxy,
    cancel: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn listener(host: &str) -> (TcpListener, u16) {
    let l = TcpListener::bind(format!("{host}:0")).await.expect("bind a free port");
    let port = l.local_addr().expect("local addr").port();
    (l, port)
}

impl Stack {
    pub async fn start(o: Options) -> Self {
        if std::env::var_os("PAYFLOW_LOG").is_none() {
            std::env::set_var("PAYFLOW_LOG", "warn,sqlx=error");
        }
        payflow_common::telemetry::init();
        let db = database_url();
        let pool = sqlx::PgPool::connect(&db).await.expect("connect to the test database");
        payflow_auth::migrate(&pool).await.expect("auth migrations");
        payflow_wallet::migrate(&pool).await.expect("wallet migrations");
        pool.close().await;

        let (auth_l, auth_port) = listener("127.0.0.1").await;
        let (wallet_l, wallet_port) = listener("127.0.0.1").await;
        let (gateway_l, gateway_port) = listener("[::]").await;
        let auth = format!("http://127.0.0.1:{auth_port}");
        let auth_url = auth.clone();
        let wallet = format!("http://127.0.0.1:{wallet_port}");
        let jwks = format!("{auth}/.well-known/jwks.json");
        let redis = reqwest::Url::parse(&redis_url()).expect("redis url");
        let auth_redis =
            Proxy::start(format!("{}:{}", redis.host_str().expect("host"), redis.port().unwrap_or(6379))).await;
        let service_token = format!("test-{}", uuid::Uuid::new_v4());
        let nowhere = "http://127.0.0.1:9".to_string();

        let auth_cfg: payflow_auth::Config = component(&[
            ("database-url", db.clone()),
            ("redis-url", format!("redis://{}", auth_redis.addr)),
            ("service-token", service_token.clone()),
            ("wallet-url", wallet.clone()),
            ("jwt-private-key", JwtSigner::generate_pem().expect("key")),
            ("db-max-connections", "5".into()),
        ]);
        let wallet_cfg: payflow_wallet::Config = component(&[
            ("database-url", db.clone()),
            ("service-token", service_token),
            ("jwks-url", jwks.clone()),
            ("db-max-connections", "5".into()),
        ]);
        let mut gateway_flags = vec![
            ("redis-url", redis_url()),
            ("jwks-url", jwks),
            ("auth-url", auth),
            ("wallet-url", wallet),
            ("transaction-url", o.transaction_url.clone().unwrap_or_else(|| nowhere.clone())),
            ("notification-url", nowhere),
            ("rate-limit-ip-per-minute", o.ip_per_minute.to_string()),
            ("rate-limit-user-per-minute", "0".into()),
            ("rate-limit-auth-per-minute", "0".into()),
        ];
        if !o.trusted_proxies.is_empty() {
            gateway_flags.push(("trusted-proxies", o.trusted_proxies.clone()));
        }
        if let Some(ms) = o.upstream_timeout_ms {
            gateway_flags.push(("upstream-timeout-ms", ms.to_string()));
        }
        if let Some(n) = o.breaker_failures {
            gateway_flags.push(("breaker-failures", n.to_string()));
        }
        if let Some(secs) = o.breaker_open_secs {
            gateway_flags.push(("breaker-open-secs", secs.to_string()));
        }
        let gateway_cfg: payflow_gateway::Config = component(&gateway_flags);

        let cancel = CancellationToken::new();
        let auth_state = payflow_auth::AppState::new(&auth_cfg).await.expect("auth state");
        // The revocation sync (and the janitor), as `payflow auth` runs them.
        tokio::spawn(payflow_auth::background(auth_state.clone(), cancel.clone()));
        let auth_router = payflow_auth::router(auth_state);
        let wallet_router =
            payflow_wallet::router(payflow_wallet::AppState::new(&wallet_cfg).await.expect("wallet state"));
        let gateway_router =
            payflow_gateway::router(payflow_gateway::AppState::new(&gateway_cfg).await.expect("gateway state"));
        for (l, r) in [(auth_l, auth_router), (wallet_l, wallet_router), (gateway_l, gateway_router)] {
            let c = cancel.clone();
            tokio::spawn(async move { payflow_common::server::serve(l, r, c).await });
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        let gateway = format!("http://127.0.0.1:{gateway_port}");
        let stack = Stack { gateway, auth: auth_url, http, auth_redis, cancel };
        eventually("the gateway to be ready", || async {
            let res = stack.http.get(stack.url("/readyz")).send().await.ok()?;
            (res.status() == 200).then_some(())
        })
        .await;
        stack
    }

    /// Cuts auth off Redis and waits until auth sees it (its readiness fails).
    pub async fn cut_auth_from_redis(&self) {
        self.auth_redis.cut();
        eventually("auth to notice Redis is gone", || async {
            let res = self.http.get(format!("{}/readyz", self.auth)).send().await.ok()?;
            (res.status() != 200).then_some(())
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.gateway, path)
    }

    /// Registers a fresh user through the gateway.
    pub async fn register(&self) -> User {
        let email = format!("gw-test-{}@example.com", uuid::Uuid::new_v4());
        let (status, body) = self
            .post("/api/auth/register", None, json!({"email": email, "password": "Sup3r-secret", "name": "Test User"}))
            .await;
        assert_eq!(status, 201, "register: {body}");
        User {
            id: body["userId"].as_str().expect("userId").to_string(),
            access: body["accessToken"].as_str().expect("accessToken").to_string(),
            refresh: body["refreshToken"].as_str().expect("refreshToken").to_string(),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let res = self.http.get(self.url(path)).bearer_auth(token).send().await.expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

pub struct User {
    pub id: String,
    pub access: String,
    pub refresh: String,
}

/// Polls `check` every 50 ms until it yields a value, failing after [`DEADLINE`].
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A direct connection to the test Redis, to look at (and lose) keys.
pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url()).expect("redis url").get_multiplexed_async_connection().await.expect("redis")
}
