//! Sending money end to end, through the gateway, with the relay and a worker
//! on a real RabbitMQ, followed by the money invariants.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::harness::{get, Options, Stack, User};

#[derive(Debug)]
pub struct Sent {
    pub status: u16,
    pub replayed: bool,
    pub body: Value,
}

pub async fn send(s: &Stack, from: &User, to: &str, amount: Value, key: Option<&str>) -> Sent {
    let mut req = s
        .http
        .post(s.url("/api/transactions"))
        .bearer_auth(&from.access)
        .json(&json!({"toUserId": to, "amount": amount}));
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let res = req.send().await.expect("send");
    let status = res.status().as_u16();
    let replayed = res.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    Sent { status, replayed, body: res.json().await.unwrap_or(Value::Null) }
}

/// Waits until every id is COMPLETED or FAILED (read from the database).
pub async fn wait_final(s: &Stack, ids: &[Uuid], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM txn.transactions WHERE id = ANY($1) AND status NOT IN ('COMPLETED', 'FAILED')",
        )
        .bind(ids)
        .fetch_one(&s.pool)
        .await
        .expect("count");
        let known: i64 = sqlx::query_scalar("SELECT count(*) FROM txn.transactions WHERE id = ANY($1)")
            .bind(ids)
            .fetch_one(&s.pool)
            .await
            .expect("count");
        if open == 0 && known == ids.len() as i64 {
            return;
        }
        assert!(Instant::now() < deadline, "{open} of {} transactions still open (known: {known})", ids.len());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How many of `ids` are COMPLETED.
pub async fn count_completed(s: &Stack, ids: &[Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM txn.transactions WHERE id = ANY($1) AND status = 'COMPLETED'")
        .bind(ids)
        .fetch_one(&s.pool)
        .await
        .expect("count")
}

/// The invariants: the ledger check (sum zero, balances match entries, holds
/// match pending transfers, no negative available balance, every posted
/// transfer moved once), and every final transaction agrees with wallet.
pub async fn assert_invariants(s: &Stack, ids: &[Uuid]) {
    s.assert_ledger_ok().await;
    let disagreeing: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
        "SELECT t.id, t.status, w.state FROM txn.transactions t LEFT JOIN wallet.transfers w ON w.id = t.id \
         WHERE t.id = ANY($1) AND ((t.status = 'COMPLETED' AND w.state IS DISTINCT FROM 'posted') \
            OR (t.status = 'FAILED' AND w.state = 'posted') OR t.status NOT IN ('COMPLETED', 'FAILED'))",
    )
    .bind(ids)
    .fetch_all(&s.pool)
    .await
    .expect("query");
    assert!(disagreeing.is_empty(), "transactions disagreeing with wallet: {disagreeing:?}");
    let events: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT (body->>'transactionId')::uuid, count(*) FROM txn.outbox WHERE exchange LIKE '%.events' \
         AND (body->>'transactionId')::uuid = ANY($1) GROUP BY 1 HAVING count(*) <> 1",
    )
    .bind(ids)
    .fetch_all(&s.pool)
    .await
    .expect("query");
    assert!(events.is_empty(), "each final transaction has exactly one event: {events:?}");
}

