use axum::extract::FromRef;
use payflow_common::jwt::JwtVerifier;
use payflow_common::metrics::Metrics;
use payflow_common::money::{parse_amount, Currency};
use prometheus::{IntCounter, IntCounterVec, Opts};
use sqlx::PgPool;

use crate::batches::AcceptBatches;
use crate::config::Config;
use crate::wallet_client::WalletClient;

#[derive(Clone)]
pub struct TxnMetrics {
    pub accepted: IntCounter,
    pub rejected: IntCounterVec,
    pub replayed: IntCounter,
}

impl TxnMetrics {
    fn new(m: &Metrics) -> anyhow::Result<Self> {
        let accepted = IntCounter::new("payflow_transactions_accepted_total", "Transfers accepted (201 PENDING)")?;
        let rejected = IntCounterVec::new(
            Opts::new("payflow_transactions_rejected_total", "Transfers refused synchronously, by HTTP status"),
            &["status"],
        )?;
        let replayed =
            IntCounter::new("payflow_idempotent_replays_total", "Answers replayed for a repeated Idempotency-Key")?;
        m.register(Box::new(accepted.clone()));
        m.register(Box::new(rejected.clone()));
        m.register(Box::new(replayed.clone()));
        Ok(Self { accepted, rejected, replayed })
    }
}

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub verifier: JwtVerifier,
    pub wallet: WalletClient,
    /// The accept path's writes, batched across concurrent requests.
    pub batches: AcceptBatches,
    pub topology: payflow_messaging::Topology,
    /// Wakes this process's outbox relay after an accept.
    pub relay_wake: crate::relay::Wake,
    pub currency: Currency,
    pub max_amount: i64,
    pub metrics: Metrics,
    pub txn_metrics: TxnMetrics,
}

impl AppState {
    pub async fn new(cfg: &Config) -> anyhow::Result<Self> {
        let pool = payflow_common::db::connect(&cfg.db, "transaction").await?;
        let verifier = cfg.jwt.verifier();
        Self::with_parts(cfg, pool, verifier)
    }

    pub fn with_parts(cfg: &Config, pool: PgPool, verifier: JwtVerifier) -> anyhow::Result<Self> {
        let currency = Currency::parse(&cfg.default_currency).map_err(anyhow::Error::msg)?;
        let max_amount = parse_amount(&cfg.max_amount, currency, i64::MAX / 4)
            .map_err(|e| anyhow::anyhow!("PAYFLOW_MAX_AMOUNT {e}"))?;
        let metrics = Metrics::new(crate::SERVICE_NAME);
        let txn_metrics = TxnMetrics::new(&metrics)?;
        let wallet = WalletClient::new(&cfg.wallet)?;
        let topology = cfg.amqp.topology();
        Ok(Self {
            batches: AcceptBatches::spawn(pool.clone(), wallet.clone(), topology.clone()),
            pool,
            verifier,
            wallet,
            topology,
            relay_wake: Default::default(),
            currency,
            max_amount,
            metrics,
            txn_metrics,
        })
    }
}

impl FromRef<AppState> for JwtVerifier {
    fn from_ref(s: &AppState) -> Self {
        s.verifier.clone()
    }
}
