//! Database changes of the transaction domain. Status changes are guarded
//! (`WHERE status IN ('PENDING','PROCESSING')`), so the worker and the
//! reversal can race on one transaction and only one of them changes it; the
//! events of a change are written to the outbox in the same commit.

use std::sync::LazyLock;

use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction as DbTx};
use uuid::Uuid;

use payflow_messaging::Topology;

use crate::model::{Status, Transaction, COLUMNS};

/// A transfer the caller asked for, already validated.
#[derive(Debug, Clone)]
pub struct NewTransaction {
    pub id: Uuid,
    pub from: Uuid,
    pub to: Uuid,
    pub amount: i64,
    pub currency: String,
    pub description: Option<String>,
    pub correlation_id: String,
}

/// A message to publish, as stored in the outbox.
pub struct OutboxMessage<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: Value,
    pub correlation_id: &'a str,
}

/// One outbox row: `$1` message id, `$2` exchange, `$3` routing key (also its kind),
/// `$4` correlation id, `$5` body.
const INSERT_OUTBOX: &str = "INSERT INTO txn.outbox (message_id, exchange, routing_key, kind, correlation_id, body) \
                             VALUES ($1, $2, $3, $3, $4, $5)";

/// Writes outbox rows, in the order given, in one statement.
pub async fn insert_outbox(tx: &mut DbTx<'_, Postgres>, ms: &[OutboxMessage<'_>]) -> Result<(), sqlx::Error> {
    if ms.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO txn.outbox (message_id, exchange, routing_key, kind, correlation_id, body) \
         SELECT m, e, k, k, c, b FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[]) \
         WITH ORDINALITY AS i(m, e, k, c, b, n) ORDER BY n",
    )
    .bind(ms.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
    .bind(ms.iter().map(|m| m.exchange).collect::<Vec<_>>())
    .bind(ms.iter().map(|m| m.routing_key).collect::<Vec<_>>())
    .bind(ms.iter().map(|m| m.correlation_id).collect::<Vec<_>>())
    .bind(ms.iter().map(|m| &m.body).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

type PendingInsert<'q> = sqlx::query::QueryAs<'q, Postgres, Transaction, sqlx::postgres::PgArguments>;

// The statements below pick rows by id and guard them by status. They write
// the guard as `(...) IS TRUE` (the same test, status is NOT NULL): a bare
// status test lets the planner use the partial index `transactions_open`,
// whose statistics can say "empty" while a backlog sits in it, and then every
// statement scans the whole backlog (0.4 s per worker batch at 8,600 open).
// With `IS TRUE` only the primary key fits. Tested in `tests` below.

/// Drops a PENDING transaction whose hold wallet refused.
const DELETE_PENDING: &str = "DELETE FROM txn.transactions WHERE id = $1 AND (status = 'PENDING') IS TRUE";

/// COMPLETED for `$1` (uuid[]), unless already final. The statement texts that
/// need `COLUMNS` are built once, not on every call of the accept and settle paths.
static COMPLETE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE txn.transactions SET status = 'COMPLETED', completed_at = now(), \
         processing_started_at = COALESCE(processing_started_at, now()) \
         WHERE id = ANY($1) AND (status IN ('PENDING', 'PROCESSING')) IS TRUE RETURNING {COLUMNS}"
    )
});

/// FAILED for `$1` (uuid[]) with the reasons `$2` (text[]), unless already final.
static FAIL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE txn.transactions t SET status = 'FAILED', completed_at = now(), error_message = f.reason \
         FROM unnest($1::uuid[], $2::text[]) AS f(id, reason) \
         WHERE t.id = f.id AND (t.status IN ('PENDING', 'PROCESSING')) IS TRUE RETURNING {}",
        COLUMNS.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ")
    )
});

const INSERT_PENDING: &str =
    "INSERT INTO txn.transactions (id, from_user_id, to_user_id, amount, currency, description, status, correlation_id)";

/// A PENDING insert (`sql`) with `$1`..`$7` bound to the new transaction.
fn pending_insert<'q>(sql: &'q str, t: &'q NewTransaction) -> PendingInsert<'q> {
    sqlx::query_as(sql)
        .bind(t.id)
        .bind(t.from)
        .bind(t.to)
        .bind(t.amount)
        .bind(&t.currency)
        .bind(&t.description)
        .bind(&t.correlation_id)
}

