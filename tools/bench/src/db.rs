//! What Postgres (`txn.transactions`) says about a level's transactions.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await?)
}

/// The database's clock, so window bounds compare with `completed_at` exactly.
pub async fn clock(pool: &PgPool) -> anyhow::Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(pool).await?)
}

/// PENDING + PROCESSING transactions in the whole database.
pub async fn open_total(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM txn.transactions WHERE status IN ('PENDING', 'PROCESSING')")
        .fetch_one(pool)
        .await?)
}

/// PENDING + PROCESSING among `ids`.
pub async fn open_among(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM txn.transactions WHERE id = ANY($1) AND status IN ('PENDING', 'PROCESSING')",
    )
    .bind(ids)
    .fetch_one(pool)
    .await?)
}

/// Outcome of one level's accepted transactions, read after the drain.
#[derive(Debug, Default, Clone)]
pub struct Settlement {
    /// COMPLETED with `completed_at` inside the load window.
    pub completed_in_window: i64,
    /// COMPLETED by the time of the query (window + drain).
    pub completed: i64,
    pub failed: i64,
    pub open: i64,
    /// Rows found (an accepted id without a row would be a lost transaction).
    pub found: i64,
    /// `completed_at - created_at` of the COMPLETED ones, seconds.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

pub async fn settlement(pool: &PgPool, ids: &[Uuid], window_end: DateTime<Utc>) -> anyhow::Result<Settlement> {
    type Row = (i64, i64, i64, i64, i64, Option<f64>, Option<f64>);
    let r: Row = sqlx::query_as(
        "WITH t AS (SELECT status, completed_at, \
                EXTRACT(EPOCH FROM completed_at - created_at)::float8 AS secs \
            FROM txn.transactions WHERE id = ANY($1)) \
         SELECT count(*) FILTER (WHERE status = 'COMPLETED' AND completed_at <= $2), \
                count(*) FILTER (WHERE status = 'COMPLETED'), \
                count(*) FILTER (WHERE status = 'FAILED'), \
                count(*) FILTER (WHERE status IN ('PENDING', 'PROCESSING')), \
                count(*), \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY secs) FILTER (WHERE status = 'COMPLETED'), \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY secs) FILTER (WHERE status = 'COMPLETED') \
         FROM t",
    )
    .bind(ids)
    .bind(window_end)
    .fetch_one(pool)
    .await?;
    Ok(Settlement { completed_in_window: r.0, completed: r.1, failed: r.2, open: r.3, found: r.4, p50: r.5, p99: r.6 })
}

/// Cumulative database counters: commits (read-only ones too), WAL flushes, WAL bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub commits: i64,
    pub wal_syncs: i64,
    pub wal_bytes: f64,
}

pub async fn counters(pool: &PgPool) -> anyhow::Result<Counters> {
    let (commits, wal_syncs, wal_bytes): (i64, i64, f64) = sqlx::query_as(
        "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()), \
                wal_sync, wal_bytes::float8 FROM pg_stat_wal",
    )
    .fetch_one(pool)
    .await?;
    Ok(Counters { commits, wal_syncs, wal_bytes })
}
