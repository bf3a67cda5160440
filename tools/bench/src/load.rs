//! Users and the closed loop: `concurrency` tasks, each sending one
//! `POST /api/transactions` after the other until the deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

/// A registered user and its tokens.
#[derive(Clone)]
pub struct User {
    pub id: Uuid,
    pub access_token: String,
    pub refresh_token: String,
}

pub const PASSWORD: &str = "Bench-Passw0rd";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Registered {
    user_id: Uuid,
    access_token: String,
    refresh_token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Refreshed {
    access_token: String,
    refresh_token: String,
}

#[derive(Deserialize)]
struct Accepted {
    id: Uuid,
}

/// POSTs `body` to `url`; retries 429, 5xx and transport errors a few times.
async fn post_json(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut last = String::new();
    for attempt in 0..5u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        match client.post(url).json(body).send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                let bytes = res.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                if status == 429 || status >= 500 {
                    last = format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
                    continue;
                }
                return Ok((status, bytes));
            }
            Err(e) => last = e.to_string(),
        }
    }
    anyhow::bail!("POST {url} failed: {last}")
}

/// Registers `n` users (`concurrency` requests at a time). `run_id` keeps
/// e-mail addresses unique across runs against the same database.
pub async fn register_users(
    client: &reqwest::Client,
    gateway: &str,
    n: usize,
    concurrency: usize,
    run_id: &str,
) -> anyhow::Result<Vec<User>> {
    let next = Arc::new(AtomicUsize::new(0));
    let url: Arc<str> = format!("{gateway}/api/auth/register").into();
    let run_id: Arc<str> = run_id.into();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, n) {
        let (client, next, url, run_id) = (client.clone(), next.clone(), url.clone(), run_id.clone());
        tasks.spawn(async move {
            let mut users = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(users);
                }
                let body = json!({
                    "email": format!("bench-{run_id}-{i}@bench.payflow.local"),
                    "password": PASSWORD,
                    "name": format!("Bench {run_id} {i}"),
                });
                let (status, bytes) = post_json(&client, &url, &body).await?;
                anyhow::ensure!(
                    status == 201 || status == 200,
                    "registering user {i} answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                );
                let r: Registered = serde_json::from_slice(&bytes).context("unexpected register answer")?;
                users.push(User { id: r.user_id, access_token: r.access_token, refresh_token: r.refresh_token });
            }
        });
    }
    let mut users = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        users.extend(done??);
    }
    Ok(users)
}

/// New access tokens for every user (refresh-token rotation), for long runs.
pub async fn refresh_tokens(
    client: &reqwest::Client,
    gateway: &str,
    users: Vec<User>,
    concurrency: usize,
) -> anyhow::Result<Vec<User>> {
    let url: Arc<str> = format!("{gateway}/api/auth/refresh").into();
    let queue = Arc::new(std::sync::Mutex::new(users));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, url, queue) = (client.clone(), url.clone(), queue.clone());
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let Some(u) = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop() else {
                    return anyhow::Ok(done);
                };
                let (status, bytes) = post_json(&client, &url, &json!({"refreshToken": u.refresh_token})).await?;
                anyhow::ensure!(status == 200, "refresh answered {status}: {}", String::from_utf8_lossy(&bytes));
                let r: Refreshed = serde_json::from_slice(&bytes).context("unexpected refresh answer")?;
                done.push(User { id: u.id, access_token: r.access_token, refresh_token: r.refresh_token });
            }
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        out.extend(done??);
    }
    Ok(out)
}

/// What the closed loop of one level saw.
pub struct LoadResult {
    pub elapsed: Duration,
    /// Client-side latency of 201 answers, in microseconds.
    pub accept_latency: Histogram<u64>,
    /// Ids of the accepted (201) transactions.
    pub ids: Vec<Uuid>,
    /// Non-201 outcomes: HTTP status, or `io` / `timeout` / `bad-201`.
    pub errors: BTreeMap<String, u64>,
}

impl LoadResult {
    pub fn accepted(&self) -> u64 {
        self.ids.len() as u64
    }
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds")
}

/// A random sender and receiver (never the same user).
fn pick_pair(rng: &mut StdRng, n: usize) -> (usize, usize) {
    let from = rng.gen_range(0..n);
    let mut to = rng.gen_range(0..n - 1);
    if to >= from {
        to += 1;
    }
    (from, to)
}