/// A fresh Idempotency-Key record to take with a new transaction.
#[derive(Debug, Clone)]
pub struct FreshKey {
    pub user: Uuid,
    pub key: String,
    pub fingerprint: Vec<u8>,
}

/// The statement of [`insert_pending_many`]. Keys are inserted in (user, key)
/// order, so two batches sharing keys cannot deadlock.
static INSERT_PENDING_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH i AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int8[], $5::text[], $6::text[], \
                    $7::text[], $8::uuid[], $9::text[], $10::bytea[]) \
                    AS i(id, from_user_id, to_user_id, amount, currency, description, correlation_id, \
                         key_user, key, fingerprint)), \
              k AS (INSERT INTO txn.idempotency_keys (user_id, key, fingerprint, transaction_id) \
                    SELECT key_user, key, fingerprint, id FROM i WHERE key_user IS NOT NULL ORDER BY key_user, key \
                    ON CONFLICT DO NOTHING RETURNING transaction_id) \
         {INSERT_PENDING} SELECT id, from_user_id, to_user_id, amount, currency, description, 'PENDING', \
                correlation_id FROM i WHERE key_user IS NULL OR id IN (SELECT transaction_id FROM k) \
         RETURNING {COLUMNS}"
    )
});

/// Records transactions as PENDING (committed before wallet is asked, so a
/// crash after the hold leaves a row the reversal finds), each with its fresh
/// Idempotency-Key record: one statement and one commit for many requests
/// (`crate::batches`). Per request, in order: the PENDING row, or `None` when
/// its key is already recorded (also by an earlier request of the same batch):
/// `idempotency::begin` says what that means.
pub async fn insert_pending_many(
    pool: &PgPool,
    reqs: &[(NewTransaction, Option<FreshKey>)],
) -> Result<Vec<Option<Transaction>>, sqlx::Error> {
    let news = || reqs.iter().map(|(t, _)| t);
    let keys = || reqs.iter().map(|(_, k)| k.as_ref());
    let rows: Vec<Transaction> = sqlx::query_as(&INSERT_PENDING_MANY)
        .bind(news().map(|t| t.id).collect::<Vec<_>>())
        .bind(news().map(|t| t.from).collect::<Vec<_>>())
        .bind(news().map(|t| t.to).collect::<Vec<_>>())
        .bind(news().map(|t| t.amount).collect::<Vec<_>>())
        .bind(news().map(|t| t.currency.as_str()).collect::<Vec<_>>())
        .bind(news().map(|t| t.description.as_deref()).collect::<Vec<_>>())
        .bind(news().map(|t| t.correlation_id.as_str()).collect::<Vec<_>>())
        .bind(keys().map(|k| k.map(|k| k.user)).collect::<Vec<_>>())
        .bind(keys().map(|k| k.map(|k| k.key.as_str())).collect::<Vec<_>>())
        .bind(keys().map(|k| k.map(|k| k.fingerprint.as_slice())).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
    let mut by_id: std::collections::HashMap<Uuid, Transaction> = rows.into_iter().map(|t| (t.id, t)).collect();
    Ok(news().map(|t| by_id.remove(&t.id)).collect())
}

/// The statement of [`accept_many`].
static ACCEPT_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH i AS (SELECT * FROM unnest($6::uuid[], $7::text[], $8::text[], $9::uuid[]) \
                    AS i(key_user, key, response, id)), \
              o AS ({INSERT_OUTBOX}) \
         UPDATE txn.idempotency_keys k SET response_status = 201, response_body = i.response, completed_at = now() \
         FROM i WHERE k.user_id = i.key_user AND k.key = i.key AND k.transaction_id = i.id \
         AND k.completed_at IS NULL"
    )
});

/// What [`accept_many`] writes for one accepted transaction.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: Uuid,
    pub correlation_id: String,
    /// The Idempotency-Key record (user, key) that stores the answer.
    pub key: Option<(Uuid, String)>,
    pub response: String,
}

