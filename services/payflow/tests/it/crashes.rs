//! Killed processes (SIGKILL at injected points), duplicate deliveries: after
//! each, every transaction still ends once and the invariants hold.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::harness::{amqp_url, database_url, Options, Stack};
use crate::payments::{assert_invariants, count_completed, send, wait_final};

/// Starts `payflow <args>` with a fault point armed.
fn spawn_armed(fault: &str, args: &[String]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_payflow"))
        .args(args)
        .env("PAYFLOW_FAULT", fault)
        .env("PAYFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn payflow")
}

/// Waits for a process started by [`spawn_armed`] to die at its fault point.
async fn await_killed(fault: &str, mut child: tokio::process::Child) {
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap_or_else(|_| panic!("payflow did not reach fault point {fault}"))
        .expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{fault}: expected death by SIGKILL, got {status:?}");
}

/// Runs `payflow <args>` with a fault point armed and waits for it to die.
async fn run_until_killed(fault: &str, args: &[String]) {
    await_killed(fault, spawn_armed(fault, args)).await;
}

/// Waits (at most 30 s) for `n` messages in the dead-letter queue `dlq` and takes them.
async fn dead_letters(ch: &lapin::Channel, dlq: &str, n: usize) -> Vec<lapin::message::BasicGetMessage> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut dead = Vec::with_capacity(n);
    while dead.len() < n {
        match ch.basic_get(dlq, lapin::options::BasicGetOptions { no_ack: true }).await.expect("basic_get") {
            Some(m) => dead.push(m),
            None => {
                assert!(std::time::Instant::now() < deadline, "{} of {n} messages reached {dlq}", dead.len());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    dead
}

fn common_args(s: &Stack) -> Vec<String> {
    vec![
        format!("--database-url={}", database_url()),
        format!("--amqp-url={}", amqp_url()),
        format!("--amqp-prefix={}", s.amqp_prefix),
        format!("--wallet-url={}", s.wallet),
        format!("--service-token={}", s.service_token),
    ]
}

/// A transaction service of its own (no relay), armed at `fault`, once ready; and its URL.
async fn armed_transaction_service(s: &Stack, fault: &str) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let mut args = vec![
        "transaction".to_string(),
        format!("--transaction-port={port}"),
        "--relay=false".into(),
        format!("--jwks-url={}/.well-known/jwks.json", s.auth),
    ];
    args.extend(common_args(s));
    let child = spawn_armed(fault, &args);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.http.get(format!("{base}/readyz")).send().await.map(|r| !r.status().is_success()).unwrap_or(true) {
        assert!(std::time::Instant::now() < deadline, "the transaction service did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, base)
}

async fn send_some(s: &Stack, n: usize) -> (crate::harness::User, Vec<Uuid>) {
    let a = s.register().await;
    let b = s.register().await;
    let mut ids = Vec::new();
    for _ in 0..n {
        let sent = send(s, &a, &b.id, json!(1), None).await;
        assert_eq!(sent.status, 201, "{}", sent.body);
        ids.push(Uuid::parse_str(sent.body["id"].as_str().expect("id")).expect("uuid"));
    }
    (a, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_after_posting_before_acking() {
    let s = Stack::start_with(Options { worker: false, ..Default::default() }).await;
    let (a, ids) = send_some(&s, 8).await;
    let mut args = vec!["worker".to_string(), "--worker-port=0".into()];
    args.extend(common_args(&s));
    run_until_killed("worker-after-post", &args).await;

    // The money moved, but nobody recorded it or acked the messages.
    let posted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM wallet.transfers WHERE id = ANY($1) AND state = 'posted'")
            .bind(&ids)
            .fetch_one(&s.pool)
            .await
            .expect("count");
    assert!(posted > 0, "the worker died before posting anything");

    // A new worker gets the unacked messages again; posting twice moves nothing twice.
    let cancel = payflow_common::shutdown::CancellationToken::new();
    let worker = tokio::spawn(payflow_transaction::worker::run(s.worker_cfg.clone(), cancel.clone()));
    wait_final(&s, &ids, Duration::from_secs(30)).await;
    cancel.cancel();
    let _ = worker.await;
    assert_invariants(&s, &ids).await;
    let (_, w) = crate::harness::get(&s, &format!("/api/wallets/{}", a.id), &a.access).await;
    assert_eq!(w["balance"], "992.00", "8 × 1.00, each once: {w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_after_publishing_before_marking() {
    let s = Stack::start_with(Options { relay: false, ..Default::default() }).await;
    let (a, ids) = send_some(&s, 8).await;
    // The outbox holds the settle messages; a relay process publishes them and dies.
    let mut args = vec!["transaction".to_string(), "--transaction-port=0".into(), "--relay=true".into()];
    args.extend(common_args(&s));
    run_until_killed("relay-after-publish", &args).await;
    let unmarked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM txn.outbox WHERE published_at IS NULL AND routing_key = 'transaction.settle' \
         AND (body->>'transactionId')::uuid = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&s.pool)
    .await
    .expect("count");
    assert_eq!(unmarked, ids.len() as i64, "published but not marked");

    // A relay starts again and publishes them a second time: the worker sees duplicates.
    let cancel = payflow_common::shutdown::CancellationToken::new();
    let metrics = payflow_common::metrics::Metrics::new("relay-test");
    let relay = tokio::spawn(payflow_transaction::relay::run(
        s.pool.clone(),
        s.txn_cfg.amqp.clone(),
        payflow_transaction::relay::RelayMetrics::new(&metrics).expect("metrics"),
        Default::default(),
        cancel.clone(),
    ));
    wait_final(&s, &ids, Duration::from_secs(30)).await;
    cancel.cancel();
    let _ = relay.await;
    assert_invariants(&s, &ids).await;
    let (_, w) = crate::harness::get(&s, &format!("/api/wallets/{}", a.id), &a.access).await;
    assert_eq!(w["balance"], "992.00", "{w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_service_killed_in_a_burst_of_batched_accepts() {
    let s = Stack::start().await;
    let (a, b) = (s.register().await, s.register().await);
    // Armed to die right after the first accept commits, while the other requests of the
    // burst are at every step of theirs.
    let fault = "transaction-after-accept";
    let (child, base) = armed_transaction_service(&s, fault).await;
    let burst = (0..24).map(|i| {
        let req = s
            .http
            .post(format!("{base}/api/transactions"))
            .bearer_auth(&a.access)
            .header("idempotency-key", format!("burst-{i}"))
            .json(&json!({"toUserId": b.id, "amount": "1.00"}));
        async move {
            match req.send().await {
                Ok(r) if r.status() == 201 => r.json::<serde_json::Value>().await.ok(),
                _ => None,
            }
        }
    });
    let answered = futures::future::join_all(burst).await;
    await_killed(fault, child).await;
    let accepted: Vec<Uuid> =
        answered.iter().flatten().filter_map(|t| t["id"].as_str().and_then(|i| Uuid::parse_str(i).ok())).collect();

    // Whatever the crash left: the stack's relay and worker settle what was enqueued, the
    // reversal finishes the rest (a row without a hold, a hold without a message).
    let wallet = payflow_transaction::wallet_client::WalletClient::new(&s.reversal_wallet).expect("client");
    let topology = s.txn_cfg.amqp.topology();
    let sender = [Uuid::parse_str(&a.id).expect("id")];
    let recorded: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM txn.transactions WHERE from_user_id = $1")
        .bind(sender[0])
        .fetch_all(&s.pool)
        .await
        .expect("ids");
    // Those whose settle message was committed (answered 201 or not: the crash may have come
    // between the commit and the answer) complete; nothing else may.
    let enqueued: Vec<Uuid> = sqlx::query_scalar(
        "SELECT t.id FROM txn.transactions t WHERE t.from_user_id = $1 AND EXISTS \
         (SELECT 1 FROM txn.outbox o WHERE o.routing_key = 'transaction.settle' \
          AND (o.body->>'transactionId' = t.id::text OR o.body->'transactionIds' ? t.id::text))",
    )
    .bind(sender[0])
    .fetch_all(&s.pool)
    .await
    .expect("enqueued");
    assert!(accepted.iter().all(|id| enqueued.contains(id)), "a 201 without a settle message");
    assert!(!enqueued.is_empty(), "the fault point comes after an accept committed");
    wait_final(&s, &enqueued, Duration::from_secs(30)).await;
    assert_eq!(count_completed(&s, &enqueued).await, enqueued.len() as i64, "every enqueued transfer settles");
    payflow_transaction::reversal::reverse(&s.pool, &wallet, &topology, Duration::ZERO, 100, Some(&sender))
        .await
        .expect("reversal");
    wait_final(&s, &recorded, Duration::from_secs(30)).await;
    assert_invariants(&s, &recorded).await;
    let (_, w) = crate::harness::get(&s, &format!("/api/wallets/{}", a.id), &a.access).await;
    let completed = count_completed(&s, &recorded).await;
    assert_eq!(completed, enqueued.len() as i64, "the reversal completed or failed only the rest");
    assert_eq!(w["balance"], format!("{}.00", 1000 - completed), "only completed ones moved: {w}");
    assert_eq!(w["available_balance"], w["balance"], "no hold left behind");
    eprintln!(
        "burst: {} answered 201, {} recorded, {completed} enqueued and completed",
        accepted.len(),
        recorded.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_crash_between_hold_and_accept_settles_the_transfer() {
    let s = Stack::start().await;
    let (a, b) = (s.register().await, s.register().await);
    let fault = "transaction-after-hold";
    let (child, base) = armed_transaction_service(&s, fault).await;
    let key = format!("crash-{}", Uuid::new_v4());
    let first = s
        .http
        .post(format!("{base}/api/transactions"))
        .bearer_auth(&a.access)
        .header("idempotency-key", &key)
        .json(&json!({"toUserId": b.id, "amount": "3.00"}))
        .send()
        .await;
    assert!(first.is_err(), "the service died before answering: {first:?}");
    await_killed(fault, child).await;

    // What the crash left: the PENDING row with its hold, the key's record unfinished.
    let (id, hold): (Uuid, String) = sqlx::query_as(
        "SELECT k.transaction_id, w.state FROM txn.idempotency_keys k \
         JOIN wallet.transfers w ON w.id = k.transaction_id \
         WHERE k.user_id = $1::uuid AND k.key = $2 AND k.completed_at IS NULL",
    )
    .bind(&a.id)
    .bind(&key)
    .fetch_one(&s.pool)
    .await
    .expect("the crash's leftovers");
    assert_eq!(hold, "pending");

    // A retry while the record is young is told the first is in flight.
    let early = send(&s, &a, &b.id, json!("3.00"), Some(&key)).await;
    assert_eq!(early.status, 409, "{}", early.body);
    // Once it has had no heartbeat for 10 s (the crashed process sends none; aged here rather
    // than waited for), two retries at once: one takes it over and finishes the accept, the
    // other is in flight or replays its answer.
    sqlx::query(
        "UPDATE txn.idempotency_keys SET created_at = created_at - interval '11 seconds' \
         WHERE user_id = $1::uuid AND key = $2",
    )
    .bind(&a.id)
    .bind(&key)
    .execute(&s.pool)
    .await
    .expect("age the record");
    let (r1, r2) =
        tokio::join!(send(&s, &a, &b.id, json!("3.00"), Some(&key)), send(&s, &a, &b.id, json!("3.00"), Some(&key)));
    let answered: Vec<_> = [&r1, &r2].into_iter().filter(|r| r.status == 201).collect();
    assert!(!answered.is_empty() && [&r1, &r2].iter().all(|r| r.status == 201 || r.status == 409), "{r1:?} {r2:?}");
    for r in &answered {
        assert_eq!((r.body["id"].as_str(), r.replayed), (Some(id.to_string().as_str()), true), "{}", r.body);
    }

    // It settles now, once, instead of being failed by the reversal a minute later.
    wait_final(&s, &[id], Duration::from_secs(15)).await;
    assert_eq!(count_completed(&s, &[id]).await, 1);
    assert_invariants(&s, &[id]).await;
    let (_, w) = crate::harness::get(&s, &format!("/api/wallets/{}", a.id), &a.access).await;
    assert_eq!((w["balance"].as_str(), w["available_balance"].as_str()), (Some("997.00"), Some("997.00")), "{w}");
    let again = send(&s, &a, &b.id, json!("3.00"), Some(&key)).await;
    assert_eq!((again.status, again.replayed, again.body["id"].as_str()), (201, true, Some(id.to_string().as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_delivered_twice_settles_once() {
    let s = Stack::start().await;
    let (a, ids) = send_some(&s, 3).await;
    wait_final(&s, &ids, Duration::from_secs(15)).await;
    // Publish every settle message again, as a broker redelivery would, and
    // once more as one message naming them all (the shape of an accept batch).
    let conn = payflow_messaging::connect(&amqp_url()).await.expect("amqp");
    let publisher = payflow_messaging::Publisher::new(&conn).await.expect("publisher");
    let topology = s.txn_cfg.amqp.topology();
    let bodies = ids.iter().map(|id| json!({"transactionId": id})).chain([json!({"transactionIds": ids})]);
    for body in bodies {
        let msg = payflow_messaging::Message {
            id: Uuid::new_v4(),
            kind: payflow_messaging::topology::SETTLE.into(),
            correlation_id: "duplicate-test".into(),
            timestamp: 0,
            body: body.to_string().into_bytes(),
            attempt: 0,
        };
        publisher.publish(&topology.work_exchange(), payflow_messaging::topology::SETTLE, &msg).await.expect("publish");
    }
    // One worker takes the queue in order: once a transfer sent after the
    // duplicates has settled, the duplicates have been handled.
    let b = s.register().await;
    let marker = send(&s, &a, &b.id, json!(1), None).await;
    let marker = Uuid::parse_str(marker.body["id"].as_str().expect("id")).expect("uuid");
    wait_final(&s, &[marker], Duration::from_secs(15)).await;
    assert_invariants(&s, &ids).await;
    let (_, w) = crate::harness::get(&s, &format!("/api/wallets/{}", a.id), &a.access).await;
    assert_eq!(w["balance"], "996.00", "3 + 1 transfers of 1.00, each once: {w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_message_naming_more_than_one_wallet_call_takes_settles_them_all() {
    // No relay: the message below is the only one that names these transactions.
    let s = Stack::start_with(Options { worker: false, relay: false, ..Default::default() }).await;
    let mut users = Vec::new();
    for _ in 0..10 {
        users.push(s.register().await);
    }
    // 250 transfers (wallet posts at most 200 per call), accepted while no worker runs.
    let sends = (0..250).map(|i| {
        let (from, to) = (&users[i % 10], &users[(i + 1) % 10]);
        send(&s, from, &to.id, json!(1), None)
    });
    let mut ids = Vec::new();
    for sent in futures::future::join_all(sends).await {
        assert_eq!(sent.status, 201, "{}", sent.body);
        ids.push(Uuid::parse_str(sent.body["id"].as_str().expect("id")).expect("uuid"));
    }
    // One message naming all of them, as a large accept batch would.
    let conn = payflow_messaging::connect(&amqp_url()).await.expect("amqp");
    let publisher = payflow_messaging::Publisher::new(&conn).await.expect("publisher");
    let topology = s.txn_cfg.amqp.topology();
    // Nothing may have declared the topology yet; an unroutable message would vanish.
    topology.declare(publisher.channel()).await.expect("declare");
    let msg = payflow_messaging::Message {
        id: Uuid::new_v4(),
        kind: payflow_messaging::topology::SETTLE.into(),
        correlation_id: "many-test".into(),
        timestamp: 0,
        body: json!({"transactionIds": ids}).to_string().into_bytes(),
        attempt: 0,
    };
    publisher.publish(&topology.work_exchange(), payflow_messaging::topology::SETTLE, &msg).await.expect("publish");

    let cancel = payflow_common::shutdown::CancellationToken::new();
    let worker = tokio::spawn(payflow_transaction::worker::run(s.worker_cfg.clone(), cancel.clone()));
    wait_final(&s, &ids, Duration::from_secs(60)).await;
    cancel.cancel();
    let _ = worker.await;
    assert_invariants(&s, &ids).await;
    let completed = count_completed(&s, &ids).await;
    assert_eq!(completed, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_message_that_keeps_failing_is_dead_lettered_after_its_tries() {
    let s = Stack::start_with(Options { worker: false, ..Default::default() }).await;
    let (_, ids) = send_some(&s, 1).await;
    // A worker whose wallet never answers: every try ends in the retry queue, two at most.
    let mut cfg = s.worker_cfg.clone();
    cfg.wallet.wallet_url = "http://127.0.0.1:1".into();
    cfg.max_retries = 2;
    let cancel = payflow_common::shutdown::CancellationToken::new();
    let worker = tokio::spawn(payflow_transaction::worker::run(cfg, cancel.clone()));

    let conn = payflow_messaging::connect(&amqp_url()).await.expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    let topology = s.txn_cfg.amqp.topology();
    let dlq = topology.dead_letter_queue(&topology.transactions_queue());
    let dead = dead_letters(&ch, &dlq, 1).await.remove(0);
    cancel.cancel();
    let _ = worker.await;
    let tries = dead
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(payflow_messaging::message::ATTEMPT_HEADER).cloned());
    assert_eq!(tries, Some(lapin::types::AMQPValue::LongUInt(2)), "dead-lettered after its second retry");
    let body: serde_json::Value = serde_json::from_slice(&dead.delivery.data).expect("json");
    assert_eq!(body["transactionId"], json!(ids[0]));
    // Nothing moved; the reversal finishes it later.
    let status: String = sqlx::query_scalar("SELECT status FROM txn.transactions WHERE id = $1")
        .bind(ids[0])
        .fetch_one(&s.pool)
        .await
        .expect("status");
    assert!(status == "PENDING" || status == "PROCESSING", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_settle_message_ends_in_the_dead_letter_queue() {
    let s = Stack::start().await;
    let conn = payflow_messaging::connect(&amqp_url()).await.expect("amqp");
    let publisher = payflow_messaging::Publisher::new(&conn).await.expect("publisher");
    let topology = s.txn_cfg.amqp.topology();
    // The stack's processes may not have declared it yet; an unroutable message would vanish.
    topology.declare(publisher.channel()).await.expect("declare");
    let poisons: [&[u8]; 2] = [b"{not json", br#"{"transactionIds":[]}"#];
    for body in poisons {
        let poison = payflow_messaging::Message {
            id: Uuid::new_v4(),
            kind: payflow_messaging::topology::SETTLE.into(),
            correlation_id: "poison-test".into(),
            timestamp: 0,
            body: body.to_vec(),
            attempt: 0,
        };
        let (exchange, key) = (topology.work_exchange(), payflow_messaging::topology::SETTLE);
        publisher.publish(&exchange, key, &poison).await.expect("publish");
    }
    let dlq = topology.dead_letter_queue(&topology.transactions_queue());
    let ch = conn.create_channel().await.expect("channel");
    let dead: Vec<Vec<u8>> =
        dead_letters(&ch, &dlq, poisons.len()).await.into_iter().map(|m| m.delivery.data).collect();
    assert_eq!(dead, poisons.map(<[u8]>::to_vec));
    // The worker goes on: a normal transfer still settles.
    let (_, ids) = send_some(&s, 1).await;
    wait_final(&s, &ids, Duration::from_secs(15)).await;
    assert_invariants(&s, &ids).await;
}
