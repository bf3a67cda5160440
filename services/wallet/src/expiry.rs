//! Holds expire: a pending transfer nobody posted or voided well past its
//! timeout is voided, so money whose transaction was lost is not held for ever.
//! Every wallet replica runs this; each void is guarded, so they cannot clash.

use std::time::Duration;

use prometheus::IntCounter;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::ledger;

/// How often expired holds are looked for.
const EVERY: Duration = Duration::from_secs(10);

/// Most holds voided per look; the rest wait for the next.
const LIMIT: i64 = 500;

pub struct Metrics {
    expired: IntCounter,
}

impl Metrics {
    pub fn new(m: &payflow_common::metrics::Metrics) -> anyhow::Result<Self> {
        let expired = IntCounter::new(
            "payflow_wallet_holds_expired_total",
            "Holds voided by wallet because nobody resolved them within their timeout and grace",
        )?;
        m.register(Box::new(expired.clone()));
        Ok(Self { expired })
    }
}

pub async fn run(pool: PgPool, metrics: Metrics, grace: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = cancel.cancelled() => return,
        }
        match ledger::void_expired(&pool, grace, LIMIT).await {
            Ok(ids) => {
                for id in &ids {
                    // The reversal resolves holds long before this: one here means a
                    // transaction was lost upstream, worth a look.
                    tracing::warn!(transfer_id = %id, "hold expired unresolved: voided, money returned to the sender");
                }
                metrics.expired.inc_by(ids.len() as u64);
            }
            Err(e) => tracing::warn!(error = %e, "could not look for expired holds"),
        }
    }
}
