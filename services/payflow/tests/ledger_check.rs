//! `payflow ledger-check` and `payflow migrate` against databases of their own:
//! the cases here break the ledger on purpose, which must not show in the shared
//! test database that every other test's ledger check reads.

use std::future::Future;
use std::process::{Command, Output};
use std::time::Duration;

use futures::FutureExt;
use payflow_common::ids::{TransferId, UserId};
use payflow_common::money::Currency;
use payflow_wallet::ledger::{self, NewTransfer};
use sqlx::PgPool;
use uuid::Uuid;

fn test_url() -> String {
    std::env::var("PAYFLOW_TEST_DATABASE_URL")
        .expect("PAYFLOW_TEST_DATABASE_URL is not set: run the tests with scripts/test.sh")
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').expect("the URL names a database");
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

/// Runs `test` with the URL of a new, empty database, dropped afterwards (also when the test fails).
async fn in_fresh_database<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let admin = PgPool::connect(&test_url()).await.expect("connect");
    let name = format!("payflow_test_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create database");
    let outcome = std::panic::AssertUnwindSafe(test(with_database(&test_url(), &name))).catch_unwind().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&admin).await.expect("drop database");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn payflow(args: &[&str], database_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_payflow"))
        .args(args)
        .env("PAYFLOW_DATABASE_URL", database_url)
        .env("PAYFLOW_LOG", "error")
        .env_remove("PAYFLOW_DB_MAX_CONNECTIONS")
        .output()
        .expect("run payflow")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `payflow ledger-check`: its exit code, the JSON report, stderr.
fn ledger_check(url: &str) -> (Option<i32>, serde_json::Value, String) {
    let out = payflow(&["ledger-check"], url);
    let (stdout, stderr) = text(&out);
    let report = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), report, stderr)
}

/// A transaction row as the transaction service writes it.
async fn record(pool: &PgPool, id: Uuid, from: UserId, to: UserId, amount: i64, status: &str) {
    let done = status == "COMPLETED" || status == "FAILED";
    sqlx::query(
        "INSERT INTO txn.transactions (id, from_user_id, to_user_id, amount, currency, status, error_message, completed_at) \
         VALUES ($1, $2, $3, $4, 'USD', $5, CASE WHEN $5 = 'FAILED' THEN 'reversed' END, CASE WHEN $6 THEN now() END)",
    )
    .bind(id)
    .bind(from.0)
    .bind(to.0)
    .bind(amount)
    .bind(status)
    .bind(done)
    .execute(pool)
    .await
    .expect("insert transaction");
}

async fn hold(pool: &PgPool, from: UserId, to: UserId, amount: i64) -> Uuid {
    let id = Uuid::now_v7();
    let new = NewTransfer {
        id: TransferId(id),
        from,
        to,
        amount,
        currency: Currency::USD,
        timeout: Duration::from_secs(600),
    };
    ledger::create_pending(pool, &new).await.expect("hold");
    id
}

