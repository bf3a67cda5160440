//! `payflow reverse-pending`: drives transactions stuck in PENDING or
//! PROCESSING to a final state. For each, wallet decides: a void that
//! succeeds (or records a never-seen id) means no money moved → FAILED; a
//! transfer already posted → COMPLETED.
//!
//! No database transaction and no row lock is open while wallet is asked (a
//! slow wallet must not stall the workers' updates of those rows, nor keep a
//! batch uncommitted past the Job's deadline). A pass works in claims:
//!
//! 1. It reads the next candidates (plain `SELECT`, keyset order by age).
//! 2. It claims them with a session advisory lock each (`pg_try_advisory_lock`
//!    on its own connection: another pass's claims are skipped, and every claim
//!    ends with the connection if the process dies), then keeps those still
//!    open (a pass that just finished one has released it after its commit).
//! 3. It voids each claimed transaction at wallet, one by one, and records the
//!    outcomes with the guarded status updates (`store::finish_in`, only rows
//!    still PENDING/PROCESSING change) in short commits, at least every second.
//! 4. It releases the claims.
//!
//! A void wallet accepted is followed by FAILED; if the pass dies in between,
//! the transaction is still open, the next pass voids it again and wallet
//! answers "voided" (voids are idempotent), so it becomes FAILED then. A worker
//! racing a pass on one transaction needs no lock either: wallet decides once,
//! and the guarded update lets only the first of them change the row.
//!
//! A pass stops taking work after its time budget (below the CronJob's
//! `activeDeadlineSeconds`) and after a number of wallet failures in a row;
//! what it left is for the next pass.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::config::ReversalConfig;
use crate::store;
use crate::wallet_client::{Resolution, WalletClient};

/// First key of the reversal's advisory locks (`pg_try_advisory_lock(int, int)`);
/// the second is [`claim_key`] of the transaction id. The two-key space does
/// not overlap the one-key space of the migrations' lock.
const CLAIM_CLASS: i32 = 0x7276_7273; // "rvrs"

/// Outcomes are recorded at least this often while a claim is worked through.
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// The next candidates, oldest first, after the cursor `($2, $3)` (`$2` NULL:
/// from the start). No lock: claiming is the advisory lock's job. The bare
/// status test lets the planner use the partial index `transactions_open`.
const CANDIDATES: &str = "SELECT id, created_at FROM txn.transactions \
     WHERE status IN ('PENDING', 'PROCESSING') AND created_at < now() - make_interval(secs => $1) \
     AND created_at >= COALESCE($2::timestamptz, '-infinity') \
     AND (created_at, id) > (COALESCE($2::timestamptz, '-infinity'), $3) \
     AND ($5::uuid[] IS NULL OR from_user_id = ANY($5)) \
     ORDER BY created_at, id LIMIT $4";

/// Takes the claims it can (`$1` ids, `$2` their keys): the ids claimed.
const CLAIM: &str = "SELECT c.id FROM unnest($1::uuid[], $2::int4[]) AS c(id, k) WHERE pg_try_advisory_lock($3, c.k)";

/// Which of the claimed `$1` are still open (read after the claim, so a pass
/// that finished one before releasing it is seen).
const STILL_OPEN: &str = "SELECT id, correlation_id FROM txn.transactions \
     WHERE id = ANY($1) AND (status IN ('PENDING', 'PROCESSING')) IS TRUE ORDER BY created_at, id";

/// Why a pass stopped before it ran out of candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    /// Its time budget ran out; the rest is for the next pass.
    TimeBudget,
    /// Wallet failed this many calls in a row.
    WalletFailures,
}

#[derive(Debug, Default, Serialize)]
pub struct ReversalReport {
    /// Voided at wallet and marked FAILED.
    pub reversed: u64,
    /// Found posted at wallet and marked COMPLETED.
    pub completed: u64,
    /// Wallet could not be asked; left for the next run.
    pub errors: u64,
    /// Set when the pass stopped early.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stopped>,
}

