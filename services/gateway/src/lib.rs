//! The API gateway: the only public entry. Verifies access tokens, applies
//! rate limits, CORS and body limits, and forwards to the services with a
//! time limit and a circuit breaker per upstream.

pub mod breaker;
pub mod client_ip;
pub mod config;
pub mod cors;
pub mod idempotency_cache;
mod legacy_paths;
mod payments;
pub mod proxy;
pub mod rate_limit;
mod routes;
pub mod state;
mod status;

use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use routes::router;
pub use state::AppState;

/// The name `/health` reports (the original clients read it).
pub const SERVICE_NAME: &str = "api-gateway";

/// Runs the gateway until shutdown.
pub async fn run(cfg: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let state = AppState::new(&cfg).await?;
    let listener = payflow_common::server::bind(cfg.listen.addr(cfg.port)).await?;
    payflow_common::server::serve(listener, router(state), cancel).await
}
