//! `payflow ledger-check`: verifies the ledger's invariants from the data.

use serde::Serialize;
use sqlx::PgPool;

/// Every violated invariant, with enough detail to find the rows.
#[derive(Debug, Default, Serialize)]
pub struct LedgerReport {
    pub accounts: i64,
    pub transfers: i64,
    pub entries: i64,
    pub problems: Vec<String>,
}

impl LedgerReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks, per currency and per account:
/// - the balances of all accounts sum to zero;
/// - every balance equals the sum of its ledger entries;
/// - every account's held amount equals its pending debits;
/// - no user account's available balance is negative;
/// - every posted transfer has exactly two entries that sum to zero and move
///   its amount; other transfers have none.
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
    tx.commit().await?;
    Ok(report)
}
