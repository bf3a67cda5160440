//! `payflow`: every PayFlow component in one binary; the subcommand picks the role.

mod dev;

use clap::{Parser, Subcommand};
use payflow_common::config::DbArgs;
use payflow_common::shutdown::CancellationToken;

// malloc and free were about a sixth of the services' CPU samples in the
// send-money benchmark under glibc (many small, short-lived allocations across
// threads); mimalloc is built for that pattern.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "payflow", version, about = "PayFlow payment platform", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The public API gateway (port 3000).
    Gateway(payflow_gateway::Config),
    /// The auth service: users, tokens, JWKS (port 3004).
    Auth(payflow_auth::Config),
    /// The wallet service: accounts, ledger, two-phase transfers (port 3001).
    Wallet(payflow_wallet::Config),
    /// The transaction service: send money, idempotency, outbox relay (port 3002).
    Transaction(payflow_transaction::Config),
    /// Settles transactions from the queue (metrics on port 3005).
    Worker(payflow_transaction::WorkerConfig),
    /// Voids or completes transactions stuck longer than --older-than, then exits.
    ReversePending(payflow_transaction::ReversalConfig),
    /// The notification service: stores and delivers notifications of events (port 3003).
    Notification(payflow_notification::Config),
    /// Every component in one process, for local use.
    Dev(dev::DevArgs),
    /// Creates or upgrades every service's schema, then exits.
    Migrate(DbArgs),
    /// Verifies the ledger and that transactions agree with it; exits 1 on a problem, 2 if it could not check.
    ///
    /// From one read-only snapshot: balances sum to zero per currency and match their entries, holds
    /// match pending transfers, no negative available balance, posted transfers have two entries;
    /// then, when schema txn is readable, every COMPLETED transaction's transfer is posted, no FAILED
    /// one's is posted or pending, and each transfer moves what its transaction says. Prints a JSON
    /// report to stdout and a summary line to stderr.
    ///
    /// Exit status: 0 every check ran and found nothing; 1 a problem was found (under "problems");
    /// 2 it could not check: no connection, a query failed, or a check was skipped (under
    /// "skipped", e.g. txn.transactions not readable) while the others found nothing.
    LedgerCheck(DbArgs),
    /// Prints a new Ed25519 private key (PKCS#8 PEM) for PAYFLOW_JWT_PRIVATE_KEY.
    Keygen,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    payflow_common::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("payflow: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "payflow failed");
            eprintln!("payflow: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<std::process::ExitCode> {
    let cancel = CancellationToken::new();
    match command {
        Command::Gateway(cfg) => payflow_gateway::run(cfg, cancel).await?,
        Command::Auth(cfg) => payflow_auth::run(cfg, cancel).await?,
        Command::Wallet(cfg) => payflow_wallet::run(cfg, cancel).await?,
        Command::Transaction(cfg) => payflow_transaction::run(cfg, cancel).await?,
        Command::Worker(cfg) => payflow_transaction::worker::run(cfg, cancel).await?,
        Command::ReversePending(cfg) => {
            let report = payflow_transaction::reversal::run(&cfg).await?;
            println!("{}", serde_json::to_string(&report)?);
            if report.errors > 0 {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Notification(cfg) => payflow_notification::run(cfg, cancel).await?,
        Command::Dev(args) => dev::run(args, cancel).await?,
        Command::Migrate(db) => migrate(&db).await?,
        Command::LedgerCheck(db) => return Ok(ledger_check(&db).await),
        Command::Keygen => print!("{}", payflow_common::jwt::JwtSigner::generate_pem()?),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

pub(crate) async fn migrate(db: &DbArgs) -> anyhow::Result<()> {
    let pool = payflow_common::db::connect(db, "migrate").await?;
    payflow_auth::migrate(&pool).await?;
    payflow_wallet::migrate(&pool).await?;
    payflow_transaction::migrate(&pool).await?;
    payflow_notification::migrate(&pool).await?;
    tracing::info!("migrations applied");
    pool.close().await;
    Ok(())
}

/// Exit status of `ledger-check` when it could not check (clap's usage errors exit 2 as well).
const LEDGER_NOT_CHECKED: u8 = 2;

async fn ledger_check(db: &DbArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let checked = async {
        let pool = payflow_common::db::connect(db, "ledger-check").await?;
        let report = payflow_wallet::ledger_check(&pool).await;
        pool.close().await;
        let report = report?;
        let json = serde_json::to_string_pretty(&report)?;
        anyhow::Ok((report, json))
    };
    let (report, json) = match checked.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "ledger check could not run");
            eprintln!("ledger check could not run: {e:#}");
            return ExitCode::from(LEDGER_NOT_CHECKED);
        }
    };
    println!("{json}");
    let skipped = report.skipped.join("; ");
    if !report.is_ok() {
        let also = if skipped.is_empty() { String::new() } else { format!(" (and skipped: {skipped})") };
        eprintln!("ledger check FAILED: {} problem(s){also}", report.problems.len());
        ExitCode::FAILURE
    } else if !report.is_complete() {
        eprintln!(
            "ledger check INCOMPLETE: no problem in {} accounts, {} transfers, {} entries, but skipped: {skipped}",
            report.accounts, report.transfers, report.entries
        );
        ExitCode::from(LEDGER_NOT_CHECKED)
    } else {
        eprintln!(
            "ledger ok: {} accounts, {} transfers, {} entries, {} transactions agree with them",
            report.accounts,
            report.transfers,
            report.entries,
            report.transactions.unwrap_or_default()
        );
        ExitCode::SUCCESS
    }
}
