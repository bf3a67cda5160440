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
mod revocation_sync;
mod routes;
mod state;
mod store;
#[cfg(test)]
mod test_support;
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
    let background_cancel = cancel.child_token();
    let background = tokio::spawn(background(state.clone(), background_cancel.clone()));
    let served = server::serve(listener, router(state), cancel).await;
    background_cancel.cancel();
    let _ = background.await;
    served
}

/// What an auth replica does besides answering requests, until `cancel`:
/// cleanup of stale rows, and keeping the Redis revocation list complete
/// (see `revocation_sync`). [`run`] runs it; tests that serve [`router`]
/// themselves start it with this.
pub async fn background(state: AppState, cancel: CancellationToken) {
    tokio::join!(janitor::run(state.clone(), cancel.clone()), revocation_sync::run(state, cancel));
}
