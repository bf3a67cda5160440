//! The wallet service: one account per user, a double-entry ledger, and
//! two-phase transfers (pending → posted | voided) that resolve exactly once.

pub mod check;
pub mod config;
mod expiry;
pub mod ledger;
mod routes;
pub mod state;

use payflow_common::server;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use check::{ledger_check, LedgerReport};
pub use config::Config;
pub use routes::router;
pub use state::AppState;

pub const SCHEMA: &str = "wallet";
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    payflow_common::db::migrate_schema(pool, SCHEMA, &MIGRATOR).await
}

/// Runs the wallet service until shutdown.
pub async fn run(cfg: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let state = AppState::new(&cfg).await?;
    if cfg.hold_expiry_grace_secs > 0 {
        let grace = std::time::Duration::from_secs(cfg.hold_expiry_grace_secs);
        tokio::spawn(expiry::run(state.pool.clone(), expiry::Metrics::new(&state.metrics)?, grace, cancel.clone()));
    }
    let listener = server::bind(cfg.listen.addr(cfg.port)).await?;
    server::serve(listener, router(state), cancel).await
}

/// The name `/health` reports.
pub const SERVICE_NAME: &str = "wallet-service";