#[tokio::test]
async fn ledger_check_finds_a_failed_transaction_whose_money_moved() {
    in_fresh_database(|url| async move {
        let out = payflow(&["migrate"], &url);
        assert!(out.status.success(), "migrate: {:?}", text(&out));
        let pool = PgPool::connect(&url).await.expect("connect");
        let (a, b) = (UserId(Uuid::now_v7()), UserId(Uuid::now_v7()));
        for user in [a, b] {
            ledger::create_wallet(&pool, user, "ledger check", Currency::USD, 100_000).await.expect("wallet");
        }
        // Consistent: settled, reversed, and one still open (any transfer state is fine then).
        let settled = hold(&pool, a, b, 1_000).await;
        ledger::post(&pool, TransferId(settled)).await.expect("post");
        record(&pool, settled, a, b, 1_000, "COMPLETED").await;
        let reversed = hold(&pool, a, b, 2_000).await;
        ledger::void(&pool, TransferId(reversed)).await.expect("void");
        record(&pool, reversed, a, b, 2_000, "FAILED").await;
        let open = hold(&pool, a, b, 3_000).await;
        ledger::post(&pool, TransferId(open)).await.expect("post");
        record(&pool, open, a, b, 3_000, "PROCESSING").await;

        let (code, report, stderr) = ledger_check(&url);
        assert_eq!(code, Some(0), "{report:#}\n{stderr}");
        assert_eq!(report["transactions"], 3, "{report:#}");
        assert!(stderr.contains("ledger ok") && stderr.contains("3 transactions"), "{stderr}");

        // Broken: FAILED although its transfer was posted; COMPLETED although nothing moved.
        let moved = hold(&pool, a, b, 4_000).await;
        ledger::post(&pool, TransferId(moved)).await.expect("post");
        record(&pool, moved, a, b, 4_000, "FAILED").await;
        let held = hold(&pool, a, b, 5_000).await;
        record(&pool, held, a, b, 5_000, "COMPLETED").await;
        // And one whose transfer moves another amount than the transaction says.
        let other = hold(&pool, a, b, 6_000).await;
        record(&pool, other, a, b, 6_001, "PENDING").await;

        let (code, report, stderr) = ledger_check(&url);
        assert_eq!(code, Some(1), "{report:#}\n{stderr}");
        let problems: Vec<String> = report["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .map(|p| p.as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        let about = |id: Uuid| problems.iter().find(|p| p.contains(&id.to_string())).cloned().unwrap_or_default();
        assert!(about(moved).contains("FAILED") && about(moved).contains("posted"), "{problems:#?}");
        assert!(about(held).contains("COMPLETED") && about(held).contains("pending"), "{problems:#?}");
        assert!(about(other).contains("6001") && about(other).contains("6000"), "{problems:#?}");
        assert!(stderr.contains("FAILED: 3 problem(s)"), "{stderr}");
        pool.close().await;
    })
    .await;
}

#[tokio::test]
async fn ledger_check_says_when_it_could_not_compare_the_transactions() {
    in_fresh_database(|url| async move {
        // Only the wallet schema: the ledger is fine, the comparison cannot run.
        let pool = PgPool::connect(&url).await.expect("connect");
        payflow_wallet::migrate(&pool).await.expect("migrate wallet");
        let (code, report, stderr) = ledger_check(&url);
        assert_eq!(code, Some(2), "{report:#}\n{stderr}");
        assert!(report["transactions"].is_null(), "{report:#}");
        assert!(report["skipped"][0].as_str().unwrap_or_default().contains("txn.transactions"), "{report:#}");
        assert!(stderr.contains("INCOMPLETE") && !stderr.contains("ledger ok"), "{stderr}");
        pool.close().await;
    })
    .await;
}

#[tokio::test]
async fn ledger_check_exits_2_when_it_cannot_reach_postgres() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let (code, report, stderr) = ledger_check(&format!("postgres://someone:pw-s3cr3t@127.0.0.1:{port}/payflow"));
    assert_eq!(code, Some(2), "{stderr}");
    // Stdout holds no report (at most the JSON log line of the error).
    assert!(report.get("problems").is_none(), "no report: {report}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")) && !stderr.contains("pw-s3cr3t"), "{stderr}");
}

#[test]
fn a_pool_of_no_connections_is_a_usage_error_not_a_panic() {
    for sub in ["ledger-check", "migrate"] {
        let out = payflow(&[sub, "--db-max-connections", "0"], "postgres://127.0.0.1:1/none");
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{sub}: {stderr}");
        assert!(stderr.contains("--db-max-connections") && !stderr.contains("panicked"), "{sub}: {stderr}");
    }
}

#[tokio::test]
async fn migrate_succeeds_after_a_rollback_to_a_release_without_the_newest_migration() {
    in_fresh_database(|url| async move {
        let out = payflow(&["migrate"], &url);
        assert!(out.status.success(), "migrate: {:?}", text(&out));
        // The previous release: wallet's migrations without the newest.
        let pool = PgPool::connect(&url).await.expect("connect");
        let all = &payflow_wallet::MIGRATOR;
        let previous = sqlx::migrate::Migrator {
            migrations: all.migrations[..all.migrations.len() - 1].to_vec().into(),
            ignore_missing: false,
            locking: true,
            no_tx: false,
        };
        payflow_common::db::migrate_schema(&pool, payflow_wallet::SCHEMA, &previous)
            .await
            .expect("the previous release's migrations run on the newer schema");
        // Rolled forward again: nothing to do.
        let out = payflow(&["migrate"], &url);
        assert!(out.status.success(), "migrate again: {:?}", text(&out));
        pool.close().await;
    })
    .await;
}
