//! `payflow ledger-check`: verifies the ledger's invariants from the data, and
//! that the transaction service's outcomes agree with the ledger.

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Every violated invariant, with enough detail to find the rows.
#[derive(Debug, Default, Serialize)]
pub struct LedgerReport {
    pub accounts: i64,
    pub transfers: i64,
    pub entries: i64,
    /// Transactions (schema `txn`) compared with their transfers; `null` when
    /// that comparison did not run (see `skipped`).
    pub transactions: Option<i64>,
    pub problems: Vec<String>,
    /// Checks that did not run, each with the reason: the report is incomplete.
    pub skipped: Vec<String>,
}

impl LedgerReport {
    /// No problem found (in what was checked: see [`LedgerReport::is_complete`]).
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Every check ran.
    pub fn is_complete(&self) -> bool {
        self.skipped.is_empty()
    }
}

/// Checks, per currency and per account:
/// - the balances of all accounts sum to zero;
/// - every balance equals the sum of its ledger entries;
/// - every account's held amount equals its pending debits;
/// - no user account's available balance is negative;
/// - every posted transfer has exactly two entries that sum to zero and move
///   its amount; other transfers have none;
///
/// and, when schema `txn` is readable from this connection (one database holds
/// every schema, locally and on Kubernetes), per transaction (its transfer has
/// its id; see [`check_transactions`]):
/// - a COMPLETED transaction's transfer is posted;
/// - a FAILED transaction's transfer is not posted (its money never moved)
///   and not pending (nothing holds its money, so nothing can post it);
/// - the transfer moves what the transaction says: amount, currency, sender, recipient.
///
/// All from one snapshot. When `txn` is not readable the comparison is listed
/// in `skipped`, never counted as passed.
pub async fn ledger_check(pool: &PgPool) -> Result<LedgerReport, sqlx::Error> {
    let mut report = LedgerReport::default();
    // One snapshot, so concurrent transfers cannot make a consistent ledger look broken.
    let mut tx = payflow_common::db::begin(pool).await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
    (report.accounts, report.transfers, report.entries) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM wallet.accounts), (SELECT count(*) FROM wallet.transfers), \
         (SELECT count(*) FROM wallet.ledger_entries)",
    )
    .fetch_one(&mut *tx)
    .await?;

    let sums: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT currency::text, sum(balance)::bigint FROM wallet.accounts GROUP BY currency HAVING sum(balance) <> 0",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (currency, sum) in sums {
        report.problems.push(format!("balances in {currency} sum to {} minor units, not 0", sum.unwrap_or(0)));
    }

    let drift: Vec<(uuid::Uuid, i64, i64)> = sqlx::query_as(
        "SELECT a.id, a.balance, COALESCE(sum(e.amount), 0)::bigint FROM wallet.accounts a \
         LEFT JOIN wallet.ledger_entries e ON e.account_id = a.id GROUP BY a.id \
         HAVING a.balance <> COALESCE(sum(e.amount), 0)",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (id, balance, entries) in drift {
        report.problems.push(format!("account {id}: balance {balance} but its entries sum to {entries}"));
    }

    let holds: Vec<(uuid::Uuid, i64, i64)> = sqlx::query_as(
        "SELECT a.id, a.pending_debits, COALESCE(sum(t.amount), 0)::bigint FROM wallet.accounts a \
         LEFT JOIN wallet.transfers t ON t.debit_account_id = a.id AND t.state = 'pending' GROUP BY a.id \
         HAVING a.pending_debits <> COALESCE(sum(t.amount), 0)",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (id, held, pending) in holds {
        report.problems.push(format!("account {id}: holds {held} but its pending debits sum to {pending}"));
    }

    let negative: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT id, balance - pending_debits FROM wallet.accounts WHERE kind = 'user' AND balance - pending_debits < 0",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (id, available) in negative {
        report.problems.push(format!("account {id}: available balance {available} is negative"));
    }

    let bad_transfers: Vec<(uuid::Uuid, String, i64, i64)> = sqlx::query_as(
        "SELECT t.id, t.state, count(e.id), COALESCE(sum(e.amount), 0)::bigint FROM wallet.transfers t \
         LEFT JOIN wallet.ledger_entries e ON e.transfer_id = t.id GROUP BY t.id \
         HAVING (t.state = 'posted' AND (count(e.id) <> 2 OR COALESCE(sum(e.amount), 0) <> 0 \
                 OR max(e.amount) <> t.amount OR min(e.amount) <> -t.amount \
                 OR bool_or(e.amount < 0 AND e.account_id <> t.debit_account_id) \
                 OR bool_or(e.amount > 0 AND e.account_id <> t.credit_account_id))) \
             OR (t.state <> 'posted' AND count(e.id) <> 0)",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (id, state, n, sum) in bad_transfers {
        report.problems.push(format!("transfer {id} ({state}): {n} entries summing to {sum}"));
    }

    match transactions_readable(&mut tx).await? {
        Ok(()) => check_transactions(&mut tx, &mut report).await?,
        Err(why) => report.skipped.push(format!("transactions against transfers: {why}")),
    }
    tx.commit().await?;
    Ok(report)
}

/// Whether `txn.transactions` exists and this role may read it; if not, why.
/// (Asked of the catalog: naming a table of a schema without USAGE is an error.)
async fn transactions_readable(conn: &mut sqlx::PgConnection) -> Result<Result<(), String>, sqlx::Error> {
    let (exists, readable): (bool, bool) = sqlx::query_as(
        "SELECT c.oid IS NOT NULL, \
                COALESCE(has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT'), false) \
         FROM (SELECT 1) AS one \
         LEFT JOIN pg_namespace n ON n.nspname = 'txn' \
         LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'transactions'",
    )
    .fetch_one(conn)
    .await?;
    Ok(match (exists, readable) {
        (false, _) => Err("table txn.transactions does not exist in this database (migrated?)".into()),
        (true, false) => Err("table txn.transactions is not readable by this database user".into()),
        (true, true) => Ok(()),
    })
}

/// One transaction that disagrees with its transfer: the transaction's id,
/// status, amount, currency, sender and recipient, then the transfer's kind,
/// state, amount, currency, sender and recipient (all NULL when there is none).
type Disagreement = (
    Uuid,
    String,
    i64,
    String,
    Uuid,
    Uuid,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<Uuid>,
    Option<Uuid>,
);

/// The transaction service's outcomes against the ledger: the transfer id is
/// the transaction id. The order of effects makes these hold in any snapshot:
/// the worker and the reversal mark a transaction COMPLETED only after wallet
/// committed its post, and FAILED only after wallet committed its void (or
/// tombstone). Open transactions (PENDING, PROCESSING) are not judged: any
/// transfer state is normal for them until the reversal resolves them, after a
/// timeout this check does not know.
async fn check_transactions(conn: &mut sqlx::PgConnection, report: &mut LedgerReport) -> Result<(), sqlx::Error> {
    report.transactions =
        Some(sqlx::query_scalar("SELECT count(*) FROM txn.transactions").fetch_one(&mut *conn).await?);
    let rows: Vec<Disagreement> = sqlx::query_as(
        "SELECT x.id, x.status, x.amount, x.currency::text, x.from_user_id, x.to_user_id, \
                t.kind, t.state, t.amount, t.currency::text, d.user_id, c.user_id \
         FROM txn.transactions x \
         LEFT JOIN wallet.transfers t ON t.id = x.id \
         LEFT JOIN wallet.accounts d ON d.id = t.debit_account_id \
         LEFT JOIN wallet.accounts c ON c.id = t.credit_account_id \
         WHERE (x.status = 'COMPLETED' AND t.state IS DISTINCT FROM 'posted') \
            OR (x.status = 'FAILED' AND t.state IN ('posted', 'pending')) \
            OR (t.kind = 'payment' AND (t.amount <> x.amount OR t.currency <> x.currency \
                OR d.user_id IS DISTINCT FROM x.from_user_id OR c.user_id IS DISTINCT FROM x.to_user_id)) \
         ORDER BY x.id",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (id, status, amount, currency, from, to, kind, state, t_amount, t_currency, t_from, t_to) in rows {
        let state = state.as_deref();
        let found = match (kind.as_deref(), state) {
            (None, _) => "there is no transfer".to_string(),
            (Some("tombstone"), _) => "its transfer was voided before it was created (a tombstone)".to_string(),
            (Some(kind), Some(state)) => format!("its {kind} transfer is {state}"),
            (Some(kind), None) => format!("its {kind} transfer has no state"),
        };
        match (status.as_str(), state) {
            ("COMPLETED", s) if s != Some("posted") => {
                report.problems.push(format!("transaction {id} is COMPLETED but {found}: its money never moved"))
            }
            ("FAILED", Some("posted")) => {
                report.problems.push(format!("transaction {id} is FAILED but {found}: its money moved"))
            }
            ("FAILED", Some("pending")) => report
                .problems
                .push(format!("transaction {id} is FAILED but {found}: its money is held, and a post would move it")),
            _ => {}
        }
        if kind.as_deref() == Some("payment")
            && (t_amount != Some(amount)
                || t_currency.as_deref() != Some(currency.as_str())
                || t_from != Some(from)
                || t_to != Some(to))
        {
            let user = |u: Option<Uuid>| u.map_or_else(|| "nobody".to_string(), |u| u.to_string());
            report.problems.push(format!(
                "transaction {id} ({status}) moves {amount} {currency} from {from} to {to}, but its transfer \
                 moves {} {} from {} to {}",
                t_amount.map_or_else(|| "nothing".to_string(), |a| a.to_string()),
                t_currency.as_deref().unwrap_or("-"),
                user(t_from),
                user(t_to),
            ));
        }
    }
    Ok(())
}
