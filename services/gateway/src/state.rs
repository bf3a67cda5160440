use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use payflow_common::jwt::JwtVerifier;
use payflow_common::metrics::Metrics;
use payflow_common::redis_conn::Redis;
use payflow_common::revocation::RevocationList;
use prometheus::{IntCounterVec, Opts};

use crate::breaker::CircuitBreaker;
use crate::client_ip::TrustedProxies;
use crate::config::Config;
use crate::cors::CorsOrigins;
use crate::rate_limit::{Limit, RateLimiter};

/// One service behind the gateway.
#[derive(Clone)]
pub struct Upstream {
    pub name: &'static str,
    pub base_url: String,
    pub breaker: Arc<CircuitBreaker>,
}

#[derive(Clone)]
pub struct Upstreams {
    pub auth: Upstream,
    pub wallet: Upstream,
    pub transaction: Upstream,
    pub notification: Upstream,
}

impl Upstreams {
    /// In the order and with the names `GET /api/metrics` reports.
    pub fn named(&self) -> [(&'static str, &Upstream); 4] {
        [
            ("authService", &self.auth),
            ("walletService", &self.wallet),
            ("transactionService", &self.transaction),
            ("notificationService", &self.notification),
        ]
    }
}

#[derive(Clone)]
pub struct Limits {
    pub ip: Limit,
    pub user: Limit,
    pub auth: Limit,
}

#[derive(Clone)]
pub struct GatewayMetrics {
    pub rate_limited: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub idempotent_replays: prometheus::IntCounter,
}

/// The gateway's shared state. Cloned for every request (and again by each
/// middleware that takes it), so it is one `Arc`: cloning the fields one by one
/// was about 5% of the gateway's CPU at 1,000 requests/s.
#[derive(Clone)]
pub struct AppState(Arc<Parts>);

impl std::ops::Deref for AppState {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

pub struct Parts {
    pub redis: Redis,
    pub verifier: JwtVerifier,
    pub revocations: RevocationList,
    pub limiter: RateLimiter,
    pub limits: Limits,
    pub upstreams: Upstreams,
    pub http: reqwest::Client,
    pub trusted_proxies: TrustedProxies,
    pub cors: CorsOrigins,
    pub metrics: Metrics,
    pub gateway_metrics: GatewayMetrics,
}

impl AppState {
    pub async fn new(cfg: &Config) -> anyhow::Result<Self> {
        let redis = payflow_common::redis_conn::connect(&cfg.redis).await?;
        let verifier = cfg.jwt.verifier();
        Self::with_parts(cfg, redis, verifier)
    }

    pub fn with_parts(cfg: &Config, redis: Redis, verifier: JwtVerifier) -> anyhow::Result<Self> {
        let u = &cfg.upstreams;
        let upstream = |name, base: &str| Upstream {
            name,
            base_url: base.trim_end_matches('/').to_string(),
            breaker: Arc::new(CircuitBreaker::new(u.breaker_failures, Duration::from_secs(u.breaker_open_secs))),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(u.timeout_ms))
            .connect_timeout(Duration::from_millis(u.timeout_ms.min(2_000)))
            .pool_max_idle_per_host(64)
            .build()?;
        let metrics = Metrics::new(crate::SERVICE_NAME);
        let gateway_metrics = GatewayMetrics {
            rate_limited: IntCounterVec::new(
                Opts::new("payflow_gateway_rate_limited_total", "Requests refused by a rate limit"),
                &["scope"],
            )?,
            upstream_requests: IntCounterVec::new(
                Opts::new("payflow_gateway_upstream_requests_total", "Upstream calls by outcome"),
                &["upstream", "outcome"],
            )?,
            idempotent_replays: prometheus::IntCounter::new(
                "payflow_gateway_idempotent_replays_total",
                "Answers replayed from the Redis idempotency fast path",
            )?,
        };
        metrics.register(Box::new(gateway_metrics.idempotent_replays.clone()));
        metrics.register(Box::new(gateway_metrics.rate_limited.clone()));
        metrics.register(Box::new(gateway_metrics.upstream_requests.clone()));
        Ok(Self(Arc::new(Parts {
            revocations: RevocationList::new(redis.clone()),
            limiter: RateLimiter::new(redis.clone()),
            redis,
            verifier,
            limits: Limits {
                ip: Limit { per_minute: cfg.limits.ip_per_minute },
                user: Limit { per_minute: cfg.limits.user_per_minute },
                auth: Limit { per_minute: cfg.limits.auth_per_minute },
            },
            upstreams: Upstreams {
                auth: upstream("auth", &u.auth_url),
                wallet: upstream("wallet", &u.wallet_url),
                transaction: upstream("transaction", &u.transaction_url),
                notification: upstream("notification", &u.notification_url),
            },
            http,
            trusted_proxies: TrustedProxies::parse(&cfg.trusted_proxies)?,
            cors: CorsOrigins::parse(&cfg.cors_origins)?,
            metrics,
            gateway_metrics,
        })))
    }
}

impl FromRef<AppState> for JwtVerifier {
    fn from_ref(s: &AppState) -> Self {
        s.verifier.clone()
    }
}
