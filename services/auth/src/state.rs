//! What every handler shares.

use std::sync::Arc;

use payflow_common::jwt::{JwtSigner, JwtVerifier};
use payflow_common::metrics::Metrics;
use payflow_common::redis_conn::Redis;
use payflow_common::revocation::RevocationList;
use payflow_common::service_token::ServiceToken;
use sqlx::PgPool;

use crate::config::Config;
use crate::metrics::AuthMetrics;
use crate::password::PasswordHasher;
use crate::wallet_client::WalletClient;

/// The name `/health` reports and every metric carries.
pub const SERVICE_NAME: &str = "auth-service";

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub redis: Redis,
    pub signer: JwtSigner,
    /// Trusts exactly `signer`'s key, no network.
    pub verifier: JwtVerifier,
    pub revocations: RevocationList,
    /// Holds the HTTP client for wallet.
    pub(crate) wallet: WalletClient,
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub(crate) auth_metrics: AuthMetrics,
    pub(crate) hasher: PasswordHasher,
}

impl AppState {
    /// Connects to Postgres and Redis and prepares the keys. Does not migrate.
    pub async fn new(cfg: &Config) -> anyhow::Result<Self> {
        cfg.validate()?;
        let service_token = ServiceToken::new(&cfg.service_token.service_token)?;
        let signer = match &cfg.jwt_private_key {
            Some(pem) => JwtSigner::from_pem(pem)?,
            None => {
                tracing::warn!(
                    "PAYFLOW_JWT_PRIVATE_KEY is not set: signing with a random key; \
                     every token dies with this process and other replicas reject it"
                );
                JwtSigner::generate()?
            }
        };
        let verifier = signer.verifier(&cfg.claims);
        let pool = payflow_common::db::connect(&cfg.db, "auth").await?;
        let redis = payflow_common::redis_conn::connect(&cfg.redis).await?;
        let metrics = Metrics::new(SERVICE_NAME);
        let auth_metrics = AuthMetrics::register(&metrics)?;
        let hasher = PasswordHasher::new(cfg.hash_concurrency).await?;
        let wallet = WalletClient::new(WalletClient::http_client()?, &cfg.wallet_url, service_token);
        tracing::info!(kid = signer.kid(), "auth signing key ready");
        Ok(Self {
            pool,
            revocations: RevocationList::new(redis.clone()),
            redis,
            signer,
            verifier,
            wallet,
            config: Arc::new(cfg.clone()),
            metrics,
            auth_metrics,
            hasher,
        })
    }
}