/// The holds are placed: enqueue the settle request and remember the
/// answers, for many transactions in one statement and one commit. One settle
/// message carries them all (the worker settles it as one batch), so a burst
/// of accepts costs the broker one message, not one each.
pub async fn accept_many(pool: &PgPool, topology: &Topology, items: &[Accepted]) -> Result<(), sqlx::Error> {
    let Some(first) = items.first() else { return Ok(()) };
    sqlx::query(&ACCEPT_MANY)
        .bind(Uuid::now_v7())
        .bind(topology.work_exchange())
        .bind(payflow_messaging::topology::SETTLE)
        .bind(first.correlation_id.as_str())
        .bind(settle_body(&items.iter().map(|a| a.id).collect::<Vec<_>>()))
        .bind(items.iter().map(|a| a.key.as_ref().map(|k| k.0)).collect::<Vec<_>>())
        .bind(items.iter().map(|a| a.key.as_ref().map(|k| k.1.as_str())).collect::<Vec<_>>())
        .bind(items.iter().map(|a| a.response.as_str()).collect::<Vec<_>>())
        .bind(items.iter().map(|a| a.id).collect::<Vec<_>>())
        .execute(pool)
        .await?;
    Ok(())
}

/// The settle message's body: `{"transactionId"}` for one (the shape every
/// worker understands), `{"transactionIds":[...]}` for many.
fn settle_body(ids: &[Uuid]) -> Value {
    match ids {
        [one] => serde_json::json!({ "transactionId": one }),
        many => serde_json::json!({ "transactionIds": many }),
    }
}

/// Records the transaction as PENDING, under an Idempotency-Key record that
/// already exists (one taken over from an abandoned request) when given.
pub async fn insert_pending(
    pool: &PgPool,
    t: &NewTransaction,
    idempotency: Option<(Uuid, &str)>,
) -> Result<Transaction, sqlx::Error> {
    const VALUES: &str = "VALUES ($1, $2, $3, $4, $5, $6, 'PENDING', $7)";
    let Some((user, key)) = idempotency else {
        let sql = format!("{INSERT_PENDING} {VALUES} RETURNING {COLUMNS}");
        return pending_insert(&sql, t).fetch_one(pool).await;
    };
    let sql = format!(
        "WITH k AS (UPDATE txn.idempotency_keys SET transaction_id = $1 WHERE user_id = $8 AND key = $9) \
         {INSERT_PENDING} {VALUES} RETURNING {COLUMNS}"
    );
    pending_insert(&sql, t).bind(user).bind(key).fetch_one(pool).await
}

/// Drops the PENDING row `$1` and does `key_action` (with `$2`, `$3` the key's
/// user and name, NULL for none) to the unfinished key record pointing at it,
/// in one statement: both or neither. `false` when the row was no longer
/// PENDING (the reversal finished it): then nothing is written, and the key
/// stays with its transaction (one key, one transaction).
async fn drop_pending(
    pool: &PgPool,
    key_action: &str,
    id: Uuid,
    idempotency: Option<(Uuid, &str)>,
    answer: Option<(u16, &Value)>,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "WITH d AS ({DELETE_PENDING} RETURNING id), \
              k AS ({key_action} WHERE user_id = $2 AND key = $3 \
                    AND transaction_id IN (SELECT id FROM d) AND completed_at IS NULL) \
         SELECT count(*) FROM d"
    );
    let mut q = sqlx::query_scalar::<_, i64>(&sql)
        .bind(id)
        .bind(idempotency.map(|(user, _)| user))
        .bind(idempotency.map(|(_, key)| key));
    if let Some((status, response)) = answer {
        q = q.bind(status as i16).bind(response.to_string());
    }
    Ok(q.fetch_one(pool).await? > 0)
}

/// Wallet refused the hold synchronously: nothing was held, so the row goes
/// and the refusal becomes the key's answer (the client got its error;
/// nothing is left to reverse). `false` as in [`drop_pending`].
pub async fn reject(
    pool: &PgPool,
    id: Uuid,
    idempotency: Option<(Uuid, &str)>,
    status: u16,
    response: &Value,
) -> Result<bool, sqlx::Error> {
    const ANSWER: &str = "UPDATE txn.idempotency_keys \
         SET transaction_id = NULL, response_status = $4, response_body = $5, completed_at = now()";
    drop_pending(pool, ANSWER, id, idempotency, Some((status, response))).await
}