/// How much one pass does.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Only transactions created longer ago than this.
    pub older_than: Duration,
    /// Transactions claimed at a time.
    pub batch: i64,
    /// No new wallet call after this long (one call may still finish, ≤ 10 s).
    pub time_budget: Duration,
    /// Stop after this many wallet failures in a row.
    pub max_wallet_failures: u32,
}

impl Limits {
    /// `older_than` and `batch`, with the default budget (240 s) and failure limit (5).
    pub fn new(older_than: Duration, batch: i64) -> Self {
        Self { older_than, batch, time_budget: Duration::from_secs(240), max_wallet_failures: 5 }
    }
}

pub async fn run(cfg: &ReversalConfig) -> anyhow::Result<ReversalReport> {
    let pool = payflow_common::db::connect(&cfg.db, "reversal").await?;
    let wallet = WalletClient::new(&cfg.wallet)?;
    let topology = payflow_messaging::Topology::new(&cfg.amqp_prefix, 1);
    let limits = Limits {
        older_than: cfg.older_than,
        batch: cfg.batch,
        time_budget: cfg.time_budget,
        max_wallet_failures: cfg.max_wallet_failures,
    };
    let report = reverse_with(&pool, &wallet, &topology, &limits, None).await?;
    pool.close().await;
    Ok(report)
}

/// A pass with the default budget and failure limit. `senders`, when given,
/// limits the pass to transactions of those users.
pub async fn reverse(
    pool: &sqlx::PgPool,
    wallet: &WalletClient,
    topology: &payflow_messaging::Topology,
    older_than: Duration,
    batch: i64,
    senders: Option<&[Uuid]>,
) -> anyhow::Result<ReversalReport> {
    reverse_with(pool, wallet, topology, &Limits::new(older_than, batch), senders).await
}

/// One pass. `senders`, when given, limits it to transactions of those users.
pub async fn reverse_with(
    pool: &sqlx::PgPool,
    wallet: &WalletClient,
    topology: &payflow_messaging::Topology,
    limits: &Limits,
    senders: Option<&[Uuid]>,
) -> anyhow::Result<ReversalReport> {
    anyhow::ensure!(limits.batch >= 1, "the reversal batch must be at least 1");
    // A connection of its own, never returned to the pool: it holds the pass's
    // claims (session advisory locks), which end with it however the pass ends
    // (an error, a dropped future, a killed process).
    let mut conn = pool.acquire().await?.detach();
    let pass = Pass { wallet, topology, limits, senders, started: Instant::now() };
    let result = pass.run(&mut conn).await;
    let result = match result {
        Ok(report) => sqlx::query("UPDATE txn.reversal_stats SET runs = runs + 1, last_run_at = now()")
            .execute(&mut conn)
            .await
            .map(|_| report)
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    let _ = conn.close().await;
    let report = result?;
    match report.stopped {
        Some(reason) => tracing::warn!(?report, ?reason, "reversal stopped early; the rest is for the next pass"),
        None => tracing::info!(?report, "reversal finished"),
    }
    Ok(report)
}

/// The claim key of a transaction: its id folded to 32 bits. Two ids with one
/// key only make a pass skip one of them (the next pass takes it).
fn claim_key(id: &Uuid) -> i32 {
    let v = id.as_u128();
    let v = (v as u64) ^ ((v >> 64) as u64);
    ((v as u32) ^ ((v >> 32) as u32)) as i32
}

struct Pass<'a> {
    wallet: &'a WalletClient,
    topology: &'a payflow_messaging::Topology,
    limits: &'a Limits,
    senders: Option<&'a [Uuid]>,
    started: Instant,
}

/// Outcomes wallet gave that are not recorded yet.
#[derive(Default)]
struct Outcomes {
    completed: Vec<Uuid>,
    failed: Vec<(Uuid, String)>,
    since: Option<Instant>,
}

impl Outcomes {
    fn push_completed(&mut self, id: Uuid) {
        self.since.get_or_insert_with(Instant::now);
        self.completed.push(id);
    }

    fn push_failed(&mut self, id: Uuid, reason: String) {
        self.since.get_or_insert_with(Instant::now);
        self.failed.push((id, reason));
    }

