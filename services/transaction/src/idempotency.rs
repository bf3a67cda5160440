//! Idempotency-Key, with Postgres as the source of truth: one row per
//! (user, key), bound to a fingerprint of the request. (The gateway keeps a
//! Redis copy of finished answers as a fast path; losing it changes nothing.)

use std::convert::Infallible;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

/// After this long without a sign of life from its request, an unfinished
/// record is presumed abandoned by a crash.
const STALE_SECS: f64 = 10.0;

/// How often a request still at work says so ([`keep_alive`]): well inside
/// `STALE_SECS`, so a slow request is never taken over while it runs.
const HEARTBEAT: Duration = Duration::from_secs(3);

/// How long after its request ended a failed attempt may still hand its record
/// over: the last heartbeat came at most `HEARTBEAT` before the end, so the
/// record cannot have gone stale and been taken over by a retry before then.
const HAND_OVER_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum Begin {
    /// First use of the key: go ahead.
    Fresh,
    /// Finished earlier: answer exactly this again.
    Replay { status: u16, body: String },
    /// Same key, different request.
    Mismatch,
    /// The first request is still being handled.
    InFlight,
    /// Abandoned after its transaction was recorded, and now taken over:
    /// finish that transaction's accept (or answer it as it is now).
    Resume { transaction_id: Uuid },
}

/// What binds a key to its request: the parsed request, not its bytes, so
/// `50` and `"50.00"` are the same request.
pub fn fingerprint(to: Uuid, amount: i64, currency: &str, description: Option<&str>) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(format!("v1|{to}|{amount}|{currency}|{}", description.unwrap_or("\u{0}")));
    h.finalize().to_vec()
}

pub async fn begin(pool: &PgPool, user: Uuid, key: &str, fp: &[u8]) -> Result<Begin, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO txn.idempotency_keys (user_id, key, fingerprint) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(user)
    .bind(key)
    .bind(fp)
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Begin::Fresh);
    }
    type Row = (Vec<u8>, Option<Uuid>, Option<i16>, Option<String>, bool, chrono::DateTime<chrono::Utc>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT fingerprint, transaction_id, response_status, response_body, \
         extract(epoch FROM now() - created_at) > $3, created_at \
         FROM txn.idempotency_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(user)
    .bind(key)
    .bind(STALE_SECS)
    .fetch_optional(pool)
    .await?;
    // Deleted in between (a released record): treat as in flight; the client retries.
    let Some((stored_fp, txn, status, body, stale, created_at)) = row else { return Ok(Begin::InFlight) };
    if stored_fp != fp {
        return Ok(Begin::Mismatch);
    }
    if let (Some(status), Some(body)) = (status, body) {
        return Ok(Begin::Replay { status: status as u16, body });
    }
    if !stale {
        return Ok(Begin::InFlight);
    }
    // Take the abandoned record over, unless someone else just did: one retry
    // at a time finishes it, the others are told it is in flight.
    let taken = sqlx::query(
        "UPDATE txn.idempotency_keys SET created_at = now() \
         WHERE user_id = $1 AND key = $2 AND completed_at IS NULL AND created_at = $3",
    )
    .bind(user)
    .bind(key)
    .bind(created_at)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(match (taken, txn) {
        (1, Some(transaction_id)) => Begin::Resume { transaction_id },
        (1, None) => Begin::Fresh,
        _ => Begin::InFlight,
    })
}

/// Stores the answer of a resumed record.
pub async fn finish(pool: &PgPool, user: Uuid, key: &str, status: u16, body: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE txn.idempotency_keys SET response_status = $3, response_body = $4, completed_at = now() \
         WHERE user_id = $1 AND key = $2 AND completed_at IS NULL",
    )
    .bind(user)
    .bind(key)
    .bind(status as i16)
    .bind(body)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets an unfinished record whose transaction could not be recorded, so