/// Drops a PENDING row whose hold is known not to exist (voided), together
/// with the unfinished key record pointing at it, so the client may retry with
/// the same key. `false` as in [`drop_pending`].
pub async fn forget(pool: &PgPool, id: Uuid, idempotency: Option<(Uuid, &str)>) -> Result<bool, sqlx::Error> {
    drop_pending(pool, "DELETE FROM txn.idempotency_keys", id, idempotency, None).await
}

/// Drives transactions to a final state after wallet decided, with their
/// events, in one commit. Returns the rows that changed (already-final ones
/// are skipped, so a redelivered message emits nothing twice).
pub async fn finish(
    pool: &PgPool,
    topology: &Topology,
    completed: &[Uuid],
    failed: &[(Uuid, String)],
) -> Result<Vec<Transaction>, sqlx::Error> {
    let mut tx = payflow_common::db::begin(pool).await?;
    let changed = finish_in(&mut tx, topology, completed, failed).await?;
    tx.commit().await?;
    Ok(changed)
}

/// [`finish`] inside a caller's database transaction (the reversal holds row locks).
pub async fn finish_in(
    tx: &mut DbTx<'_, Postgres>,
    topology: &Topology,
    completed: &[Uuid],
    failed: &[(Uuid, String)],
) -> Result<Vec<Transaction>, sqlx::Error> {
    let mut changed = Vec::new();
    if !completed.is_empty() {
        changed.extend(sqlx::query_as::<_, Transaction>(&COMPLETE).bind(completed).fetch_all(&mut **tx).await?);
    }
    if !failed.is_empty() {
        let ids: Vec<Uuid> = failed.iter().map(|f| f.0).collect();
        let reasons: Vec<String> = failed.iter().map(|f| f.1.clone()).collect();
        changed.extend(sqlx::query_as::<_, Transaction>(&FAIL).bind(&ids).bind(&reasons).fetch_all(&mut **tx).await?);
    }
    // One event message per kind for the whole batch (`{"events":[...]}`; a
    // lone event keeps the one-event shape): the broker and the notification
    // service handle one message, not one per transfer.
    let events = topology.events_exchange();
    let mut messages: Vec<OutboxMessage> = Vec::new();
    for (kind, status) in [
        (payflow_messaging::topology::COMPLETED, Status::Completed),
        (payflow_messaging::topology::FAILED, Status::Failed),
    ] {
        let of_kind: Vec<&Transaction> = changed.iter().filter(|t| t.status == status).collect();
        let body = match of_kind.as_slice() {
            [] => continue,
            [one] => one.event_json(),
            many => serde_json::json!({ "events": many.iter().map(|t| t.event_json()).collect::<Vec<_>>() }),
        };
        let correlation_id = of_kind[0].correlation_id.as_deref().unwrap_or_default();
        messages.push(OutboxMessage { exchange: &events, routing_key: kind, body, correlation_id });
    }
    insert_outbox(tx, &messages).await?;
    Ok(changed)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Transaction>, sqlx::Error> {
    sqlx::query_as::<_, Transaction>(&format!("SELECT {COLUMNS} FROM txn.transactions WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The caller's transactions (sent or received), newest first.
pub async fn list(
    pool: &PgPool,
    user: Uuid,
    status: Option<Status>,
    before: Option<Uuid>,
    offset: i64,
    limit: i64,
) -> Result<Vec<Transaction>, sqlx::Error> {
    sqlx::query_as::<_, Transaction>(&format!(
        "SELECT {COLUMNS} FROM txn.transactions \
         WHERE (from_user_id = $1 OR to_user_id = $1) AND ($2::text IS NULL OR status = $2) \
         AND ($3::uuid IS NULL OR id < $3) ORDER BY id DESC OFFSET $4 LIMIT $5"
    ))
    .bind(user)
    .bind(status)
    .bind(before)
    .bind(offset)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PENDING transaction recorded under a fresh key, as the accept path records it.
    async fn pending_with_key(pool: &PgPool) -> (Uuid, Uuid, String) {
        let (user, key) = (Uuid::now_v7(), format!("k-{}", Uuid::now_v7()));
        let new = NewTransaction {
            id: Uuid::now_v7(),
            from: user,
            to: Uuid::now_v7(),
            amount: 100,
            currency: "USD".into(),
            description: None,
            correlation_id: "store-test".into(),
        };
        let fresh = FreshKey { user, key: key.clone(), fingerprint: vec![1] };
        let rows = insert_pending_many(pool, &[(new.clone(), Some(fresh))]).await.expect("insert");
        assert!(rows[0].is_some());
        (new.id, user, key)
    }

    async fn key_record(pool: &PgPool, user: Uuid, key: &str) -> Option<(Option<Uuid>, Option<i16>)> {
        sqlx::query_as(
            "SELECT transaction_id, response_status FROM txn.idempotency_keys WHERE user_id = $1 AND key = $2",
        )
        .bind(user)
        .bind(key)
        .fetch_optional(pool)
        .await
        .expect("read key")
    }

    #[tokio::test]
    async fn a_transaction_the_reversal_finished_keeps_its_key_whatever_the_accept_then_reports() {
        let pool = crate::migrated_test_pool().await;
        let (id, user, key) = pending_with_key(&pool).await;
        sqlx::query(&FAIL).bind(vec![id]).bind(vec!["reversed"]).execute(&pool).await.expect("fail it");
        let idem = Some((user, key.as_str()));
        assert!(!forget(&pool, id, idem).await.expect("forget"));
        assert!(!reject(&pool, id, idem, 422, &serde_json::json!({"error": "Insufficient funds"}))
            .await
            .expect("reject"));
        assert_eq!(key_record(&pool, user, &key).await, Some((Some(id), None)), "the key stays with its transaction");
        let status: String = sqlx::query_scalar("SELECT status FROM txn.transactions WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("row");
        assert_eq!(status, "FAILED");
    }

    #[tokio::test]
    async fn a_voided_pending_transaction_is_forgotten_with_its_key_and_a_refused_one_answers_from_it() {
        let pool = crate::migrated_test_pool().await;
        let (id, user, key) = pending_with_key(&pool).await;
        assert!(forget(&pool, id, Some((user, key.as_str()))).await.expect("forget"));
        assert_eq!(key_record(&pool, user, &key).await, None);

        let (id, user, key) = pending_with_key(&pool).await;
        let refusal = serde_json::json!({"error": "Insufficient funds"});
        assert!(reject(&pool, id, Some((user, key.as_str())), 422, &refusal).await.expect("reject"));
        assert_eq!(key_record(&pool, user, &key).await, Some((None, Some(422))));
        // A late accept of the same transaction does not overwrite the stored refusal.
        let late =
            Accepted { id, correlation_id: "late".into(), key: Some((user, key.clone())), response: "{}".into() };
        accept_many(&pool, &Topology::new("store-test", 5), &[late]).await.expect("accept");
        assert_eq!(key_record(&pool, user, &key).await, Some((None, Some(422))));
    }

    #[tokio::test]
    async fn guarded_updates_by_id_use_the_primary_key_not_the_open_index() {
        let pool = crate::migrated_test_pool().await;
        let ids = vec![Uuid::now_v7(), Uuid::now_v7()];
        let sqls = [crate::worker::MARK_PROCESSING, COMPLETE.as_str(), FAIL.as_str(), DELETE_PENDING]
            .map(|sql| format!("EXPLAIN {sql}"));
        let plans = [
            ("PROCESSING", sqlx::query_scalar(&sqls[0]).bind(&ids)),
            ("COMPLETED", sqlx::query_scalar(&sqls[1]).bind(&ids)),
            ("FAILED", sqlx::query_scalar(&sqls[2]).bind(&ids).bind(vec!["why"; 2])),
            ("refused hold", sqlx::query_scalar(&sqls[3]).bind(ids[0])),
        ];
        for (what, query) in plans {
            let plan: Vec<String> = query.fetch_all(&pool).await.expect("explain");
            let plan = plan.join("\n");
            assert!(plan.contains("transactions_pkey"), "{what}: not on the primary key:\n{plan}");
            assert!(!plan.contains("transactions_open"), "{what}: on the partial index:\n{plan}");
        }
    }
}
