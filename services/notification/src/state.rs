use axum::extract::FromRef;
use payflow_common::jwt::JwtVerifier;
use payflow_common::metrics::Metrics;
use sqlx::PgPool;

use crate::channels::retry::RetryPolicy;
use crate::channels::Channels;
use crate::config::Config;
use crate::metrics::Counters;
use crate::store::Queue;

/// Shared by the HTTP handlers and the consumer. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub verifier: JwtVerifier,
    /// The service's registry (`/metrics`), holding `counters` too.
    pub metrics: Metrics,
    pub counters: Counters,
    pub channels: Channels,
    /// When failed deliveries are tried again.
    pub retry: RetryPolicy,
    /// The AMQP prefix: this PayFlow's share of the delivery queue.
    pub prefix: std::sync::Arc<str>,
}

impl AppState {
    pub async fn new(cfg: &Config) -> anyhow::Result<Self> {
        let pool = payflow_common::db::connect(&cfg.db, "notification").await?;
        let verifier = cfg.jwt.verifier();
        Self::with_parts(cfg, pool, verifier)
    }

    /// From an existing pool and verifier (tests, `payflow dev`). Refuses a
    /// channel configuration that cannot work (e.g. a webhook without a
    /// secret) now rather than at the first event.
    pub fn with_parts(cfg: &Config, pool: PgPool, verifier: JwtVerifier) -> anyhow::Result<Self> {
        let metrics = Metrics::new(crate::SERVICE_NAME);
        let counters = Counters::register(&metrics)?;
        let channels = Channels::from_config(cfg, &pool)?;
        tracing::info!(channels = ?channels.names(), "notification channels");
        let (retry, prefix) = (cfg.retry_policy(), cfg.amqp.topology().prefix().into());
        Ok(Self { pool, verifier, metrics, counters, channels, retry, prefix })
    }

    /// The delivery queue of this PayFlow's queued channels.
    pub fn queue(&self) -> Queue<'_> {
        Queue { channels: self.channels.queued(), prefix: &self.prefix, lease: crate::channels::retry::LEASE }
    }
}

impl FromRef<AppState> for JwtVerifier {
    fn from_ref(s: &AppState) -> Self {
        s.verifier.clone()
    }
}
