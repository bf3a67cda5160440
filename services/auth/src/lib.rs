//! The auth service: registration, login with throttling, access tokens
//! (EdDSA JWTs, public keys at `/.well-known/jwks.json`), rotating refresh
//! tokens with reuse detection, logout, and the caller's profile.
//!
//! Owns the Postgres schema `auth`. Creates each user's wallet at wallet
//! (`POST /internal/wallets`) before answering a registration.

use payflow_common::server;
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

mod config;
mod domain;
mod extract;
mod janitor;
mod metrics;
mod password;
mod routes;
mod state;
mod store;
mod tokens;
mod wallet_client;

pub use config::Config;
pub use extract::AuthUser;
pub use routes::router;
pub use state::{AppState, SERVICE_NAME};

/// The Postgres schema auth owns.
pub const SCHEMA: &str = "auth";

/// The migrations of [`SCHEMA`] (services/auth/migrations).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Creates or upgrades the `auth` schema. Safe to run from many processes at once.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    payflow_common::db::migrate_schema(pool, SCHEMA, &MIGRATOR).await
}

/// Connects, binds `cfg.listen` on `cfg.port` and serves until `cancel` fires
/// (or SIGTERM/Ctrl-C), then drains in-flight requests. Does not migrate.
pub async fn run(cfg: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let state = AppState::new(&cfg).await?;
    let listener = server::bind(cfg.listen.addr(cfg.port)).await?;
    let janitor_cancel = cancel.child_token();
    let janitor = tokio::spawn(janitor::run(state.clone(), janitor_cancel.clone()));
    let served = server::serve(listener, router(state), cancel).await;
    janitor_cancel.cancel();
    let _ = janitor.await;
    served
}
