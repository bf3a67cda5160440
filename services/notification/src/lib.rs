//! The notification service: consumes `transaction.completed` and
//! `transaction.failed` events, stores one notification per event and
//! recipient (duplicates ignored), delivers them through channel adapters
//! (log always; webhook and SMTP when configured) and serves the list and
//! mark-as-read API.

pub mod channels;
pub mod config;
pub mod consumer;
pub mod events;
pub mod metrics;
mod routes;
pub mod state;
pub mod store;

use payflow_common::server;
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use consumer::consume;
pub use routes::router;
pub use state::AppState;

pub const SCHEMA: &str = "notify";
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The name `/health` reports.
pub const SERVICE_NAME: &str = "notification-service";

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    payflow_common::db::migrate_schema(pool, SCHEMA, &MIGRATOR).await
}

/// Runs the HTTP API and the event consumer until shutdown. Either one
/// stopping stops the other, so the process never half-runs.
pub async fn run(cfg: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let state = AppState::new(&cfg).await?;
    let listener = server::bind(cfg.listen.addr(cfg.port)).await?;
    let http = async {
        let r = server::serve(listener, router(state.clone()), cancel.clone()).await;
        cancel.cancel();
        r
    };
    let events = async {
        let r = consume(state.clone(), &cfg, cancel.clone()).await;
        cancel.cancel();
        r
    };
    tokio::spawn(housekeeping(state.pool.clone(), cancel.clone()));
    tokio::spawn(channels::retry::run(state.clone(), cancel.clone()));
    let (http, events) = tokio::join!(http, events);
    http.and(events)
}

/// Hourly retention of the processed-message guard rows.
async fn housekeeping(pool: PgPool, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        match store::purge_processed(&pool, store::PROCESSED_RETENTION_DAYS).await {
            Ok(n) => tracing::debug!(deleted = n, "processed-message retention pass"),
            Err(e) => tracing::warn!(error = %e, "processed-message retention failed"),
        }
    }
}
