use axum::extract::FromRef;
use payflow_common::jwt::JwtVerifier;
use payflow_common::metrics::Metrics;
use payflow_common::money::{parse_non_negative, Currency};
use payflow_common::service_token::ServiceToken;
use sqlx::PgPool;

use crate::config::Config;

/// Largest sign-up credit accepted from configuration (1e12 minor units).
const MAX_SIGNUP_CREDIT_MINOR: i64 = 1_000_000_000_000;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub verifier: JwtVerifier,
    pub service_token: ServiceToken,
    pub currency: Currency,
    /// Sign-up credit in minor units of `currency`.
    pub signup_credit: i64,
    pub metrics: Metrics,
}

impl AppState {
    pub async fn new(cfg: &Config) -> anyhow::Result<Self> {
        let pool = payflow_common::db::connect(&cfg.db, "wallet").await?;
        let verifier = cfg.jwt.verifier();
        Self::with_parts(cfg, pool, verifier)
    }

    /// From an existing pool and verifier (tests, `payflow dev`).
    pub fn with_parts(cfg: &Config, pool: PgPool, verifier: JwtVerifier) -> anyhow::Result<Self> {
        let currency = Currency::parse(&cfg.default_currency).map_err(anyhow::Error::msg)?;
        let signup_credit = parse_non_negative(&cfg.signup_credit, currency, MAX_SIGNUP_CREDIT_MINOR)
            .map_err(|e| anyhow::anyhow!("PAYFLOW_SIGNUP_CREDIT {e}"))?;
        Ok(Self {
            pool,
            verifier,
            service_token: ServiceToken::new(&cfg.service_token.service_token)?,
            currency,
            signup_credit,
            metrics: payflow_common::metrics::Metrics::new(crate::SERVICE_NAME),
        })
    }
}

impl FromRef<AppState> for JwtVerifier {
    fn from_ref(s: &AppState) -> Self {
        s.verifier.clone()
    }
}

impl FromRef<AppState> for ServiceToken {
    fn from_ref(s: &AppState) -> Self {
        s.service_token.clone()
    }
}
