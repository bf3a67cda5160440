//! The ledger's state changes. Every change runs in one database transaction,
//! decides through a guarded update (`... WHERE state = 'pending'`) rather than
//! a read-then-write, and locks account rows in id order so two transfers in
//! opposite directions cannot deadlock each other.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use payflow_common::ids::{TransferId, UserId};
use payflow_common::money::Currency;
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("sender wallet not found")]
    SenderNotFound,
    #[error("recipient not found")]
    RecipientNotFound,
    #[error("cannot transfer to the same wallet")]
    SameAccount,
    #[error("currency mismatch")]
    CurrencyMismatch,
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("transfer id already used with different fields")]
    Conflict,
    #[error("transfer already posted")]
    AlreadyPosted,
    #[error("transfer already voided")]
    AlreadyVoided,
    #[error("transfer not found")]
    NotFound,
    /// A concurrent change got in between; the whole operation is run again.
    #[error("retry")]
    Retry,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Wallet {
    pub user_id: Uuid,
    pub name: String,
    pub currency: String,
    pub balance: i64,
    pub pending_debits: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    Pending,
    Posted,
    Voided,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Transfer {
    pub id: Uuid,
    pub kind: String,
    pub from_user_id: Option<Uuid>,
    pub to_user_id: Option<Uuid>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub state: TransferState,
    pub timeout_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// A request to hold money for a payment.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    pub id: TransferId,
    pub from: UserId,
    pub to: UserId,
    /// Minor units, > 0.
    pub amount: i64,
    pub currency: Currency,
    pub timeout: Duration,
}

impl NewTransfer {
    fn same_as(&self, t: &Transfer) -> bool {
        t.kind == "payment"
            && t.from_user_id == Some(self.from.0)
            && t.to_user_id == Some(self.to.0)
            && t.amount == Some(self.amount)
            && t.currency.as_deref() == Some(self.currency.code())
    }
}

/// Whether a create made something new or found an identical earlier request.
#[derive(Debug)]
pub enum Outcome<T> {
    Created(T),
    Existing(T),
}

const MAX_ATTEMPTS: u32 = 8;

// Two statements pick transfers by id and guard them by state (wallet.post_batch's
// lock, and the void). They write the guard as `(...) IS TRUE` (the same test,
// state is NOT NULL): a bare state test lets the planner use the partial index
// `transfers_pending_by_timeout`, whose statistics can say "empty" while
// thousands of holds sit in it, and scan them all. With `IS TRUE` only the
// primary key fits (tested below).

/// Locks the still-pending transfers among `p_ids`, in id order: the first
/// statement of wallet.post_batch, verbatim (the test below checks both).
#[cfg(test)]
const LOCK_PENDING: &str = "SELECT id, debit_account_id, credit_account_id, amount FROM wallet.transfers \
     WHERE id = ANY(p_ids) AND (state = 'pending') IS TRUE ORDER BY id FOR UPDATE";

/// Voids transfer `$1` if it is still pending.
const VOID_PENDING: &str = "UPDATE wallet.transfers SET state = 'voided', resolved_at = now() \
     WHERE id = $1 AND (state = 'pending') IS TRUE RETURNING debit_account_id, amount";

/// Holds whose timeout passed more than `$1` seconds ago, oldest first, at most `$2`.
const EXPIRED_HOLDS: &str = "SELECT id FROM wallet.transfers \
     WHERE state = 'pending' AND timeout_at < now() - make_interval(secs => $1) ORDER BY timeout_at LIMIT $2";

/// Voids holds past their timeout by more than `grace` (at most `limit` per
/// call), as TigerBeetle expires pending transfers: their money goes back to
/// the sender. Each goes through [`void`], so a hold posted meanwhile stays
/// posted. The ids voided.
pub async fn void_expired(pool: &PgPool, grace: Duration, limit: i64) -> Result<Vec<Uuid>, LedgerError> {
    let ids: Vec<Uuid> =
        sqlx::query_scalar(EXPIRED_HOLDS).bind(grace.as_secs_f64()).bind(limit).fetch_all(pool).await?;
    let mut voided = Vec::with_capacity(ids.len());
    for id in ids {
        match void(pool, TransferId(id)).await {
            Ok(_) => voided.push(id),
            // Posted in between: the money moved as it should.
            Err(LedgerError::AlreadyPosted) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(voided)
}

/// Runs `op` again on deadlocks, serialization failures and [`LedgerError::Retry`].
async fn retrying<T, F, Fut>(mut op: F) -> Result<T, LedgerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LedgerError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Err(e) if attempt < MAX_ATTEMPTS && is_transient(&e) => {
                tracing::debug!(error = %e, attempt, "retrying ledger operation");
                tokio::time::sleep(Duration::from_millis(2u64 << attempt.min(6))).await;
            }
            other => return other,
        }
    }
}

