//! Starts auth, wallet and gateway in this process on random ports, against
//! the real Postgres and Redis the test command started.

use std::time::{Duration, Instant};

use payflow_common::jwt::JwtSigner;
use payflow_common::shutdown::CancellationToken;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::proxy::Proxy;

pub fn database_url() -> String {
    std::env::var("PAYFLOW_TEST_DATABASE_URL")
        .expect("PAYFLOW_TEST_DATABASE_URL is not set: run the tests with scripts/test.sh")
}

pub fn amqp_url() -> String {
    std::env::var("PAYFLOW_TEST_AMQP_URL")
        .expect("PAYFLOW_TEST_AMQP_URL is not set: run the tests with scripts/test.sh")
}

pub fn redis_url() -> String {
    std::env::var("PAYFLOW_TEST_REDIS_URL")
        .expect("PAYFLOW_TEST_REDIS_URL is not set: run the tests with scripts/test.sh")
}

fn component<T: clap::Args>(flags: &[(&str, String)]) -> T {
    payflow_common::config::parse_component(flags.iter().map(|(k, v)| format!("--{k}={v}")))
        .expect("valid test configuration")
}

/// Knobs a test may turn.
#[derive(Clone)]
pub struct Options {
    pub ip_per_minute: u32,
    pub user_per_minute: u32,
    pub auth_per_minute: u32,
    pub trusted_proxies: String,
    pub login_max_failures: u32,
    /// Point the gateway's wallet upstream at a closed port.
    pub wallet_down: bool,
    /// Run an in-process worker.
    pub worker: bool,
    /// Run the outbox relay inside the in-process transaction service.
    pub relay: bool,
    pub pending_timeout_secs: u64,
    /// Reach RabbitMQ through this URL instead (a proxy the test controls).
    pub amqp_url: Option<String>,
    /// The gateway's upstream timeout, when a test needs it to give up early.
    pub upstream_timeout_ms: Option<u64>,
    /// Reach Redis through this URL instead (a proxy the test controls).
    pub redis_url: Option<String>,
    /// The transaction service reaches wallet through a proxy the test cuts
    /// (`Stack::txn_wallet_proxy`).
    pub txn_wallet_proxy: bool,
}

impl Default for Options {
    fn default() -> Self {
        // Limits off: tests share 127.0.0.1, and the limit tests use their own addresses.
        Self {
            ip_per_minute: 0,
            user_per_minute: 0,
            auth_per_minute: 0,
            trusted_proxies: String::new(),
            login_max_failures: 5,
            wallet_down: false,
            worker: true,
            relay: true,
            pending_timeout_secs: 60,
            amqp_url: None,
            upstream_timeout_ms: None,
            redis_url: None,
            txn_wallet_proxy: false,
        }
    }
}

pub struct Stack {
    pub gateway: String,
    pub transaction: String,
    /// This stack's own exchange and queue names.
    pub amqp_prefix: String,
    pub auth: String,
    pub wallet: String,
    pub service_token: String,
    /// Signs with auth's own key, to forge tokens with bad claims.
    pub signer: JwtSigner,
    pub pool: PgPool,
    pub http: reqwest::Client,
    cancel: CancellationToken,
    /// To start more workers (in-process or as processes).
    pub worker_cfg: payflow_transaction::WorkerConfig,
    /// The transaction service's configuration (for a relay in another process).
    pub txn_cfg: payflow_transaction::Config,
    pub reversal_wallet: payflow_transaction::config::WalletArgs,
    /// Between the transaction service and wallet, with `Options::txn_wallet_proxy`.
    pub txn_wallet_proxy: Option<Proxy>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
    let url = format!("http://{}", l.local_addr().expect("local addr"));
    (l, url)
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(o: Options) -> Self {
        if std::env::var_os("PAYFLOW_LOG").is_none() {
            // Quiet by default: shutdown of many stacks makes lapin chatty.
            std::env::set_var("PAYFLOW_LOG", "warn,lapin=off,pinky_swear=off,sqlx=error");
        }
        payflow_common::telemetry::init();
        let db = database_url();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&db)
            .await
            .expect("connect to the test database");
        payflow_auth::migrate(&pool).await.expect("auth migrations");
        payflow_wallet::migrate(&pool).await.expect("wallet migrations");
        payflow_transaction::migrate(&pool).await.expect("transaction migrations");
        payflow_notification::migrate(&pool).await.expect("notification migrations");

