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
            let mut hist = new_histogram();
            let mut ids = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let n = users.len();
            while Instant::now() < deadline {
                let from = rng.gen_range(0..n);
                let mut to = rng.gen_range(0..n - 1);
                if to >= from {
                    to += 1;
                }
                let body = format!(r#"{{"toUserId":"{}","amount":"{amount}"}}"#, users[to].id);
                let sent = Instant::now();
                let res = client
                    .post(&*url)
                    .bearer_auth(&users[from].access_token)
                    .header("idempotency-key", Uuid::new_v4().to_string())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await;
                let outcome = match res {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        match r.bytes().await {
                            Ok(b) if status == 201 => match serde_json::from_slice::<Accepted>(&b) {
                                Ok(a) => Ok(a.id),
                                Err(_) => Err("bad-201".to_string()),
                            },
                            Ok(_) => Err(status.to_string()),
                            Err(e) if e.is_timeout() => Err("timeout".to_string()),
                            Err(_) => Err("io".to_string()),
                        }
                    }
                    Err(e) if e.is_timeout() => Err("timeout".to_string()),
                    Err(_) => Err("io".to_string()),
                };
                match outcome {
                    Ok(id) => {
                        let us = sent.elapsed().as_micros().clamp(1, 600_000_000) as u64;
                        hist.saturating_record(us);
                        ids.push(id);
                    }
                    Err(kind) => {
                        let transport = kind == "io";
                        *errors.entry(kind).or_default() += 1;
                        if transport {
                            // Refused connections fail at once; do not spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            (hist, ids, errors)
        });
    }
    let mut result = LoadResult {
        elapsed: Duration::ZERO,
        accept_latency: new_histogram(),
        ids: Vec::new(),
        errors: BTreeMap::new(),
    };
    while let Some(done) = tasks.join_next().await {
        let (hist, ids, errors) = done?;
        result.accept_latency.add(&hist).map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        result.ids.extend(ids);
        for (k, v) in errors {
            *result.errors.entry(k).or_default() += v;
        }
    }
    result.elapsed = started.elapsed();
    Ok(result)
}