fn is_transient(e: &LedgerError) -> bool {
    match e {
        LedgerError::Retry => true,
        LedgerError::Db(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40P01") | Some("40001"))
        }
        _ => false,
    }
}

const TRANSFER_SELECT: &str = "SELECT t.id, t.kind, d.user_id AS from_user_id, c.user_id AS to_user_id, \
     t.amount, t.currency::text AS currency, t.state, t.timeout_at, t.created_at, t.resolved_at \
     FROM wallet.transfers t \
     LEFT JOIN wallet.accounts d ON d.id = t.debit_account_id \
     LEFT JOIN wallet.accounts c ON c.id = t.credit_account_id \
     WHERE t.id = $1";

const WALLET_SELECT: &str = "SELECT user_id, name, currency::text AS currency, balance, pending_debits, \
     created_at, updated_at FROM wallet.accounts WHERE user_id = $1";

pub async fn get_transfer(pool: &PgPool, id: TransferId) -> Result<Option<Transfer>, sqlx::Error> {
    sqlx::query_as::<_, Transfer>(TRANSFER_SELECT).bind(id.0).fetch_optional(pool).await
}

pub async fn get_wallet(pool: &PgPool, user: UserId) -> Result<Option<Wallet>, sqlx::Error> {
    sqlx::query_as::<_, Wallet>(WALLET_SELECT).bind(user.0).fetch_optional(pool).await
}