/// Polls the user's notifications until one of `kind` is there.
pub async fn wait_notification(s: &Stack, user: &User, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, list) = get(s, &format!("/api/notifications/{}", user.id), &user.access).await;
        assert_eq!(status, 200, "{list}");
        if let Some(n) = list.as_array().and_then(|l| l.iter().find(|n| n["type"] == kind)) {
            return n.clone();
        }
        assert!(Instant::now() < deadline, "no {kind} notification for {}: {list}", user.id);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn id_of(sent: &Sent) -> Uuid {
    sent.body["id"].as_str().and_then(|i| Uuid::parse_str(i).ok()).unwrap_or_else(|| panic!("no id in {}", sent.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_money_end_to_end() {
    let s = Stack::start().await;
    let a = s.register().await;
    let b = s.register().await;
    let started = Instant::now();
    let sent = send(&s, &a, &b.id, json!(50.25), None).await;
    assert_eq!(sent.status, 201, "{}", sent.body);
    assert_eq!(sent.body["status"], "PENDING");
    assert_eq!(sent.body["message"], "Transaction queued for processing");
    assert_eq!(sent.body["amount"], "50.25");
    assert_eq!(sent.body["from_user_id"], a.id.as_str());
    assert!(sent.body["timestamp"].is_string());
    let id = id_of(&sent);

    let (_, wallet) = get(&s, &format!("/api/wallets/{}", a.id), &a.access).await;
    assert!(wallet["available_balance"] == "949.75", "held at once: {wallet}");

    wait_final(&s, &[id], Duration::from_secs(15)).await;
    let (status, t) = get(&s, &format!("/api/transactions/{id}"), &a.access).await;
    assert_eq!((status, t["status"].as_str()), (200, Some("COMPLETED")), "{t}");
    assert!(t["completed_at"].is_string());
    eprintln!("settled in {:?}", started.elapsed());

    let (_, wa) = get(&s, &format!("/api/wallets/{}", a.id), &a.access).await;
    let (_, wb) = get(&s, &format!("/api/wallets/{}", b.id), &b.access).await;
    assert_eq!((wa["balance"].as_str(), wa["available_balance"].as_str()), (Some("949.75"), Some("949.75")));
    assert_eq!((wb["balance"].as_str(), wb["available_balance"].as_str()), (Some("1050.25"), Some("1050.25")));

    // Both parties see it; a stranger does not.
    let (_, list) = get(&s, "/api/transactions", &b.access).await;
    assert_eq!(list[0]["id"], id.to_string().as_str());
    let c = s.register().await;
    assert_eq!(get(&s, &format!("/api/transactions/{id}"), &c.access).await.0, 404);
    assert_eq!(get(&s, &format!("/api/transactions?userId={}", a.id), &c.access).await.0, 403);
    let (_, list) = get(&s, "/api/transactions?status=COMPLETED&limit=1", &a.access).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_invariants(&s, &[id]).await;

    // Both notifications arrive, each to its own party only.
    let sent_note = wait_notification(&s, &a, "TRANSACTION_COMPLETED").await;
    let received_note = wait_notification(&s, &b, "TRANSACTION_RECEIVED").await;
    assert_eq!(sent_note["transaction_id"], id.to_string().as_str());
    assert_eq!(received_note["transaction_id"], id.to_string().as_str());
    assert_eq!(get(&s, &format!("/api/notifications/{}", a.id), &b.access).await.0, 403);
    let note_id = received_note["id"].as_str().expect("id");
    let res = s
        .http
        .put(s.url(&format!("/api/notifications/{note_id}/read")))
        .bearer_auth(&a.access)
        .send()
        .await
        .expect("put");
    assert_eq!(res.status(), 403, "another user's notification");
    let res = s
        .http
        .put(s.url(&format!("/api/notifications/{note_id}/read")))
        .bearer_auth(&b.access)
        .send()
        .await
        .expect("put");
    assert_eq!(res.status(), 200);
    let read: Value = res.json().await.expect("json");
    assert_eq!(read["read"], true);
    // Nobody may send from someone else's wallet.
    let res = s
        .http
        .post(s.url("/api/transactions"))
        .bearer_auth(&c.access)
        .json(&json!({"fromUserId": a.id, "toUserId": c.id, "amount": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn synchronous_refusals_and_amount_rules() {
    let s = Stack::start().await;
    let a = s.register().await;
    let b = s.register().await;

    let sent = send(&s, &a, &a.id, json!(1), None).await;
    assert_eq!(sent.status, 400, "self-transfer: {}", sent.body);
    let sent = send(&s, &a, &Uuid::new_v4().to_string(), json!(1), None).await;
    assert_eq!((sent.status, sent.body["error"].as_str()), (404, Some("Recipient not found")));
    let sent = send(&s, &a, &b.id, json!("1000.01"), None).await;
    assert_eq!((sent.status, sent.body["error"].as_str()), (422, Some("Insufficient funds")));
    for bad in
        [json!(0), json!(-1), json!(1.001), json!("1e3"), json!("abc"), json!(1000000.01), json!(null), json!(true)]
    {
        let sent = send(&s, &a, &b.id, bad.clone(), None).await;
        assert_eq!(sent.status, 400, "{bad}: {}", sent.body);
        assert_eq!(sent.body["details"][0]["path"], "amount", "{bad}: {}", sent.body);
    }
    for good in [json!(50), json!(50.5), json!("0.01")] {
        assert_eq!(send(&s, &a, &b.id, good.clone(), None).await.status, 201, "{good}");
    }
    let res = s
        .http
        .post(s.url("/api/transactions"))
        .bearer_auth(&a.access)
        .json(&json!({"toUserId": b.id, "amount": 1, "fromUserId": b.id}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 403, "fromUserId must be the caller");
    // A client may name the currency this PayFlow moves, never another; it never sets a status.
    let with = |extra: Value| {
        let mut body = json!({"toUserId": b.id, "amount": 1});
        body.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        s.http.post(s.url("/api/transactions")).bearer_auth(&a.access).json(&body).send()
    };
    let refused = [
        (json!({"currency": "EUR"}), "currency"),
        (json!({"status": "COMPLETED"}), "status"),
        (json!({"description": "a\u{0}b"}), "description"),
    ];
    for (extra, field) in refused {
        let res = with(extra.clone()).await.expect("send");
        assert_eq!(res.status(), 400, "{extra}");
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["details"][0]["path"], field, "{body}");
    }
    assert_eq!(with(json!({"currency": "USD"})).await.expect("send").status(), 201);
    // Nothing refused left a transaction behind.
    let (_, list) = get(&s, "/api/transactions", &a.access).await;
    assert_eq!(list.as_array().map(Vec::len), Some(4));

    // Paging through the gateway: each page names the next one's cursor; empty
    // parameters (`?status=`) mean "not given", as the older PayFlow read them.
    let mut seen = Vec::new();
    let mut path = "/api/transactions?limit=3&status=".to_string();
    loop {
        let res = s.http.get(s.url(&path)).bearer_auth(&a.access).send().await.expect("list");
        assert_eq!(res.status(), 200, "{path}");
        let next = res.headers().get("x-next-cursor").and_then(|v| v.to_str().ok()).map(str::to_string);
        let page: Vec<Value> = res.json().await.expect("json");
        seen.extend(page.iter().map(|t| t["id"].clone()));
        match next {
            Some(cursor) => path = format!("/api/transactions?limit=3&cursor={cursor}&page="),
            None => break,
        }
    }
    assert_eq!(seen, list.as_array().expect("array").iter().map(|t| t["id"].clone()).collect::<Vec<_>>());
    // A path segment that does not decode is a JSON 400, like any bad input.
    let (status, body) = get(&s, "/api/transactions/%FF", &a.access).await;
    assert_eq!((status, body["details"][0]["path"].as_str()), (400, Some("path")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_semantics() {
    let s = Stack::start().await;
    let a = s.register().await;
    let b = s.register().await;
    let key = format!("key-{}", Uuid::new_v4());

    let first = send(&s, &a, &b.id, json!(10), Some(&key)).await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed);
    let again = send(&s, &a, &b.id, json!(10), Some(&key)).await;
    assert_eq!((again.status, again.replayed), (201, true));
    assert_eq!(again.body, first.body, "same body, same transaction");
    // The same request written differently is the same request.
    let same = send(&s, &a, &b.id, json!("10.00"), Some(&key)).await;
    assert_eq!((same.status, same.replayed, id_of(&same)), (201, true, id_of(&first)));
    let other = send(&s, &a, &b.id, json!(11), Some(&key)).await;
    assert_eq!(other.status, 422, "{}", other.body);

    // Redis loses everything: Postgres still knows.
    let mut redis = redis::Client::open(crate::harness::redis_url())
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let key2 = format!("key-{}", Uuid::new_v4());
    let one = send(&s, &a, &b.id, json!(1), Some(&key2)).await;
    redis::cmd("FLUSHALL").query_async::<()>(&mut redis).await.expect("flush");
    let two = send(&s, &a, &b.id, json!(1), Some(&key2)).await;
    assert_eq!((two.status, two.replayed, id_of(&two)), (201, true, id_of(&one)));

    // 50 at once with one key: one transfer.
    let key3 = format!("key-{}", Uuid::new_v4());
    let all = futures::future::join_all((0..50).map(|_| send(&s, &a, &b.id, json!(2), Some(&key3)))).await;
    let ids: HashSet<String> = all.iter().filter(|r| r.status == 201).map(|r| id_of(r).to_string()).collect();
    assert_eq!(ids.len(), 1, "{:?}", all.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(
        all.iter().all(|r| r.status == 201 || r.status == 409),
        "{:?}",
        all.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM txn.transactions WHERE from_user_id = $1::uuid AND amount = 200")
            .bind(&a.id)
            .fetch_one(&s.pool)
            .await
            .expect("count");
    assert_eq!(count, 1);

    let ids = [id_of(&first), id_of(&one), ids.iter().next().and_then(|i| Uuid::parse_str(i).ok()).expect("id")];
    wait_final(&s, &ids, Duration::from_secs(15)).await;
    assert_invariants(&s, &ids).await;
    let (_, w) = get(&s, &format!("/api/wallets/{}", a.id), &a.access).await;
    assert_eq!(w["balance"], "987.00", "10 + 1 + 2 moved once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_users_paying_each_other_at_once() {
    let s = Stack::start().await;
    let mut users = Vec::new();
    for _ in 0..6 {
        users.push(s.register().await);
    }
    // Every ordered pair, both directions at once, several times.
    let mut calls = Vec::new();
    for round in 0..4 {
        for (i, from) in users.iter().enumerate() {
            for (j, to) in users.iter().enumerate() {
                if i != j {
                    calls.push(send(&s, from, &to.id, json!(format!("{}.{:02}", 3 + round, i * 7 + j)), None));
                }
            }
        }
    }
    let results = futures::future::join_all(calls).await;
    assert!(
        results.iter().all(|r| r.status == 201),
        "{:?}",
        results.iter().map(|r| (r.status, r.body.clone())).find(|r| r.0 != 201)
    );
    let ids: Vec<Uuid> = results.iter().map(id_of).collect();
    wait_final(&s, &ids, Duration::from_secs(60)).await;
    assert_invariants(&s, &ids).await;
    let completed = count_completed(&s, &ids).await;
    assert_eq!(completed, ids.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reversal_racing_a_worker_settles_each_transaction_once() {
    let s = Stack::start_with(Options { worker: false, ..Default::default() }).await;
    let a = s.register().await;
    let b = s.register().await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        let sent = send(&s, &a, &b.id, json!(1), None).await;
        assert_eq!(sent.status, 201);
        ids.push(id_of(&sent));
    }
    // Messages are queued; now a worker and two reversals go at once.
    let cancel = payflow_common::shutdown::CancellationToken::new();
    let worker = tokio::spawn(payflow_transaction::worker::run(s.worker_cfg.clone(), cancel.clone()));
    let wallet = payflow_transaction::wallet_client::WalletClient::new(&s.reversal_wallet).expect("client");
    // Scoped to this test's sender: other tests' transactions are not ours to reverse.
    let senders = [Uuid::parse_str(&a.id).expect("id")];
    let topology = s.txn_cfg.amqp.topology();
    let (runs_before, failed_before): (i64, i64) =
        sqlx::query_as("SELECT runs, failed FROM txn.reversal_stats").fetch_one(&s.pool).await.expect("stats");
    let (r1, r2) = tokio::join!(
        payflow_transaction::reversal::reverse(&s.pool, &wallet, &topology, Duration::ZERO, 7, Some(&senders)),
        payflow_transaction::reversal::reverse(&s.pool, &wallet, &topology, Duration::ZERO, 5, Some(&senders))
    );
    let (r1, r2) = (r1.expect("reversal"), r2.expect("reversal"));
    wait_final(&s, &ids, Duration::from_secs(20)).await;
    cancel.cancel();
    let _ = worker.await;
    eprintln!("reversal reports: {r1:?} {r2:?}");
    assert_invariants(&s, &ids).await;
    let (_, w) = get(&s, &format!("/api/wallets/{}", a.id), &a.access).await;
    let completed = count_completed(&s, &ids).await;
    assert_eq!(w["balance"], format!("{}.00", 1000 - completed), "only completed ones moved");
    assert_eq!(w["available_balance"], w["balance"], "no hold left behind");

    // The runs reach the transaction service's metrics (read back from Postgres every 5 s).
    // Other tests may run reversals too, so the totals grow by at least ours.
    let reversed = (failed_before as u64 + r1.reversed + r2.reversed) as f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = s.http.get(format!("{}/metrics", s.transaction)).send().await.expect("scrape");
        let text = text.text().await.expect("metrics");
        // Lines look like `name{outcome="failed",service="transaction"} 24`.
        let value = |name: &str, label: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains(label))
                .find_map(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(-1.0)
        };
        let runs = value("payflow_reversal_runs_total{", "");
        let failed = value("payflow_reversal_transactions_total{", "outcome=\"failed\"");
        let last = value("payflow_reversal_last_run_timestamp_seconds{", "");
        if runs >= runs_before as f64 + 2.0
            && failed >= reversed
            && last > 0.0
            && text.contains("payflow_pending_oldest_age_seconds")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reversal metrics: runs {runs}, failed {failed}, last {last}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A caller that gives up mid-request (here the gateway, at its upstream
/// timeout, which drops the connection as a vanished client does) must not stop
/// the transfer between its steps: it is recorded, held, enqueued and settled
/// all the same, and a retry with the key gets the stored answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_mid_request_still_gets_its_transfer_settled() {
    let s = Stack::start_with(Options { upstream_timeout_ms: Some(2_000), ..Options::default() }).await;
    let (a, b) = (s.register().await, s.register().await);
    let alice = Uuid::parse_str(&a.id).expect("user id");
    let key = format!("gives-up-{}", Uuid::new_v4());

    // Alice's account row locked: her hold waits behind it until the gateway has given up.
    let lock = lock_account(&s, alice).await;
    let first = send(&s, &a, &b.id, json!("3.00"), Some(&key)).await;
    assert_eq!((first.status, first.body["code"].as_str()), (504, Some("upstream_timeout")), "gave up: {first:?}");
    assert!(first.body["error"].as_str().is_some_and(|m| m.contains("Idempotency-Key")), "{first:?}");
    lock.rollback().await.expect("unlock");

    let id: Uuid =
        sqlx::query_scalar("SELECT transaction_id FROM txn.idempotency_keys WHERE user_id = $1 AND key = $2")
            .bind(alice)
            .bind(&key)
            .fetch_one(&s.pool)
            .await
            .expect("the transaction was recorded under the key");
    wait_final(&s, &[id], Duration::from_secs(15)).await;
    assert_eq!(count_completed(&s, &[id]).await, 1, "settled, not left to the reversal");
    assert_invariants(&s, &[id]).await;
    let (_, w) = get(&s, &format!("/api/wallets/{}", a.id), &a.access).await;
    assert_eq!((w["balance"].as_str(), w["available_balance"].as_str()), (Some("997.00"), Some("997.00")), "{w}");
    let retry = send(&s, &a, &b.id, json!("3.00"), Some(&key)).await;
    assert_eq!((retry.status, retry.replayed, id_of(&retry)), (201, true, id), "{retry:?}");
}

/// Wallet cannot be reached while a transfer is placed, so whether the hold
/// exists is unknown and cannot be undone at once: the client gets a 503 and
/// the key stays with that one transaction (before, the key was released and
/// the retry made a second transaction). The failed attempt hands the key's
/// record over, so a retry resumes that transaction at once instead of being
/// told that it is in flight until the record goes stale: 503 again while
/// wallet is away, then 201 and settled once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_hold_outcome_keeps_the_key_with_its_one_transaction_and_a_retry_resumes_it() {
    let s = Stack::start_with(Options { txn_wallet_proxy: true, ..Options::default() }).await;
    let wallet = s.txn_wallet_proxy.as_ref().expect("proxy");
    let (a, b) = (s.register().await, s.register().await);
    let alice = Uuid::parse_str(&a.id).expect("user id");
    let key = format!("unknown-{}", Uuid::new_v4());
    wallet.cut();
    let first = send(&s, &a, &b.id, json!("4.00"), Some(&key)).await;
    assert_eq!(first.status, 503, "{first:?}");
    wait_handed_over(&s, alice, &key).await;
    let retry = send(&s, &a, &b.id, json!("4.00"), Some(&key)).await;
    assert_eq!((retry.status, retry.body["code"].as_str()), (503, Some("service_unavailable")), "resumed: {retry:?}");
    let rows: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, status FROM txn.transactions WHERE from_user_id = $1")
        .bind(alice)
        .fetch_all(&s.pool)
        .await
        .expect("query");
    assert_eq!(rows.len(), 1, "one transaction for one key: {rows:?}");
    assert_eq!(rows[0].1, "PENDING", "left to a resume or the reversal");

    wallet.restore();
    wait_handed_over(&s, alice, &key).await;
    let back = send(&s, &a, &b.id, json!("4.00"), Some(&key)).await;
    assert_eq!((back.status, id_of(&back)), (201, rows[0].0), "the same transaction, resumed: {back:?}");
    wait_final(&s, &[rows[0].0], Duration::from_secs(15)).await;
    assert_eq!(count_completed(&s, &[rows[0].0]).await, 1);
    assert_invariants(&s, &[rows[0].0]).await;
}

/// A request at work keeps its key however long it takes: its heartbeat keeps
/// the record fresh, so a retry is told it is in flight (and takes nothing
/// over) until the first one answers; then the retry gets that answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_keeps_its_key_while_it_works() {
    let s = Stack::start().await;
    let (a, b) = (s.register().await, s.register().await);
    let alice = Uuid::parse_str(&a.id).expect("user id");
    let key = format!("slow-{}", Uuid::new_v4());

    // Alice's account row locked: her hold waits behind it while the test looks on.
    let lock = lock_account(&s, alice).await;
    let first = send(&s, &a, &b.id, json!("2.00"), Some(&key));
    let meanwhile = async {
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut recorded = None;
        loop {
            let now: Option<chrono::DateTime<chrono::Utc>> =
                sqlx::query_scalar("SELECT created_at FROM txn.idempotency_keys WHERE user_id = $1 AND key = $2")
                    .bind(alice)
                    .bind(&key)
                    .fetch_optional(&s.pool)
                    .await
                    .expect("query");
            match (recorded, now) {
                (None, Some(t)) => recorded = Some(t),
                (Some(t0), Some(t)) if t > t0 => break, // a heartbeat
                _ => {}
            }
            assert!(Instant::now() < deadline, "no heartbeat from the request at work: {recorded:?} {now:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let retry = send(&s, &a, &b.id, json!("2.00"), Some(&key)).await;
        lock.rollback().await.expect("unlock");
        retry
    };
    let (first, retry) = tokio::join!(first, meanwhile);
    assert_eq!((retry.status, retry.body["code"].as_str()), (409, Some("idempotency_key_in_flight")), "{retry:?}");
    assert_eq!(first.status, 201, "{first:?}");
    let again = send(&s, &a, &b.id, json!("2.00"), Some(&key)).await;
    assert_eq!((again.status, again.replayed, id_of(&again)), (201, true, id_of(&first)), "{again:?}");
}

/// Locks a user's account row until the returned transaction ends, so that
/// whatever writes it (a hold) waits.
async fn lock_account(s: &Stack, user: Uuid) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut lock = payflow_common::db::begin(&s.pool).await.expect("begin");
    sqlx::query("SELECT 1 FROM wallet.accounts WHERE user_id = $1 FOR UPDATE")
        .bind(user)
        .execute(&mut *lock)
        .await
        .expect("lock the account");
    lock
}

/// Waits until the key's record may be taken over (a failed attempt handed it over).
async fn wait_handed_over(s: &Stack, user: Uuid, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stale: bool = sqlx::query_scalar(
            "SELECT now() - created_at > interval '10 seconds' FROM txn.idempotency_keys WHERE user_id = $1 AND key = $2",
        )
        .bind(user)
        .bind(key)
        .fetch_optional(&s.pool)
        .await
        .expect("query")
        .unwrap_or(false);
        if stale {
            return;
        }
        assert!(Instant::now() < deadline, "the failed attempt did not hand its record over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A key record left pointing at a transaction row that was dropped with
/// nothing held (the cleanup of an unknown hold outcome ran, the release of the
/// record did not): once abandoned, a retry records its transfer afresh under
/// the key instead of answering 503 for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_transaction_row_was_dropped_starts_afresh_once_abandoned() {
    let s = Stack::start().await;
    let (a, b) = (s.register().await, s.register().await);
    let (alice, bob) = (Uuid::parse_str(&a.id).expect("id"), Uuid::parse_str(&b.id).expect("id"));
    let key = format!("dropped-{}", Uuid::new_v4());
    let fingerprint = payflow_transaction::idempotency::fingerprint(bob, 500, "USD", None);
    sqlx::query(
        "INSERT INTO txn.idempotency_keys (user_id, key, fingerprint, transaction_id, created_at) \
         VALUES ($1, $2, $3, $4, now() - interval '40 seconds')",
    )
    .bind(alice)
    .bind(&key)
    .bind(&fingerprint)
    .bind(Uuid::now_v7())
    .execute(&s.pool)
    .await
    .expect("an abandoned record whose row is gone");

    let sent = send(&s, &a, &b.id, json!("5.00"), Some(&key)).await;
    assert_eq!(sent.status, 201, "{sent:?}");
    let id = id_of(&sent);
    wait_final(&s, &[id], Duration::from_secs(15)).await;
    assert_eq!(count_completed(&s, &[id]).await, 1);
    assert_invariants(&s, &[id]).await;
    let again = send(&s, &a, &b.id, json!("5.00"), Some(&key)).await;
    assert_eq!((again.status, again.replayed, id_of(&again)), (201, true, id), "{again:?}");
}
