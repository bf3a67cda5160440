//! Shared plumbing for every PayFlow service.
//!
//! Each service crate builds its own router from its state and wraps it with
//! [`server::with_common_layers`], so all services answer the same way: JSON
//! errors, correlation ids, Prometheus metrics and the health endpoints.

pub mod batch;
pub mod bearer;
pub mod config;
pub mod correlation;
pub mod db;
pub mod error;
pub mod extract;
pub mod health;
pub mod idempotency_key;
pub mod ids;
pub mod jwt;
pub mod metrics;
pub mod money;
pub mod redis_conn;
pub mod revocation;
pub mod server;
pub mod service_token;
pub mod shutdown;
pub mod telemetry;

/// The version every service reports in `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
