//! `payflow reverse-pending`: drives transactions stuck in PENDING or
//! PROCESSING to a final state. For each, wallet decides: a void that
//! succeeds (or records a never-seen id) means no money moved → FAILED; a
//! transfer already posted → COMPLETED. Rows are claimed with
//! `FOR UPDATE SKIP LOCKED`, so two reversals, or a reversal and the
//! workers, never handle one transaction at the same time.

use serde::Serialize;
use uuid::Uuid;

use crate::config::ReversalConfig;
use crate::store;
use crate::wallet_client::{Resolution, WalletClient};

#[derive(Debug, Default, Serialize)]
pub struct ReversalReport {
    /// Voided at wallet and marked FAILED.
    pub reversed: u64,
    /// Found posted at wallet and marked COMPLETED.
    pub completed: u64,
    /// Wallet could not be asked; left for the next run.
    pub errors: u64,
}

pub async fn run(cfg: &ReversalConfig) -> anyhow::Result<ReversalReport> {
    let pool = payflow_common::db::connect(&cfg.db, "reversal").await?;
    let wallet = WalletClient::new(&cfg.wallet)?;
    let topology = payflow_messaging::Topology::new(&cfg.amqp_prefix, 1);
    let report = reverse(&pool, &wallet, &topology, cfg.older_than, cfg.batch, None).await?;
    pool.close().await;
    Ok(report)
}

/// `senders`, when given, limits the pass to transactions of those users.
pub async fn reverse(
    pool: &sqlx::PgPool,
    wallet: &WalletClient,
    topology: &payflow_messaging::Topology,
    older_than: std::time::Duration,
    batch: i64,
    senders: Option<&[Uuid]>,
) -> anyhow::Result<ReversalReport> {
    let mut report = ReversalReport::default();
    let mut skipped: Vec<Uuid> = Vec::new();
    let reason = format!("Timed out: not settled within {} s, reversed", older_than.as_secs());
    loop {
        let mut tx = payflow_common::db::begin(pool).await?;
        let rows: Vec<(Uuid, Option<String>)> = sqlx::query_as(
            "SELECT id, correlation_id FROM txn.transactions \
             WHERE status IN ('PENDING', 'PROCESSING') AND created_at < now() - make_interval(secs => $1) \
             AND NOT (id = ANY($3)) AND ($4::uuid[] IS NULL OR from_user_id = ANY($4)) \
             ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(older_than.as_secs_f64())
        .bind(batch)
        .bind(&skipped)
        .bind(senders)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            break;
        }
        let mut completed = Vec::new();
        let mut failed = Vec::new();
        for (id, corr) in &rows {
            let corr = corr.clone().unwrap_or_else(|| id.to_string());
            match wallet.void(*id, &corr).await {
                Ok(Resolution::Voided | Resolution::NotFound) => failed.push((*id, reason.clone())),
                Ok(Resolution::Posted) => completed.push(*id),
                Err(e) => {
                    tracing::warn!(transaction_id = %id, error = %e, "reversal could not reach wallet");
                    report.errors += 1;
                    skipped.push(*id);
                }
            }
        }
        crate::fault::point("reversal-after-void");
        let changed = store::finish_in(&mut tx, topology, &completed, &failed).await?;
        tx.commit().await?;
        for t in changed {
            match t.status {
                crate::model::Status::Completed => report.completed += 1,
                _ => report.reversed += 1,
            }
        }
        if (rows.len() as i64) < batch {
            break;
        }
    }
    sqlx::query(
        "UPDATE txn.reversal_stats SET runs = runs + 1, failed = failed + $1, completed = completed + $2, \
         last_run_at = now()",
    )
    .bind(report.reversed as i64)
    .bind(report.completed as i64)
    .execute(pool)
    .await?;
    tracing::info!(?report, "reversal finished");
    Ok(report)
}