/// One `POST /api/transactions` with a fresh Idempotency-Key: the new
/// transaction's id, or what went wrong (HTTP status, `io`, `timeout`, `bad-201`).
async fn send_one(client: &reqwest::Client, url: &str, from: &User, to: &User, amount: &str) -> Result<Uuid, String> {
    let body = format!(r#"{{"toUserId":"{}","amount":"{amount}"}}"#, to.id);
    let res = client
        .post(url)
        .bearer_auth(&from.access_token)
        .header("idempotency-key", Uuid::new_v4().to_string())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    match res {
        Ok(r) => {
            let status = r.status().as_u16();
            match r.bytes().await {
                Ok(b) if status == 201 => {
                    serde_json::from_slice::<Accepted>(&b).map(|a| a.id).map_err(|_| "bad-201".into())
                }
                Ok(_) => Err(status.to_string()),
                Err(e) if e.is_timeout() => Err("timeout".to_string()),
                Err(_) => Err("io".to_string()),
            }
        }
        Err(e) if e.is_timeout() => Err("timeout".to_string()),
        Err(_) => Err("io".to_string()),
    }
}

/// What one sender saw: latencies of 201s, their ids, other outcomes.
struct Tally {
    hist: Histogram<u64>,
    ids: Vec<Uuid>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Self { hist: new_histogram(), ids: Vec::new(), errors: BTreeMap::new() }
    }

    /// Records an outcome; `since` is when the request was due.
    fn record(&mut self, outcome: Result<Uuid, String>, since: Instant) {
        match outcome {
            Ok(id) => {
                self.hist.saturating_record(since.elapsed().as_micros().clamp(1, 600_000_000) as u64);
                self.ids.push(id);
            }
            Err(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }

    fn merge_into(self, result: &mut LoadResult) -> anyhow::Result<()> {
        result.accept_latency.add(&self.hist).map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        result.ids.extend(self.ids);
        for (k, v) in self.errors {
            *result.errors.entry(k).or_default() += v;
        }
        Ok(())
    }
}

fn empty_result() -> LoadResult {
    LoadResult { elapsed: Duration::ZERO, accept_latency: new_histogram(), ids: Vec::new(), errors: BTreeMap::new() }
}

/// Runs `concurrency` closed-loop senders for `duration`; random sender and
/// receiver (never the same user), `amount` each, a fresh Idempotency-Key per request.
pub async fn closed_loop(
    client: &reqwest::Client,
    gateway: &str,
    users: Arc<Vec<User>>,
    amount: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(users.len() >= 2, "need at least two users");
    let url: Arc<str> = format!("{gateway}/api/transactions").into();
    let amount: Arc<str> = amount.into();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, users, amount) = (client.clone(), url.clone(), users.clone(), amount.clone());
        tasks.spawn(async move {
            let mut rng = StdRng::from_entropy();
            let mut tally = Tally::new();
            while Instant::now() < deadline {
                let (from, to) = pick_pair(&mut rng, users.len());
                let sent = Instant::now();
                let outcome = send_one(&client, &url, &users[from], &users[to], &amount).await;
                let transport = matches!(&outcome, Err(kind) if kind == "io");
                tally.record(outcome, sent);
                if transport {
                    // Refused connections fail at once; do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            tally
        });
    }
    let mut result = empty_result();
    while let Some(done) = tasks.join_next().await {
        done?.merge_into(&mut result)?;
    }
    result.elapsed = started.elapsed();
    Ok(result)
}

/// Open loop: a request is due every `1/rate` seconds for `duration`,
/// whatever the answers do; `max_in_flight` senders take the due times in
/// turn (none left: the next request is late). Latency counts from when each
/// request was due, so a server that falls behind shows it in the numbers (no
/// coordinated omission).
pub async fn paced(
    client: &reqwest::Client,
    gateway: &str,
    users: Arc<Vec<User>>,
    amount: &str,
    rate: f64,
    max_in_flight: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(users.len() >= 2, "need at least two users");
    anyhow::ensure!(rate.is_finite() && rate > 0.0, "the paced rate must be positive, got {rate}");
    let url: Arc<str> = format!("{gateway}/api/transactions").into();
    let amount: Arc<str> = amount.into();
    let next = Arc::new(AtomicUsize::new(0));
    let total = (duration.as_secs_f64() * rate).floor() as usize;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..max_in_flight.clamp(1, total.max(1)) {
        let (client, url, users, amount, next) =
            (client.clone(), url.clone(), users.clone(), amount.clone(), next.clone());
        tasks.spawn(async move {
            let mut rng = StdRng::from_entropy();
            let mut tally = Tally::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return tally;
                }
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let (from, to) = pick_pair(&mut rng, users.len());
                tally.record(send_one(&client, &url, &users[from], &users[to], &amount).await, due);
            }
        });
    }
    let mut result = empty_result();
    while let Some(done) = tasks.join_next().await {
        done?.merge_into(&mut result)?;
    }
    result.elapsed = started.elapsed();
    Ok(result)
}