        let (auth_l, auth) = listener().await;
        let (wallet_l, wallet) = listener().await;
        let wallet_for_reversal = wallet.clone();
        let (gateway_l, gateway) = listener().await;
        let (transaction_l, transaction) = listener().await;
        let (notification_l, notification) = listener().await;
        let amqp_prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let service_token = format!("test-{}", uuid::Uuid::new_v4());
        let token_for_reversal = service_token.clone();
        let pem = JwtSigner::generate_pem().expect("key");
        let signer = JwtSigner::from_pem(&pem).expect("key");
        let jwks = format!("{auth}/.well-known/jwks.json");
        let cancel = CancellationToken::new();

        let auth_cfg: payflow_auth::Config = component(&[
            ("database-url", db.clone()),
            ("redis-url", o.redis_url.clone().unwrap_or_else(redis_url)),
            ("service-token", service_token.clone()),
            ("wallet-url", wallet.clone()),
            ("jwt-private-key", pem),
            ("login-max-failures", o.login_max_failures.to_string()),
            ("db-max-connections", "30".into()),
        ]);
        let wallet_cfg: payflow_wallet::Config = component(&[
            ("database-url", db.clone()),
            ("service-token", service_token.clone()),
            ("jwks-url", jwks.clone()),
            ("db-max-connections", "30".into()),
        ]);
        let amqp = [("amqp-url", o.amqp_url.clone().unwrap_or_else(amqp_url)), ("amqp-prefix", amqp_prefix.clone())];
        let to_wallet = [("wallet-url", wallet.clone()), ("service-token", service_token.clone())];
        let mut txn_flags = vec![("database-url", db.clone()), ("jwks-url", jwks.clone())];
        txn_flags.extend(amqp.clone());
        let txn_wallet_proxy = match o.txn_wallet_proxy {
            true => Some(Proxy::start(wallet.trim_start_matches("http://").to_string()).await),
            false => None,
        };
        match &txn_wallet_proxy {
            Some(p) => txn_flags
                .extend([("wallet-url", format!("http://{}", p.addr)), ("service-token", service_token.clone())]),
            None => txn_flags.extend(to_wallet.clone()),
        }
        txn_flags.push(("pending-timeout-secs", o.pending_timeout_secs.to_string()));
        txn_flags.push(("relay", o.relay.to_string()));
        let txn_cfg: payflow_transaction::Config = component(&txn_flags);
        let mut worker_flags = vec![("database-url", db.clone()), ("worker-port", "0".into())];
        worker_flags.extend(amqp.clone());
        worker_flags.extend(to_wallet.clone());
        let worker_cfg: payflow_transaction::WorkerConfig = component(&worker_flags);
        let mut notify_flags = vec![("database-url", db.clone()), ("jwks-url", jwks.clone())];
        notify_flags.extend(amqp.clone());
        let notify_cfg: payflow_notification::Config = component(&notify_flags);
        let wallet_upstream = if o.wallet_down { "http://127.0.0.1:9".to_string() } else { wallet.clone() };
        let mut gateway_flags = vec![
            ("redis-url", o.redis_url.clone().unwrap_or_else(redis_url)),
            ("jwks-url", jwks),
            ("auth-url", auth.clone()),
            ("wallet-url", wallet_upstream),
            ("transaction-url", transaction.clone()),
            ("notification-url", notification.clone()),
            ("rate-limit-ip-per-minute", o.ip_per_minute.to_string()),
            ("rate-limit-user-per-minute", o.user_per_minute.to_string()),
            ("rate-limit-auth-per-minute", o.auth_per_minute.to_string()),
            // The upstream timeout stays at its default (10 s): a burst of argon2
            // hashes on a busy CI machine can keep auth longer than a few seconds.
            ("breaker-failures", "3".into()),
        ];
        if !o.trusted_proxies.is_empty() {
            gateway_flags.push(("trusted-proxies", o.trusted_proxies.clone()));
        }
        if let Some(ms) = o.upstream_timeout_ms {
            gateway_flags.push(("upstream-timeout-ms", ms.to_string()));
        }
        let gateway_cfg: payflow_gateway::Config = component(&gateway_flags);