/// The payee directory: every user wallet's owner and name.
pub async fn directory(pool: &PgPool, limit: i64) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as("SELECT user_id, name FROM wallet.accounts WHERE kind = 'user' ORDER BY name, user_id LIMIT $1")
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Creates a user's wallet with the sign-up credit, once: a second call for
/// the same user returns the existing wallet and credits nothing.
pub async fn create_wallet(
    pool: &PgPool,
    user: UserId,
    name: &str,
    currency: Currency,
    signup_credit: i64,
) -> Result<Outcome<Wallet>, LedgerError> {
    sqlx::query(
        "INSERT INTO wallet.accounts (id, kind, name, currency) VALUES ($1, 'system', $2, $3) \
         ON CONFLICT (currency) WHERE kind = 'system' DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(format!("PayFlow issuer {currency}"))
    .bind(currency.code())
    .execute(pool)
    .await?;

    let created = retrying(|| async {
        let mut tx = payflow_common::db::begin(pool).await?;
        let account = Uuid::now_v7();
        let inserted = sqlx::query(
            "INSERT INTO wallet.accounts (id, user_id, kind, name, currency) VALUES ($1, $2, 'user', $3, $4) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(account)
        .bind(user.0)
        .bind(name)
        .bind(currency.code())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        if signup_credit > 0 {
            let issuer: Uuid = sqlx::query_scalar(
                "SELECT id FROM wallet.accounts WHERE kind = 'system' AND currency = $1 FOR NO KEY UPDATE",
            )
            .bind(currency.code())
            .fetch_one(&mut *tx)
            .await?;
            let transfer = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO wallet.transfers (id, kind, debit_account_id, credit_account_id, amount, currency, state, resolved_at) \
                 VALUES ($1, 'signup_credit', $2, $3, $4, $5, 'posted', now())",
            )
            .bind(transfer)
            .bind(issuer)
            .bind(account)
            .bind(signup_credit)
            .bind(currency.code())
            .execute(&mut *tx)
            .await?;
            move_money(&mut tx, transfer, issuer, account, signup_credit).await?;
        }
        tx.commit().await?;
        Ok(true)
    })
    .await?;
    let wallet = get_wallet(pool, user).await?.ok_or(LedgerError::NotFound)?;
    Ok(if created { Outcome::Created(wallet) } else { Outcome::Existing(wallet) })
}

/// Places a hold: a pending transfer that reduces the sender's available balance.
/// Repeating an identical request is a success; reusing the id otherwise is a conflict.
pub async fn create_pending(pool: &PgPool, new: &NewTransfer) -> Result<Outcome<Transfer>, LedgerError> {
    let mut results = create_pending_many(pool, std::slice::from_ref(new)).await?;
    results.pop().unwrap_or(Err(LedgerError::Retry))
}

/// Places the holds of many payments in one statement and one commit; the
/// outcome of each, in the order given (one refusal does not undo the others).
pub async fn create_pending_many(
    pool: &PgPool,
    news: &[NewTransfer],
) -> Result<Vec<Result<Outcome<Transfer>, LedgerError>>, LedgerError> {
    // wallet.hold_batch (migrations/0003, as amended by 0005) checks everything below
    // again; a self-transfer is refused here because the function does not look for it.
    // An id given twice is sent once per call: the first copies go first, and the repeats
    // in a following call, so each gets what it would get on its own after the first
    // (the first's transfer, compared, if that was stored; else a decision of its own,
    // e.g. the same refusal). Each call is one statement and one commit.
    let mut results: Vec<Option<Result<Outcome<Transfer>, LedgerError>>> = Vec::with_capacity(news.len());
    let mut waiting: Vec<usize> = Vec::new();
    for (i, new) in news.iter().enumerate() {
        if new.from == new.to {
            results.push(Some(Err(LedgerError::SameAccount)));
        } else {
            results.push(None);
            waiting.push(i);
        }
    }
    while !waiting.is_empty() {
        let mut seen = HashSet::with_capacity(waiting.len());
        let (round, later): (Vec<usize>, Vec<usize>) = waiting.into_iter().partition(|&i| seen.insert(news[i].id.0));
        let batch: Vec<&NewTransfer> = round.iter().map(|&i| &news[i]).collect();
        let mut outcomes = hold_batch(pool, &batch).await?;
        for i in round {
            let new = &news[i];
            results[i] = Some(match outcomes.remove(&new.id.0) {
                Some((_, outcome, created_at, timeout_at)) => {
                    hold_outcome(pool, new, &outcome, created_at, timeout_at).await
                }
                None => Err(LedgerError::Db(sqlx::Error::Protocol(format!(
                    "wallet.hold_batch did not answer for {}",
                    new.id.0
                )))),
            });
        }
        waiting = later;
    }
    Ok(results.into_iter().map(|r| r.unwrap_or(Err(LedgerError::Retry))).collect())
}

/// One call of `wallet.hold_batch` (ids distinct): its answer by id.
async fn hold_batch(pool: &PgPool, batch: &[&NewTransfer]) -> Result<HashMap<Uuid, HoldRow>, LedgerError> {
    let rows: Vec<HoldRow> = retrying(|| async {
        Ok(sqlx::query_as(
            "SELECT o_id, o_outcome, o_created_at, o_timeout_at FROM wallet.hold_batch($1, $2, $3, $4, $5, $6)",
        )
        .bind(batch.iter().map(|n| n.id.0).collect::<Vec<_>>())
        .bind(batch.iter().map(|n| n.from.0).collect::<Vec<_>>())
        .bind(batch.iter().map(|n| n.to.0).collect::<Vec<_>>())
        .bind(batch.iter().map(|n| n.amount).collect::<Vec<_>>())
        .bind(batch.iter().map(|n| n.currency.code()).collect::<Vec<_>>())
        .bind(batch.iter().map(|n| n.timeout.as_secs_f64()).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?)
    })
    .await?;
    Ok(rows.into_iter().map(|row| (row.0, row)).collect())
}

/// What `wallet.hold_batch` answered for `new`, as the caller's outcome.
async fn hold_outcome(
    pool: &PgPool,
    new: &NewTransfer,
    outcome: &str,
    created_at: Option<DateTime<Utc>>,
    timeout_at: Option<DateTime<Utc>>,
) -> Result<Outcome<Transfer>, LedgerError> {
    match (outcome, created_at) {
        // Created now: everything is known, no need to read it back (every accept's path).
        ("created", Some(created_at)) => Ok(Outcome::Created(Transfer {
            id: new.id.0,
            kind: "payment".into(),
            from_user_id: Some(new.from.0),
            to_user_id: Some(new.to.0),
            amount: Some(new.amount),
            currency: Some(new.currency.code().to_string()),
            state: TransferState::Pending,
            timeout_at,
            created_at,
            resolved_at: None,
        })),
        ("exists", _) => existing(pool, new).await,
        ("insufficient_funds", _) => Err(LedgerError::InsufficientFunds),
        ("sender_not_found", _) => Err(LedgerError::SenderNotFound),
        ("recipient_not_found", _) => Err(LedgerError::RecipientNotFound),
        ("currency_mismatch", _) => Err(LedgerError::CurrencyMismatch),
        (other, _) => Err(LedgerError::Db(sqlx::Error::Protocol(format!("wallet.hold_batch answered {other:?}")))),
    }
}

/// `wallet.hold_batch`'s answer for one id: outcome, created_at, timeout_at.
type HoldRow = (Uuid, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The id was taken: the same request again is a success, anything else a conflict.
async fn existing(pool: &PgPool, new: &NewTransfer) -> Result<Outcome<Transfer>, LedgerError> {
    let transfer = get_transfer(pool, new.id).await?.ok_or(LedgerError::Retry)?;
    if transfer.kind == "tombstone" {
        return Err(LedgerError::AlreadyVoided);
    }
    if new.same_as(&transfer) {
        Ok(Outcome::Existing(transfer))
    } else {
        Err(LedgerError::Conflict)
    }
}

/// Posts a pending transfer: the money moves, exactly once. Posting a posted
/// transfer is a success without a second movement. (A batch of one.)
pub async fn post(pool: &PgPool, id: TransferId) -> Result<Transfer, LedgerError> {
    match post_many(pool, &[id.0]).await?.first().map(|(_, outcome)| *outcome) {
        Some(BatchOutcome::Posted) => get_transfer(pool, id).await?.ok_or(LedgerError::NotFound),
        Some(BatchOutcome::Voided) => Err(LedgerError::AlreadyVoided),
        Some(BatchOutcome::NotFound) | None => Err(LedgerError::NotFound),
    }
}

/// Final state of one transfer of a batch post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchOutcome {
    Posted,
    Voided,
    NotFound,
}

/// Posts many pending transfers in one database transaction (the worker's
/// batches): one lock pass over their accounts, one balance update per
/// account, one insert of all ledger entries. Same guarantees as [`post`]:
/// each transfer moves at most once, already posted ones are successes.
pub async fn post_many(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<(Uuid, BatchOutcome)>, LedgerError> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    retrying(|| async {
        // wallet.post_batch (migrations/0004_post_batch_function.sql): one round trip, one commit.
        let states: Vec<(Uuid, TransferState)> =
            sqlx::query_as("SELECT o_id, o_state FROM wallet.post_batch($1)").bind(&ids).fetch_all(pool).await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            let outcome = match states.iter().find(|s| s.0 == *id).map(|s| s.1) {
                Some(TransferState::Posted) => BatchOutcome::Posted,
                Some(TransferState::Voided) => BatchOutcome::Voided,
                // Pending after our pass: a concurrent create committed in between.
                Some(TransferState::Pending) => return Err(LedgerError::Retry),
                None => BatchOutcome::NotFound,
            };
            out.push((*id, outcome));
        }
        Ok(out)
    })
    .await
}

/// Voids a pending transfer, releasing the hold. Voiding an id never seen
/// records a tombstone so that a late create with that id is refused.
pub async fn void(pool: &PgPool, id: TransferId) -> Result<Transfer, LedgerError> {
    retrying(|| async {
        let mut tx = payflow_common::db::begin(pool).await?;
        let row: Option<(Uuid, i64)> = sqlx::query_as(VOID_PENDING).bind(id.0).fetch_optional(&mut *tx).await?;
        if let Some((debit, amount)) = row {
            sqlx::query(
                "UPDATE wallet.accounts SET pending_debits = pending_debits - $2, updated_at = now() WHERE id = $1",
            )
            .bind(debit)
            .bind(amount)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return get_transfer(pool, id).await?.ok_or(LedgerError::NotFound);
        }
        let tombstoned = sqlx::query(
            "INSERT INTO wallet.transfers (id, kind, state, resolved_at) VALUES ($1, 'tombstone', 'voided', now()) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        let t = get_transfer(pool, id).await?.ok_or(LedgerError::NotFound)?;
        if tombstoned == 1 {
            return Ok(t);
        }
        match t.state {
            TransferState::Voided => Ok(t),
            TransferState::Posted => Err(LedgerError::AlreadyPosted),
            // Created between our update and insert: void it properly.
            TransferState::Pending => Err(LedgerError::Retry),
        }
    })
    .await
}

/// Moves `amount` (held nowhere: the sign-up credit) from `debit` to `credit`
/// with two ledger entries. Accounts are locked in id order first, the one
/// order every path uses. `NO KEY UPDATE` (not `UPDATE`) so that concurrent
/// inserts of transfers, whose foreign keys take `KEY SHARE` on the same
/// accounts, do not deadlock with it. Posting holds is [`post_many`].
async fn move_money(
    tx: &mut Transaction<'_, Postgres>,
    transfer: Uuid,
    debit: Uuid,
    credit: Uuid,
    amount: i64,
) -> Result<(), LedgerError> {
    sqlx::query("SELECT id FROM wallet.accounts WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(vec![debit, credit])
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE wallet.accounts SET balance = balance - $2, updated_at = now() WHERE id = $1")
        .bind(debit)
        .bind(amount)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE wallet.accounts SET balance = balance + $2, updated_at = now() WHERE id = $1")
        .bind(credit)
        .bind(amount)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO wallet.ledger_entries (transfer_id, account_id, amount) VALUES ($1, $2, -$4), ($1, $3, $4)",
    )
    .bind(transfer)
    .bind(debit)
    .bind(credit)
    .bind(amount)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn migrated_pool(connections: u32) -> PgPool {
        let url = std::env::var("PAYFLOW_TEST_DATABASE_URL")
            .expect("PAYFLOW_TEST_DATABASE_URL is not set: run the tests with scripts/test.sh");
        let pool =
            sqlx::postgres::PgPoolOptions::new().max_connections(connections).connect(&url).await.expect("connect");
        crate::migrate(&pool).await.expect("migrate");
        pool
    }

    /// Two new USD wallets holding 1000.00 each.
    async fn two_wallets_of_1000(pool: &PgPool) -> (Currency, UserId, UserId) {
        let usd = Currency::parse("USD").expect("USD");
        let (from, to) = (UserId(Uuid::now_v7()), UserId(Uuid::now_v7()));
        for user in [from, to] {
            create_wallet(pool, user, "ledger test", usd, 100_000).await.expect("wallet");
        }
        (usd, from, to)
    }

    #[tokio::test]
    async fn a_hold_repeated_while_the_first_is_uncommitted_finds_it_instead_of_refusing() {
        let pool = migrated_pool(3).await;
        let (usd, from, to) = two_wallets_of_1000(&pool).await;
        // 600.00 of 1000.00: a second hold of it would not fit beside the first.
        let new = NewTransfer {
            id: TransferId(Uuid::now_v7()),
            from,
            to,
            amount: 60_000,
            currency: usd,
            timeout: Duration::from_secs(60),
        };
        let mut first = payflow_common::db::begin(&pool).await.expect("begin");
        let outcome: String = sqlx::query_scalar("SELECT o_outcome FROM wallet.hold_batch($1, $2, $3, $4, $5, $6)")
            .bind(vec![new.id.0])
            .bind(vec![from.0])
            .bind(vec![to.0])
            .bind(vec![new.amount])
            .bind(vec!["USD"])
            .bind(vec![60.0_f64])
            .fetch_one(&mut *first)
            .await
            .expect("first hold");
        assert_eq!(outcome, "created");

        // The repeat (a retry after a timeout) waits for the sender's row behind the first.
        let repeat = tokio::spawn({
            let (pool, new) = (pool.clone(), new.clone());
            async move { create_pending(&pool, &new).await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%hold_batch%'",
            )
            .fetch_one(&pool)
            .await
            .expect("activity");
            if waiting > 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the repeated hold never waited for the first");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        first.commit().await.expect("commit");
        let repeat = repeat.await.expect("join");
        assert!(matches!(repeat, Ok(Outcome::Existing(ref t)) if t.id == new.id.0), "{repeat:?}");
        let w = get_wallet(&pool, from).await.expect("read").expect("wallet");
        assert_eq!((w.balance, w.pending_debits), (100_000, 60_000), "held once: {w:?}");
    }

    #[tokio::test]
    async fn an_id_repeated_in_one_batch_gets_what_it_would_get_after_the_first() {
        let pool = migrated_pool(2).await;
        let (usd, from, to) = two_wallets_of_1000(&pool).await;
        let new = |id: Uuid, amount| NewTransfer {
            id: TransferId(id),
            from,
            to,
            amount,
            currency: usd,
            timeout: Duration::from_secs(60),
        };
        // Refused, twice in the batch: the repeat is refused the same way (it was a 503).
        let too_much = new(Uuid::now_v7(), 200_000);
        // Held, then repeated as is (the same hold) and with another amount (a conflict).
        let fits = new(Uuid::now_v7(), 10_000);
        let reused = new(fits.id.0, 10_001);
        let batch = [too_much.clone(), fits.clone(), too_much.clone(), fits.clone(), reused];
        let results = create_pending_many(&pool, &batch).await.expect("batch");
        assert!(matches!(results[0], Err(LedgerError::InsufficientFunds)), "{results:?}");
        assert!(matches!(results[1], Ok(Outcome::Created(_))), "{results:?}");
        assert!(matches!(results[2], Err(LedgerError::InsufficientFunds)), "{results:?}");
        assert!(matches!(results[3], Ok(Outcome::Existing(ref t)) if t.id == fits.id.0), "{results:?}");
        assert!(matches!(results[4], Err(LedgerError::Conflict)), "{results:?}");
        let w = get_wallet(&pool, from).await.expect("read").expect("wallet");
        assert_eq!((w.balance, w.pending_debits), (100_000, 10_000), "held once: {w:?}");
    }

    #[tokio::test]
    async fn holds_past_their_timeout_and_grace_are_voided_and_nothing_else() {
        let pool = migrated_pool(2).await;
        let (usd, from, to) = two_wallets_of_1000(&pool).await;
        let hold = |amount| NewTransfer {
            id: TransferId(Uuid::now_v7()),
            from,
            to,
            amount,
            currency: usd,
            timeout: Duration::from_secs(60),
        };
        let (expired, posted, fresh) = (hold(1_000), hold(2_000), hold(4_000));
        for h in [&expired, &posted, &fresh] {
            assert!(matches!(create_pending(&pool, h).await, Ok(Outcome::Created(_))));
        }
        post(&pool, posted.id).await.expect("post");
        // The first and the posted one timed out ten minutes ago.
        sqlx::query("UPDATE wallet.transfers SET timeout_at = now() - interval '10 minutes' WHERE id = ANY($1)")
            .bind(vec![expired.id.0, posted.id.0])
            .execute(&pool)
            .await
            .expect("age");

        // Only expired holds of this test: other tests' holds may be in the table.
        let mine = |ids: Vec<Uuid>| ids.into_iter().filter(|id| [expired.id.0, fresh.id.0].contains(id)).count();
        assert_eq!(mine(void_expired(&pool, Duration::from_secs(900), 1000).await.expect("sweep")), 0, "within grace");
        let voided = void_expired(&pool, Duration::from_secs(120), 1000).await.expect("sweep");
        assert!(voided.contains(&expired.id.0) && !voided.contains(&fresh.id.0), "{voided:?}");
        let state = |id: TransferId| {
            let pool = pool.clone();
            async move { get_transfer(&pool, id).await.expect("read").expect("transfer").state }
        };
        assert_eq!(state(expired.id).await, TransferState::Voided);
        assert_eq!(state(posted.id).await, TransferState::Posted);
        assert_eq!(state(fresh.id).await, TransferState::Pending);
        let w = get_wallet(&pool, from).await.expect("read").expect("wallet");
        assert_eq!((w.balance, w.pending_debits), (98_000, 4_000), "only the fresh hold is left: {w:?}");
    }

    #[tokio::test]
    async fn guarded_statements_by_id_use_the_primary_key_not_the_pending_index() {
        let pool = migrated_pool(1).await;
        let ids = vec![Uuid::now_v7(), Uuid::now_v7()];
        let body: String = sqlx::query_scalar(
            "SELECT prosrc FROM pg_proc WHERE proname = 'post_batch' AND pronamespace = 'wallet'::regnamespace",
        )
        .fetch_one(&pool)
        .await
        .expect("wallet.post_batch exists");
        assert!(body.contains(LOCK_PENDING), "wallet.post_batch no longer locks with LOCK_PENDING:\n{body}");
        let sqls = [LOCK_PENDING.replace("p_ids", "$1"), VOID_PENDING.to_string()].map(|sql| format!("EXPLAIN {sql}"));
        let plans = [
            ("post: lock", sqlx::query_scalar(&sqls[0]).bind(&ids)),
            ("void", sqlx::query_scalar(&sqls[1]).bind(ids[0])),
        ];
        for (what, query) in plans {
            let plan: Vec<String> = query.fetch_all(&pool).await.expect("explain");
            let plan = plan.join("\n");
            assert!(plan.contains("transfers_pkey"), "{what}: not on the primary key:\n{plan}");
            assert!(!plan.contains("transfers_pending_by_timeout"), "{what}: on the partial index:\n{plan}");
        }
    }
}
