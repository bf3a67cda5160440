//! For tests that run auth against the real Postgres and Redis of the test
//! stack (`PAYFLOW_TEST_DATABASE_URL`, `PAYFLOW_TEST_REDIS_URL`), and, where
//! a wallet is needed, the real wallet service in this process. Tests use
//! fresh users, so they share the database.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{AppState, Config};

pub const SERVICE_TOKEN: &str = "auth-test-service-token-0123456789";

pub fn database_url() -> String {
    std::env::var("PAYFLOW_TEST_DATABASE_URL")
        .expect("PAYFLOW_TEST_DATABASE_URL is not set: eval \"$(bash scripts/stack.sh env test)\"")
}

pub fn redis_url() -> String {
    std::env::var("PAYFLOW_TEST_REDIS_URL")
        .expect("PAYFLOW_TEST_REDIS_URL is not set: eval \"$(bash scripts/stack.sh env test)\"")
}

/// Auth's configuration against the test stack, `flags` on top.
pub fn config(flags: &[(&str, String)]) -> Config {
    let mut all = vec![
        ("database-url", database_url()),
        ("redis-url", redis_url()),
        ("service-token", SERVICE_TOKEN.to_string()),
        ("db-max-connections", "5".to_string()),
    ];
    all.retain(|(k, _)| !flags.iter().any(|(f, _)| f == k));
    all.extend(flags.iter().cloned());
    payflow_common::config::parse_component(all.into_iter().map(|(k, v)| format!("--{k}={v}")))
        .expect("valid test configuration")
}

/// Migrates, then serves auth with `cfg` until `cancel`; returns its base URL.
pub async fn serve_auth(cfg: &Config, cancel: &CancellationToken) -> (AppState, String) {
    let pool = sqlx::PgPool::connect(&database_url()).await.expect("connect");
    crate::migrate(&pool).await.expect("auth migrations");
    let state = AppState::new(cfg).await.expect("auth state");
    let url = serve(crate::router(state.clone()), cancel).await;
    (state, url)
}

/// Serves the real wallet service until `cancel`; returns its base URL.
pub async fn serve_wallet(cancel: &CancellationToken) -> String {
    let pool = sqlx::PgPool::connect(&database_url()).await.expect("connect");
    payflow_wallet::migrate(&pool).await.expect("wallet migrations");
    let cfg: payflow_wallet::Config = payflow_common::config::parse_component(
        [
            ("database-url", database_url()),
            ("service-token", SERVICE_TOKEN.to_string()),
            ("db-max-connections", "5".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| format!("--{k}={v}")),
    )
    .expect("valid wallet configuration");
    let state = payflow_wallet::AppState::new(&cfg).await.expect("wallet state");
    serve(payflow_wallet::router(state), cancel).await
}

async fn serve(router: axum::Router, cancel: &CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let cancel = cancel.clone();
    tokio::spawn(async move { payflow_common::server::serve(listener, router, cancel).await });
    url
}

/// An address where connections are refused: nothing was ever sent there.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// Takes connections and the requests on them and never answers, like a
/// service stuck on its database. After `serve` connections it closes, so
/// later ones are refused.
pub async fn never_answers(serve: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..serve {
            match l.accept().await {
                Ok((conn, _)) => held.push(conn),
                Err(_) => return,
            }
        }
        drop(l);
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    addr
}

pub fn fresh_email() -> String {
    format!("auth-test-{}@example.com", uuid::Uuid::new_v4())
}

/// POSTs `body` as JSON; the status, `Retry-After` and JSON answer.
pub async fn post(url: &str, body: Value) -> (u16, Option<String>, Value) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("client");
    let res = http.post(url).json(&body).send().await.expect("an answer within 15 s");
    let status = res.status().as_u16();
    let retry_after = res.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    (status, retry_after, res.json().await.unwrap_or(Value::Null))
}

pub fn credentials(email: &str) -> Value {
    json!({"email": email, "password": "Sup3r-secret", "name": "Test User"})
}
