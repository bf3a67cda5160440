//! The reversal against the real wallet through a link the test slows down or
//! cuts after wallet answered: it holds no row lock while it waits on wallet,
//! and a void whose pass died before recording it is finished by the next pass.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::harness::{get, Options, Stack, User};
use crate::payments::{assert_invariants, send, wait_final};

/// What the link does to the traffic to wallet.
#[derive(Clone, Copy)]
enum Link {
    /// Every request waits this long before it goes on.
    Slow(Duration),
    /// Requests go through; wallet's answers never come back.
    Swallow,
}

/// A TCP link to `upstream`; reports each request (`Slow`) or each swallowed answer
/// (`Swallow`) on the channel.
async fn link(upstream: String, mode: Link) -> (String, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (events, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else { continue };
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            let (up_events, down_events) = (events.clone(), events.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = client_rx.read(&mut buf).await {
                    if let Link::Slow(delay) = mode {
                        let _ = up_events.send(());
                        tokio::time::sleep(delay).await;
                    }
                    if server_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                    if let Link::Swallow = mode {
                        let _ = down_events.send(());
                        // Keep the connection open and silent, as a process that stopped.
                        std::future::pending::<()>().await;
                    }
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (url, rx)
}

/// A wallet client for the reversal that goes through `url`.
fn wallet_via(s: &Stack, url: String) -> payflow_transaction::wallet_client::WalletClient {
    let mut args = s.reversal_wallet.clone();
    args.wallet_url = url;
    payflow_transaction::wallet_client::WalletClient::new(&args).expect("client")
}

/// `n` accepted transfers of 1.00 from a fresh user, left PENDING (no worker runs).
async fn pending(s: &Stack, n: usize) -> (User, Vec<Uuid>) {
    let (a, b) = (s.register().await, s.register().await);
    let mut ids = Vec::new();
    for _ in 0..n {
        let sent = send(s, &a, &b.id, json!(1), None).await;
        assert_eq!(sent.status, 201, "{}", sent.body);
        ids.push(Uuid::parse_str(sent.body["id"].as_str().expect("id")).expect("uuid"));
    }
    (a, ids)
}

async fn statuses(s: &Stack, ids: &[Uuid]) -> Vec<String> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, status FROM txn.transactions WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(&s.pool)
        .await
        .expect("statuses");
    ids.iter().map(|id| rows.iter().find(|r| r.0 == *id).map(|r| r.1.clone()).expect("row")).collect()
}

async fn assert_nothing_moved(s: &Stack, a: &User) {
    let (_, w) = get(s, &format!("/api/wallets/{}", a.id), &a.access).await;
    assert_eq!(w["balance"], "1000.00", "{w}");
    assert_eq!(w["available_balance"], w["balance"], "no hold left behind: {w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_waiting_on_a_slow_wallet_does_not_hold_up_the_workers_updates() {
    let s = Stack::start_with(Options { worker: false, ..Default::default() }).await;
    let (a, ids) = pending(&s, 3).await;
    let (url, mut requests) =
        link(s.wallet.trim_start_matches("http://").to_string(), Link::Slow(Duration::from_millis(1500))).await;
    let wallet = wallet_via(&s, url);
    let topology = s.txn_cfg.amqp.topology();
    let senders = [Uuid::parse_str(&a.id).expect("id")];
    let pool = s.pool.clone();
    let pass = tokio::spawn(async move {
        payflow_transaction::reversal::reverse(&pool, &wallet, &topology, Duration::ZERO, 100, Some(&senders)).await
    });
    requests.recv().await.expect("the reversal calls wallet");
    // What a worker's batch does to these rows now (worker.rs MARK_PROCESSING), and a finish
    // (store.rs) on one of them: neither may wait for the reversal's wallet calls.
    let started = Instant::now();
    let marked = tokio::time::timeout(
        Duration::from_secs(1),
        sqlx::query(
            "UPDATE txn.transactions SET status = 'PROCESSING', processing_started_at = now() \
             WHERE id = ANY($1) AND (status = 'PENDING') IS TRUE",
        )
        .bind(&ids)
        .execute(&s.pool),
    )
    .await
    .expect("the worker's PROCESSING mark waited on the reversal")
    .expect("mark");
    assert_eq!(marked.rows_affected(), 3);
    let locked = tokio::time::timeout(
        Duration::from_secs(1),
        sqlx::query_scalar::<_, Uuid>("SELECT id FROM txn.transactions WHERE id = $1 FOR UPDATE NOWAIT")
            .bind(ids[2])
            .fetch_one(&s.pool),
    )
    .await
    .expect("row lock in time");
    assert!(locked.is_ok(), "a row the reversal is working on is locked: {locked:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());

    let report = pass.await.expect("task").expect("reversal");
    assert_eq!((report.reversed, report.completed, report.errors), (3, 0, 0), "{report:?}");
    assert_eq!(statuses(&s, &ids).await, vec!["FAILED"; 3]);
    assert_invariants(&s, &ids).await;
    assert_nothing_moved(&s, &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_at_wallet_whose_reversal_died_before_recording_it_is_failed_by_the_next_run() {
    let s = Stack::start_with(Options { worker: false, ..Default::default() }).await;
    let (a, ids) = pending(&s, 1).await;
    let (url, mut answers) = link(s.wallet.trim_start_matches("http://").to_string(), Link::Swallow).await;
    let cut_off = wallet_via(&s, url);
    let topology = s.txn_cfg.amqp.topology();
    let senders = [Uuid::parse_str(&a.id).expect("id")];
    {
        let pass =
            payflow_transaction::reversal::reverse(&s.pool, &cut_off, &topology, Duration::ZERO, 100, Some(&senders));
        tokio::select! {
            r = pass => panic!("the reversal ended without wallet's answer: {r:?}"),
            _ = answers.recv() => {} // wallet answered the void: the pass dies here (dropped)
        }
    }
    let state: String = sqlx::query_scalar("SELECT state FROM wallet.transfers WHERE id = $1")
        .bind(ids[0])
        .fetch_one(&s.pool)
        .await
        .expect("transfer");
    assert_eq!(state, "voided");
    assert_eq!(statuses(&s, &ids).await, vec!["PENDING"], "the void is not recorded yet");

    // The next run voids again; wallet answers "voided", and the transaction fails.
    let wallet = payflow_transaction::wallet_client::WalletClient::new(&s.reversal_wallet).expect("client");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // The dead pass's claim ends when Postgres sees its connection close.
        let report =
            payflow_transaction::reversal::reverse(&s.pool, &wallet, &topology, Duration::ZERO, 100, Some(&senders))
                .await
                .expect("reversal");
        assert_eq!((report.completed, report.errors), (0, 0), "{report:?}");
        if report.reversed == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the next run did not finish it: {report:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_final(&s, &ids, Duration::from_secs(1)).await;
    assert_eq!(statuses(&s, &ids).await, vec!["FAILED"]);
    assert_invariants(&s, &ids).await;
    assert_nothing_moved(&s, &a).await;
}