        let auth_router = payflow_auth::router(payflow_auth::AppState::new(&auth_cfg).await.expect("auth state"));
        let wallet_router =
            payflow_wallet::router(payflow_wallet::AppState::new(&wallet_cfg).await.expect("wallet state"));
        let gateway_router =
            payflow_gateway::router(payflow_gateway::AppState::new(&gateway_cfg).await.expect("gateway state"));
        let txn_cfg_copy = txn_cfg.clone();
        let txn_state = payflow_transaction::AppState::new(&txn_cfg).await.expect("transaction state");
        payflow_transaction::spawn_background(&txn_state, &txn_cfg, &cancel).expect("relay");
        let txn_router = payflow_transaction::router(txn_state);
        let notify_state = payflow_notification::AppState::new(&notify_cfg).await.expect("notification state");
        let (consumer_state, consumer_cfg, consumer_cancel) =
            (notify_state.clone(), notify_cfg.clone(), cancel.clone());
        tokio::spawn(
            async move { payflow_notification::consume(consumer_state, &consumer_cfg, consumer_cancel).await },
        );
        let notify_router = payflow_notification::router(notify_state);
        if o.worker {
            tokio::spawn(payflow_transaction::worker::run(worker_cfg.clone(), cancel.clone()));
        }
        for (l, r) in [
            (auth_l, auth_router),
            (wallet_l, wallet_router),
            (gateway_l, gateway_router),
            (transaction_l, txn_router),
            (notification_l, notify_router),
        ] {
            let c = cancel.clone();
            tokio::spawn(async move { payflow_common::server::serve(l, r, c).await });
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        let stack = Stack {
            gateway,
            transaction,
            amqp_prefix,
            auth,
            wallet,
            service_token,
            signer,
            pool,
            http,
            cancel,
            worker_cfg,
            txn_cfg: txn_cfg_copy,
            reversal_wallet: payflow_transaction::config::WalletArgs {
                wallet_url: wallet_for_reversal,
                service_token: payflow_common::config::ServiceTokenArgs { service_token: token_for_reversal },
                pending_timeout_secs: o.pending_timeout_secs,
            },
            txn_wallet_proxy,
        };
        stack.wait_ready().await;
        stack
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for base in [&self.auth, &self.wallet, &self.gateway, &self.transaction] {
            loop {
                let ok = self.http.get(format!("{base}/readyz")).send().await.map(|r| r.status() == 200);
                if matches!(ok, Ok(true)) {
                    break;
                }
                assert!(Instant::now() < deadline, "{base} did not become ready");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.gateway, path)
    }

    /// Registers a fresh user through the gateway.
    pub async fn register(&self) -> User {
        let email = format!("user-{}@example.com", uuid::Uuid::new_v4());
        let password = "Sup3r-secret".to_string();
        let res = self
            .http
            .post(self.url("/api/auth/register"))
            .json(&json!({"email": email, "password": password, "name": "Test User"}))
            .send()
            .await
            .expect("register");
        assert_eq!(res.status(), 201, "register: {:?}", res.text().await);
        let body: Value = res.json().await.expect("json");
        User {
            id: body["userId"].as_str().expect("userId").to_string(),
            email,
            password,
            access: body["accessToken"].as_str().expect("accessToken").to_string(),
            refresh: body["refreshToken"].as_str().expect("refreshToken").to_string(),
        }
    }

    /// Calls a wallet internal endpoint with the service credential.
    pub async fn internal(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.wallet, path))
            .header("x-payflow-service-token", &self.service_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("internal call");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn assert_ledger_ok(&self) {
        let report = payflow_wallet::ledger_check(&self.pool).await.expect("ledger check runs");
        assert!(report.is_ok(), "ledger check failed: {:#?}", report.problems);
    }
}

pub struct User {
    pub id: String,
    pub email: String,
    pub password: String,
    pub access: String,
    pub refresh: String,
}

/// GET with a bearer token, returning status, headers and JSON body.
pub async fn get(stack: &Stack, path: &str, token: &str) -> (u16, Value) {
    let res = stack.http.get(stack.url(path)).bearer_auth(token).send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

pub async fn post(stack: &Stack, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = stack.http.post(stack.url(path)).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}