/// the client can retry with the same key. If the record does point at
/// `transaction_id` (the insert committed and only its answer was lost), it
/// stays: that transaction is the key's.
pub async fn release_unless(pool: &PgPool, user: Uuid, key: &str, transaction_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM txn.idempotency_keys WHERE user_id = $1 AND key = $2 AND completed_at IS NULL \
         AND transaction_id IS DISTINCT FROM $3",
    )
    .bind(user)
    .bind(key)
    .bind(transaction_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Sets the time stamp of the unfinished record of `transaction_id` to `age_secs`
/// ago: 0 is a heartbeat, past `STALE_SECS` marks it abandoned. Guarded by the
/// transaction the request recorded or resumed: a record that another request
/// owns is never touched. A record already stale is left as it is: a heartbeat
/// sent just before its request ended can reach the database after the
/// hand-over mark, and must not make the retry wait `STALE_SECS` again.
async fn stamp(pool: &PgPool, user: Uuid, key: &str, transaction_id: Uuid, age_secs: f64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE txn.idempotency_keys SET created_at = now() - make_interval(secs => $4) \
         WHERE user_id = $1 AND key = $2 AND transaction_id = $3 AND completed_at IS NULL \
         AND created_at > now() - make_interval(secs => $5)",
    )
    .bind(user)
    .bind(key)
    .bind(transaction_id)
    .bind(age_secs)
    .bind(STALE_SECS)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks the unfinished record of an attempt that failed as abandoned, so the
/// next retry takes it over at once instead of after `STALE_SECS`.
async fn abandon(pool: &PgPool, user: Uuid, key: &str, transaction_id: Uuid) -> Result<(), sqlx::Error> {
    stamp(pool, user, key, transaction_id, STALE_SECS + 1.0).await
}

/// [`abandon`] on a task of its own, retried while the database is away (the
/// failure that ended the attempt is often the database restarting), until
/// `HAND_OVER_WITHIN` after the request ended; past that, the record becomes
/// stale on its own soon.
pub fn abandon_soon(pool: PgPool, user: Uuid, key: String, transaction_id: Uuid) {
    let started = Instant::now();
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(200);
        loop {
            match abandon(&pool, user, &key, transaction_id).await {
                Ok(()) => return,
                Err(e) if payflow_common::db::is_transient(&e) && started.elapsed() + wait < HAND_OVER_WITHIN => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::warn!(%transaction_id, error = %e, "could not hand the idempotency record over; a retry waits until it is stale");
                    return;
                }
            }
        }
    });
}

/// Keeps the record of the request at work fresh, every `HEARTBEAT`, so that a
/// retry waits for it however long it takes, and takes over at most
/// `STALE_SECS` after a crash. `recorded` is the transaction the record points
/// at once this request owns it; a record it does not own is left alone.
/// Never returns: the request's work runs beside it and ends it.
pub async fn keep_alive(pool: &PgPool, user: Uuid, key: &str, recorded: &watch::Sender<Uuid>) -> Infallible {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let transaction_id = *recorded.borrow();
        if let Err(e) = stamp(pool, user, key, transaction_id, 0.0).await {
            tracing::debug!(%transaction_id, error = %e, "idempotency heartbeat failed");
        }
    }
}

/// Records older than the retention (at least 24 h) are deleted by the relay's housekeeping.
pub async fn purge(pool: &PgPool, older_than_hours: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM txn.idempotency_keys WHERE created_at < now() - make_interval(hours => $1)")
        .bind(older_than_hours as i32)
        .execute(pool)
        .await?
        .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn recorded_key(pool: &PgPool) -> (Uuid, String, Vec<u8>, Uuid) {
        let (user, key, txn) = (Uuid::now_v7(), format!("k-{}", Uuid::now_v7()), Uuid::now_v7());
        let fp = fingerprint(Uuid::now_v7(), 100, "USD", None);
        assert!(matches!(begin(pool, user, &key, &fp).await.expect("begin"), Begin::Fresh));
        sqlx::query("UPDATE txn.idempotency_keys SET transaction_id = $3 WHERE user_id = $1 AND key = $2")
            .bind(user)
            .bind(&key)
            .bind(txn)
            .execute(pool)
            .await
            .expect("record the transaction");
        (user, key, fp, txn)
    }

    #[tokio::test]
    async fn a_heartbeat_that_lands_after_the_hand_over_does_not_revive_the_record() {
        let pool = crate::migrated_test_pool().await;
        let (user, key, fp, txn) = recorded_key(&pool).await;
        abandon(&pool, user, &key, txn).await.expect("abandon");
        stamp(&pool, user, &key, txn, 0.0).await.expect("late heartbeat");
        let retry = begin(&pool, user, &key, &fp).await.expect("retry");
        assert!(matches!(retry, Begin::Resume { transaction_id } if transaction_id == txn), "{retry:?}");
    }

    #[tokio::test]
    async fn a_heartbeat_keeps_a_live_record_in_flight_and_only_its_own() {
        let pool = crate::migrated_test_pool().await;
        let (user, key, fp, txn) = recorded_key(&pool).await;
        // Two seconds old, then a heartbeat: fresh again, so a retry waits.
        sqlx::query("UPDATE txn.idempotency_keys SET created_at = now() - interval '2 s' WHERE user_id = $1")
            .bind(user)
            .execute(&pool)
            .await
            .expect("age");
        stamp(&pool, user, &key, txn, 0.0).await.expect("heartbeat");
        let age: f64 = sqlx::query_scalar(
            "SELECT extract(epoch FROM now() - created_at)::float8 FROM txn.idempotency_keys WHERE user_id = $1",
        )
        .bind(user)
        .fetch_one(&pool)
        .await
        .expect("age");
        assert!(age < 1.0, "not refreshed: {age} s old");
        assert!(matches!(begin(&pool, user, &key, &fp).await.expect("retry"), Begin::InFlight));
        // Another transaction's request cannot mark this record abandoned.
        abandon(&pool, user, &key, Uuid::now_v7()).await.expect("abandon someone else's");
        assert!(matches!(begin(&pool, user, &key, &fp).await.expect("retry"), Begin::InFlight));
    }
}
