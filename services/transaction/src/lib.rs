//! Sending money: the transaction API with idempotency, the outbox relay, the
//! settling worker (`payflow worker`) and the reversal (`payflow reverse-pending`).

pub mod batches;
pub mod config;
pub mod fault;
pub mod idempotency;
pub mod model;
pub mod relay;
pub mod reversal;
mod routes;
pub mod state;
pub mod store;
pub mod wallet_client;
pub mod worker;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ReversalConfig, WorkerConfig};
pub use routes::router;
pub use state::AppState;

pub const SCHEMA: &str = "txn";
pub const SERVICE_NAME: &str = "transaction-service";
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool on the test database (the unit tests that need Postgres).
#[cfg(test)]
pub(crate) async fn test_pool(max_connections: u32) -> PgPool {
    let url = std::env::var("PAYFLOW_TEST_DATABASE_URL")
        .expect("PAYFLOW_TEST_DATABASE_URL is not set: run the tests with scripts/test.sh");
    sqlx::postgres::PgPoolOptions::new().max_connections(max_connections).connect(&url).await.expect("connect")
}

/// One connection on the test database, with this schema migrated.
#[cfg(test)]
pub(crate) async fn migrated_test_pool() -> PgPool {
    let pool = test_pool(1).await;
    migrate(&pool).await.expect("migrate");
    pool
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    payflow_common::db::migrate_schema(pool, SCHEMA, &MIGRATOR).await
}

/// Starts the relay and housekeeping tasks of a transaction service.
pub fn spawn_background(state: &AppState, cfg: &Config, cancel: &CancellationToken) -> anyhow::Result<()> {
    let metrics = relay::RelayMetrics::new(&state.metrics)?;
    if cfg.relay {
        tokio::spawn(relay::run(
            state.pool.clone(),
            cfg.amqp.clone(),
            metrics.clone(),
            state.relay_wake.clone(),
            cancel.clone(),
        ));
    }
    tokio::spawn(relay::housekeeping(state.pool.clone(), metrics, cancel.clone()));
    Ok(())
}

/// Runs the transaction API (and, unless disabled, the outbox relay) until shutdown.
pub async fn run(cfg: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let state = AppState::new(&cfg).await?;
    spawn_background(&state, &cfg, &cancel)?;
    let listener = payflow_common::server::bind(cfg.listen.addr(cfg.port)).await?;
    payflow_common::server::serve(listener, router(state), cancel).await
}