    fn due(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= RECORD_EVERY)
    }
}

impl Pass<'_> {
    fn out_of_time(&self) -> bool {
        self.started.elapsed() >= self.limits.time_budget
    }

    async fn run(&self, conn: &mut PgConnection) -> anyhow::Result<ReversalReport> {
        let mut report = ReversalReport::default();
        let reason = format!("Timed out: not settled within {} s, reversed", self.limits.older_than.as_secs());
        let mut cursor: (Option<DateTime<Utc>>, Uuid) = (None, Uuid::nil());
        let mut failures_in_a_row = 0u32;
        while report.stopped.is_none() {
            if self.out_of_time() {
                report.stopped = Some(Stopped::TimeBudget);
                break;
            }
            let candidates: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(CANDIDATES)
                .bind(self.limits.older_than.as_secs_f64())
                .bind(cursor.0)
                .bind(cursor.1)
                .bind(self.limits.batch)
                .bind(self.senders)
                .fetch_all(&mut *conn)
                .await?;
            let Some(&(last_id, last_at)) = candidates.last() else { break };
            cursor = (Some(last_at), last_id);
            let ids: Vec<Uuid> = candidates.iter().map(|c| c.0).collect();
            let keys: Vec<i32> = ids.iter().map(claim_key).collect();
            let claimed: Vec<Uuid> =
                sqlx::query_scalar(CLAIM).bind(&ids).bind(&keys).bind(CLAIM_CLASS).fetch_all(&mut *conn).await?;
            let open: Vec<(Uuid, Option<String>)> = match claimed.is_empty() {
                true => Vec::new(),
                false => sqlx::query_as(STILL_OPEN).bind(&claimed).fetch_all(&mut *conn).await?,
            };
            let mut outcomes = Outcomes::default();
            for (id, corr) in &open {
                if self.out_of_time() {
                    report.stopped = Some(Stopped::TimeBudget);
                    break;
                }
                let corr = corr.clone().unwrap_or_else(|| id.to_string());
                match self.wallet.void(*id, &corr).await {
                    Ok(resolution) => {
                        failures_in_a_row = 0;
                        match resolution {
                            Resolution::Voided | Resolution::NotFound => outcomes.push_failed(*id, reason.clone()),
                            Resolution::Posted => outcomes.push_completed(*id),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(transaction_id = %id, error = %e, "reversal could not reach wallet");
                        report.errors += 1;
                        failures_in_a_row += 1;
                        if failures_in_a_row >= self.limits.max_wallet_failures {
                            report.stopped = Some(Stopped::WalletFailures);
                            break;
                        }
                    }
                }
                if outcomes.due() {
                    self.record(conn, &mut outcomes, &mut report).await?;
                }
            }
            self.record(conn, &mut outcomes, &mut report).await?;
            if !claimed.is_empty() {
                sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut *conn).await?;
            }
            if (candidates.len() as i64) < self.limits.batch {
                break;
            }
        }
        Ok(report)
    }

    /// Records `outcomes` (guarded updates, their events and the counts) in one
    /// short commit; a deadlock with a worker's batch is retried.
    async fn record(
        &self,
        conn: &mut PgConnection,
        outcomes: &mut Outcomes,
        report: &mut ReversalReport,
    ) -> anyhow::Result<()> {
        if outcomes.completed.is_empty() && outcomes.failed.is_empty() {
            return Ok(());
        }
        if !outcomes.failed.is_empty() {
            crate::fault::point("reversal-after-void");
        }
        let mut attempt = 0u64;
        let changed = loop {
            match self.record_once(conn, outcomes).await {
                Ok(changed) => break changed,
                Err(sqlx::Error::Database(db))
                    if attempt < 3 && matches!(db.code().as_deref(), Some("40P01" | "40001")) =>
                {
                    attempt += 1;
                    tracing::warn!(error = %db, attempt, "reversal: recording lost a race; again");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        for t in changed {
            match t.status {
                crate::model::Status::Completed => report.completed += 1,
                _ => report.reversed += 1,
            }
        }
        *outcomes = Outcomes::default();
        Ok(())
    }

    async fn record_once(
        &self,
        conn: &mut PgConnection,
        outcomes: &Outcomes,
    ) -> Result<Vec<crate::model::Transaction>, sqlx::Error> {
        let mut tx = conn.begin().await?;
        let changed = store::finish_in(&mut tx, self.topology, &outcomes.completed, &outcomes.failed).await?;
        let completed = changed.iter().filter(|t| t.status == crate::model::Status::Completed).count() as i64;
        sqlx::query("UPDATE txn.reversal_stats SET failed = failed + $1, completed = completed + $2")
            .bind(changed.len() as i64 - completed)
            .bind(completed)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::Json;
    use serde_json::{json, Value};
    use sqlx::PgPool;
    use uuid::Uuid;

    use super::{reverse_with, Limits, Stopped};
    use crate::wallet_client::WalletClient;

    /// A wallet's void endpoint that remembers what it voided, answering as wallet does.
    #[derive(Default)]
    struct Stub {
        /// Before answering.
        delay: Duration,
        /// Answer 503 to everything.
        down: bool,
        /// Void, then never answer.
        hang_after_void: bool,
        posted: HashSet<Uuid>,
        voided: Mutex<HashSet<Uuid>>,
        /// Every void call's id, in order (a client retry counts twice).
        calls: Mutex<Vec<Uuid>>,
        called: tokio::sync::Notify,
        voided_now: tokio::sync::Notify,
    }

    async fn void(State(s): State<Arc<Stub>>, Path(id): Path<Uuid>) -> (StatusCode, Json<Value>) {
        s.calls.lock().expect("calls").push(id);
        s.called.notify_one();
        if s.down {
            return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "down"})));
        }
        tokio::time::sleep(s.delay).await;
        if s.posted.contains(&id) {
            return (StatusCode::OK, Json(json!({"id": id, "state": "posted"})));
        }
        s.voided.lock().expect("voided").insert(id);
        if s.hang_after_void {
            s.voided_now.notify_one();
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        (StatusCode::OK, Json(json!({"id": id, "state": "voided"})))
    }

    /// Serves `stub` on a random port; a client of it.
    async fn serve(stub: Arc<Stub>) -> WalletClient {
        let router =
            axum::Router::new().route("/internal/transfers/{id}/void", axum::routing::post(void)).with_state(stub);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        WalletClient::new(&crate::config::WalletArgs {
            wallet_url: url,
            service_token: payflow_common::config::ServiceTokenArgs { service_token: "t".into() },
            pending_timeout_secs: 60,
        })
        .expect("client")
    }

    async fn pool() -> PgPool {
        let pool = crate::test_pool(6).await;
        crate::migrate(&pool).await.expect("migrate");
        pool
    }

    /// `n` PENDING transactions of a fresh sender, a minute old: the sender and the ids, oldest first.
    async fn stuck(pool: &PgPool, n: usize) -> (Uuid, Vec<Uuid>) {
        let sender = Uuid::new_v4();
        let mut ids = Vec::new();
        for i in 0..n {
            let id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO txn.transactions (id, from_user_id, to_user_id, amount, currency, status, correlation_id, \
                 created_at) VALUES ($1, $2, $3, 100, 'USD', 'PENDING', $2::text, \
                 now() - make_interval(secs => 60 - $4::float8 / 1000))",
            )
            .bind(id)
            .bind(sender)
            .bind(Uuid::new_v4())
            .bind(i as f64)
            .execute(pool)
            .await
            .expect("insert");
            ids.push(id);
        }
        (sender, ids)
    }

    /// Removes what [`stuck`] and the passes wrote for `sender` (rows without wallet
    /// transfers, events for a prefix no relay publishes), so the shared database's ledger
    /// check and outbox stay as the other tests expect.
    async fn forget(pool: &PgPool, sender: Uuid) {
        sqlx::query("DELETE FROM txn.transactions WHERE from_user_id = $1")
            .bind(sender)
            .execute(pool)
            .await
            .expect("rows");
        sqlx::query("DELETE FROM txn.outbox WHERE exchange = 'reversal-test.events' AND correlation_id = $1")
            .bind(sender.to_string())
            .execute(pool)
            .await
            .expect("events");
    }

    async fn statuses(pool: &PgPool, ids: &[Uuid]) -> Vec<String> {
        let mut rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM txn.transactions WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(pool)
                .await
                .expect("statuses");
        rows.sort_by_key(|r| ids.iter().position(|i| *i == r.0));
        rows.into_iter().map(|r| r.1).collect()
    }

    fn topology() -> payflow_messaging::Topology {
        payflow_messaging::Topology::new("reversal-test", 1)
    }

    fn limits() -> Limits {
        Limits::new(Duration::from_secs(30), 100)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_waiting_on_a_slow_wallet_holds_no_row_the_worker_needs() {
        let pool = pool().await;
        let (sender, ids) = stuck(&pool, 3).await;
        let stub = Arc::new(Stub { delay: Duration::from_millis(1500), ..Stub::default() });
        let wallet = serve(stub.clone()).await;
        let pass = {
            let (pool, senders) = (pool.clone(), [sender]);
            tokio::spawn(async move { reverse_with(&pool, &wallet, &topology(), &limits(), Some(&senders)).await })
        };
        stub.called.notified().await;
        // The worker's PROCESSING mark on the rows the pass has claimed and is asking wallet about.
        let started = Instant::now();
        let marked = tokio::time::timeout(
            Duration::from_secs(1),
            sqlx::query(crate::worker::MARK_PROCESSING).bind(&ids).execute(&pool),
        )
        .await
        .expect("the worker's update waited on the reversal")
        .expect("update");
        assert_eq!(marked.rows_affected(), 3);
        assert!(started.elapsed() < Duration::from_secs(1));
        let report = pass.await.expect("task").expect("pass");
        assert_eq!((report.reversed, report.completed, report.errors), (3, 0, 0), "{report:?}");
        assert_eq!(statuses(&pool, &ids).await, vec!["FAILED"; 3], "PROCESSING ones are reversed too");
        forget(&pool, sender).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_passes_at_once_ask_wallet_once_per_transaction_and_follow_its_answer() {
        let pool = pool().await;
        let (sender, ids) = stuck(&pool, 14).await;
        let posted: HashSet<Uuid> = [ids[2], ids[9]].into();
        let stub = Arc::new(Stub { delay: Duration::from_millis(20), posted: posted.clone(), ..Stub::default() });
        let wallet = serve(stub.clone()).await;
        let senders = [sender];
        let (topology, small, large) =
            (topology(), Limits::new(Duration::from_secs(30), 3), Limits::new(Duration::from_secs(30), 5));
        let (r1, r2) = tokio::join!(
            reverse_with(&pool, &wallet, &topology, &small, Some(&senders)),
            reverse_with(&pool, &wallet, &topology, &large, Some(&senders)),
        );
        let got = statuses(&pool, &ids).await;
        // COMPLETED rows without a wallet transfer would fail other tests' ledger checks:
        // gone before anything here may panic.
        forget(&pool, sender).await;
        let (r1, r2) = (r1.expect("pass"), r2.expect("pass"));
        let calls = stub.calls.lock().expect("calls").clone();
        let distinct: HashSet<Uuid> = calls.iter().copied().collect();
        assert_eq!((calls.len(), distinct.len()), (14, 14), "each once: {r1:?} {r2:?}");
        assert_eq!((r1.reversed + r2.reversed, r1.completed + r2.completed), (12, 2), "{r1:?} {r2:?}");
        for (id, status) in ids.iter().zip(got) {
            let want = if posted.contains(id) { "COMPLETED" } else { "FAILED" };
            assert_eq!(status, want, "{id}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_stops_after_wallet_failures_in_a_row_and_leaves_the_rest() {
        let pool = pool().await;
        let (sender, ids) = stuck(&pool, 6).await;
        let stub = Arc::new(Stub { down: true, ..Stub::default() });
        let wallet = serve(stub.clone()).await;
        let limits = Limits { max_wallet_failures: 3, ..limits() };
        let report = reverse_with(&pool, &wallet, &topology(), &limits, Some(&[sender])).await.expect("pass");
        assert_eq!((report.errors, report.stopped), (3, Some(Stopped::WalletFailures)), "{report:?}");
        let asked: HashSet<Uuid> = stub.calls.lock().expect("calls").iter().copied().collect();
        assert_eq!(asked, ids[..3].iter().copied().collect(), "the oldest three, then it stopped");
        assert_eq!(statuses(&pool, &ids).await, vec!["PENDING"; 6]);
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["stopped"], "wallet_failures");
        forget(&pool, sender).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_stops_taking_work_after_its_time_budget_and_records_what_it_did() {
        let pool = pool().await;
        let (sender, ids) = stuck(&pool, 8).await;
        let stub = Arc::new(Stub { delay: Duration::from_millis(300), ..Stub::default() });
        let wallet = serve(stub.clone()).await;
        let limits = Limits { time_budget: Duration::from_millis(700), ..limits() };
        let started = Instant::now();
        let report = reverse_with(&pool, &wallet, &topology(), &limits, Some(&[sender])).await.expect("pass");
        assert!(started.elapsed() < Duration::from_millis(700 + 300 + 500), "{:?}", started.elapsed());
        assert_eq!(report.stopped, Some(Stopped::TimeBudget), "{report:?}");
        assert!((1..8).contains(&report.reversed), "{report:?}");
        let voided = stub.voided.lock().expect("voided").clone();
        for (id, status) in ids.iter().zip(statuses(&pool, &ids).await) {
            let want = if voided.contains(id) { "FAILED" } else { "PENDING" };
            assert_eq!(status, want, "{id}: every void is recorded, nothing else changed");
        }
        assert_eq!(voided.len() as u64, report.reversed);
        // The next pass takes the rest: the claims were released.
        let stub_rest = Arc::new(Stub::default());
        let rest = reverse_with(
            &pool,
            &serve(stub_rest).await,
            &topology(),
            &super::Limits::new(Duration::from_secs(30), 100),
            Some(&[sender]),
        )
        .await
        .expect("pass");
        assert_eq!(rest.reversed + report.reversed, 8, "{rest:?}");
        forget(&pool, sender).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_void_whose_pass_died_before_recording_it_is_failed_by_the_next_pass() {
        let pool = pool().await;
        let (sender, ids) = stuck(&pool, 1).await;
        let stub = Arc::new(Stub { hang_after_void: true, ..Stub::default() });
        let wallet = serve(stub.clone()).await;
        let senders = [sender];
        {
            let (topology, limits) = (topology(), limits());
            let pass = reverse_with(&pool, &wallet, &topology, &limits, Some(&senders));
            tokio::select! {
                r = pass => panic!("the pass ended: {r:?}"),
                _ = stub.voided_now.notified() => {} // voided at wallet: the pass is dropped here
            }
        }
        assert_eq!(statuses(&pool, &ids).await, vec!["PENDING"], "voided at wallet, not recorded");
        // The same wallet, now answering: the void is repeated, wallet says voided → FAILED.
        let again =
            Arc::new(Stub { voided: Mutex::new(stub.voided.lock().expect("voided").clone()), ..Stub::default() });
        let wallet = serve(again).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // The dropped pass's claim ends when Postgres sees its connection close.
            let report = reverse_with(&pool, &wallet, &topology(), &limits(), Some(&senders)).await.expect("pass");
            if report.reversed == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "never finished: {report:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(statuses(&pool, &ids).await, vec!["FAILED"]);
        forget(&pool, sender).await;
    }

    #[test]
    fn claim_keys_spread_over_the_whole_id() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(1 << 100);
        assert_ne!(super::claim_key(&a), super::claim_key(&b));
        assert_ne!(super::claim_key(&a), super::claim_key(&Uuid::from_u128(2)));
    }
}
