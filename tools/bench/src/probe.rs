//! Where the time goes: Prometheus counters of the services (scraped before
//! and after a level) and samples taken while a level runs and drains
//! (Postgres sessions, unpublished outbox rows, the RabbitMQ work queue).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;

/// One scrape of every metrics URL: series (name with labels) → value.
#[derive(Default, Clone)]
pub struct Scrape(HashMap<String, f64>);

pub async fn scrape(client: &reqwest::Client, urls: &[String]) -> Scrape {
    let mut all = HashMap::new();
    for url in urls {
        let Ok(res) = client.get(url).timeout(Duration::from_secs(5)).send().await else { continue };
        let Ok(text) = res.text().await else { continue };
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some((series, value)) = line.rsplit_once(' ') {
                if let Ok(v) = value.parse::<f64>() {
                    all.insert(series.to_string(), v);
                }
            }
        }
    }
    Scrape(all)
}

/// `name{a="x",b="y"}` → (`name`, {a: x, b: y}).
fn parse_series(series: &str) -> (&str, BTreeMap<&str, &str>) {
    let Some((name, rest)) = series.split_once('{') else { return (series, BTreeMap::new()) };
    let labels = rest
        .trim_end_matches('}')
        .split("\",")
        .filter_map(|kv| kv.split_once("=\""))
        .map(|(k, v)| (k.trim_matches(','), v.trim_end_matches('"')))
        .collect();
    (name, labels)
}

/// Differences between two scrapes, summed over series of one name (and
/// grouped by `group`, a function of the labels).
fn deltas(
    before: &Scrape,
    after: &Scrape,
    name: &str,
    group: impl Fn(&BTreeMap<&str, &str>) -> Option<String>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (series, v) in &after.0 {
        let (n, labels) = parse_series(series);
        if n != name {
            continue;
        }
        let Some(key) = group(&labels) else { continue };
        let d = v - before.0.get(series).copied().unwrap_or(0.0);
        *out.entry(key).or_insert(0.0) += d;
    }
    out
}

/// Mean worker batch size between two scrapes.
pub fn worker_batch_mean(before: &Scrape, after: &Scrape) -> Option<f64> {
    let sum: f64 = deltas(before, after, "payflow_worker_batch_size_sum", |_| Some(String::new())).values().sum();
    let count: f64 = deltas(before, after, "payflow_worker_batch_size_count", |_| Some(String::new())).values().sum();
    (count > 0.0).then(|| sum / count)
}

/// Server-side request count and mean latency (ms) per `service method route`,
/// busiest first.
pub fn http_means(before: &Scrape, after: &Scrape) -> Vec<(String, f64, f64)> {
    let key = |l: &BTreeMap<&str, &str>| {
        let route = *l.get("route")?;
        if route == "/metrics" || route.starts_with("/health") || route.starts_with("/ready") {
            return None;
        }
        Some(format!("{} {} {}", l.get("service").unwrap_or(&"?"), l.get("method").unwrap_or(&"?"), route))
    };
    let sums = deltas(before, after, "payflow_http_request_duration_seconds_sum", key);
    let counts = deltas(before, after, "payflow_http_request_duration_seconds_count", key);
    let mut out: Vec<(String, f64, f64)> = counts
        .into_iter()
        .filter(|(_, c)| *c > 0.0)
        .map(|(k, c)| {
            let mean_ms = sums.get(&k).copied().unwrap_or(0.0) / c * 1e3;
            (k, c, mean_ms)
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// CPU time of this machine's processes (`/proc`, Linux only).
#[derive(Default, Clone)]
pub struct Cpu {
    /// All CPUs' ticks (busy and idle) in `/proc/stat`.
    total: u64,
    idle: u64,
    /// Ticks and name per process, keyed by pid and start time. Keyed by
    /// process, not by name: a kernel worker renames itself after the queue it
    /// serves (`kworker/u8:3-writeback`, then `-events_unbound`), and a
    /// name-keyed delta counted such a thread's whole life into one level.
    by_process: HashMap<(u32, u64), (String, u64)>,
}

pub fn cpu() -> Cpu {
    let mut c = Cpu::default();
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return c };
    if let Some(line) = stat.lines().next() {
        let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        c.total = f.iter().take(8).sum();
        c.idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    }
    let Ok(dir) = std::fs::read_dir("/proc") else { return c };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ... utime, stime and starttime are fields 14, 15 and 22; comm may hold spaces.
        let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else { continue };
        let name = process_name(&text[open + 1..close]);
        let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
        let field = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        c.by_process.insert((pid, field(19)), (name, field(11) + field(12)));
    }
    c
}

/// A kernel worker's name without the queue it serves at the moment.
fn process_name(comm: &str) -> String {
    match comm.split_once('-') {
        Some((worker, _)) if comm.starts_with("kworker/") => worker.to_string(),
        _ => comm.to_string(),
    }
}

/// Cores used per process name between two snapshots (busiest first), and idle cores.
pub fn cpu_usage(before: &Cpu, after: &Cpu) -> (Vec<(String, f64)>, f64) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let total = after.total.saturating_sub(before.total) as f64;
    if total <= 0.0 {
        return (Vec::new(), 0.0);
    }
    let mut by_name: HashMap<&str, u64> = HashMap::new();
    for (key, (name, ticks)) in &after.by_process {
        let earlier = before.by_process.get(key).map_or(0, |(_, t)| *t);
        *by_name.entry(name).or_default() += ticks.saturating_sub(earlier);
    }
    let mut v: Vec<(String, f64)> = by_name
        .into_iter()
        .map(|(k, t)| (k.to_string(), t as f64 / total * cores))
        .filter(|(_, c)| *c >= 0.01)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    (v, after.idle.saturating_sub(before.idle) as f64 / total * cores)
}

/// Aggregates of the samples taken during one level.
#[derive(Default, Debug, Clone)]
pub struct Samples {
    pub pg_samples: u64,
    /// Non-idle Postgres client sessions by `state` / `wait_event_type:wait_event`
    /// (`CPU` = active without a wait event), summed over samples.
    pub pg_sessions: BTreeMap<String, u64>,
    pub outbox_unpublished_max: i64,
    pub outbox_age_max: f64,
    /// Messages ready / unacknowledged in the work queue (management API; its
    /// statistics refresh every few seconds).
    pub queue_ready_max: Option<i64>,
    pub queue_unacked_max: Option<i64>,
    /// (seconds since the level started, PENDING+PROCESSING in the database) while the load ran.
    pub open_series: Vec<(f64, i64)>,
}

impl Samples {
    /// How fast the backlog grew (transactions per second, least squares)
    /// over the second half of the load, after the pipeline filled.
    pub fn backlog_growth(&self) -> Option<f64> {
        let end = self.open_series.last()?.0;
        let pts: Vec<(f64, f64)> =
            self.open_series.iter().filter(|(t, _)| *t >= end / 2.0).map(|(t, n)| (*t, *n as f64)).collect();
        if pts.len() < 3 {
            return None;
        }
        let n = pts.len() as f64;
        let (mt, mn) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
        let var: f64 = pts.iter().map(|p| (p.0 - mt).powi(2)).sum();
        let cov: f64 = pts.iter().map(|p| (p.0 - mt) * (p.1 - mn)).sum();
        (var > 0.0).then(|| cov / var)
    }

    /// The busiest session kinds, as average concurrent sessions.
    pub fn top_sessions(&self, n: usize) -> Vec<(String, f64)> {
        if self.pg_samples == 0 {
            return Vec::new();
        }
        let mut v: Vec<(String, f64)> =
            self.pg_sessions.iter().map(|(k, c)| (k.clone(), *c as f64 / self.pg_samples as f64)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.truncate(n);
        v
    }
}

/// Where the RabbitMQ management API is, with its credentials split off.
#[derive(Clone)]
pub struct Management {
    base: reqwest::Url,
    user: String,
    password: Option<String>,
    queue: String,
}

impl Management {
    pub fn parse(url: &str, queue: &str) -> anyhow::Result<Self> {
        let mut base = reqwest::Url::parse(url)?;
        let user = base.username().to_string();
        let password = base.password().map(str::to_string);
        let _ = base.set_username("");
        let _ = base.set_password(None);
        Ok(Self { base, user, password, queue: queue.to_string() })
    }

    async fn queue_depth(&self, client: &reqwest::Client) -> Option<(i64, i64)> {
        let url = self.base.join(&format!("api/queues/%2F/{}", self.queue)).ok()?;
        let res = client
            .get(url)
            .basic_auth(&self.user, self.password.as_deref())
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = res.json().await.ok()?;
        Some((v["messages_ready"].as_i64()?, v["messages_unacknowledged"].as_i64()?))
    }
}

/// Samples until `stop` turns true: Postgres every 200 ms, RabbitMQ every
/// second, the open-transaction count until `load_end`.
pub async fn sample(
    pool: PgPool,
    client: reqwest::Client,
    management: Option<Management>,
    load_end: Instant,
    mut stop: watch::Receiver<bool>,
) -> Samples {
    let started = Instant::now();
    let mut s = Samples::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return s,
        }
        if *stop.borrow() {
            return s;
        }
        let sessions: Result<Vec<(String, i64)>, _> = sqlx::query_as(
            // Sessions idle inside a transaction are named by component (application_name):
            // which one holds its transaction open across a round trip.
            "SELECT CASE WHEN state = 'active' \
                    THEN coalesce(wait_event_type || ':' || wait_event, 'CPU') \
                    WHEN application_name LIKE 'payflow-%' \
                    THEN state || ' (' || substr(application_name, 9) || ')' ELSE state END, count(*) \
             FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
               AND datname = current_database() AND state IS DISTINCT FROM 'idle' GROUP BY 1",
        )
        .fetch_all(&pool)
        .await;
        if let Ok(rows) = sessions {
            s.pg_samples += 1;
            for (k, c) in rows {
                *s.pg_sessions.entry(k).or_default() += c.max(0) as u64;
            }
        }
        if Instant::now() < load_end {
            let open: Result<i64, _> =
                sqlx::query_scalar("SELECT count(*) FROM txn.transactions WHERE status IN ('PENDING', 'PROCESSING')")
                    .fetch_one(&pool)
                    .await;
            if let Ok(open) = open {
                s.open_series.push((started.elapsed().as_secs_f64(), open));
            }
        }
        let outbox: Result<(i64, Option<f64>), _> = sqlx::query_as(
            "SELECT count(*), EXTRACT(EPOCH FROM clock_timestamp() - min(created_at))::float8 \
             FROM txn.outbox WHERE published_at IS NULL",
        )
        .fetch_one(&pool)
        .await;
        if let Ok((count, age)) = outbox {
            s.outbox_unpublished_max = s.outbox_unpublished_max.max(count);
            s.outbox_age_max = s.outbox_age_max.max(age.unwrap_or(0.0));
        }
        if n % 5 == 0 {
            if let Some(m) = &management {
                if let Some((ready, unacked)) = m.queue_depth(&client).await {
                    s.queue_ready_max = Some(s.queue_ready_max.unwrap_or(0).max(ready));
                    s.queue_unacked_max = Some(s.queue_unacked_max.unwrap_or(0).max(unacked));
                }
            }
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_worker_is_named_without_its_current_queue() {
        assert_eq!(process_name("kworker/u8:3-writeback"), "kworker/u8:3");
        assert_eq!(process_name("kworker/1:1H-kblockd"), "kworker/1:1H");
        assert_eq!(process_name("payflow-bench"), "payflow-bench");
    }

    #[test]
    fn a_process_counts_only_what_it_used_between_the_snapshots_whatever_its_name() {
        let snap = |name: &str, ticks: u64| Cpu {
            total: ticks * 10,
            idle: 0,
            by_process: HashMap::from([((7, 1), (name.to_string(), ticks))]),
        };
        let (used, _) = cpu_usage(&snap("kworker/u8:3", 900), &snap("kworker/u8:3", 1000));
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        assert_eq!(used.len(), 1);
        assert!((used[0].1 - 100.0 / 1000.0 * cores).abs() < 1e-9, "{used:?}");
    }

    #[test]
    fn series_are_parsed() {
        let (name, labels) =
            parse_series(r#"payflow_x_sum{method="POST",route="/api/transactions",service="gateway"}"#);
        assert_eq!(name, "payflow_x_sum");
        assert_eq!(labels.get("method"), Some(&"POST"));
        assert_eq!(labels.get("route"), Some(&"/api/transactions"));
        assert_eq!(labels.get("service"), Some(&"gateway"));
        assert_eq!(parse_series("plain").0, "plain");
    }

    #[test]
    fn http_means_group_statuses() {
        let before = Scrape(HashMap::from([
            (
                r#"payflow_http_request_duration_seconds_sum{method="POST",route="/a",service="s",status="201"}"#
                    .into(),
                1.0,
            ),
            (
                r#"payflow_http_request_duration_seconds_count{method="POST",route="/a",service="s",status="201"}"#
                    .into(),
                10.0,
            ),
        ]));
        let after = Scrape(HashMap::from([
            (
                r#"payflow_http_request_duration_seconds_sum{method="POST",route="/a",service="s",status="201"}"#
                    .into(),
                2.0,
            ),
            (
                r#"payflow_http_request_duration_seconds_count{method="POST",route="/a",service="s",status="201"}"#
                    .into(),
                20.0,
            ),
            (
                r#"payflow_http_request_duration_seconds_sum{method="POST",route="/a",service="s",status="503"}"#
                    .into(),
                1.0,
            ),
            (
                r#"payflow_http_request_duration_seconds_count{method="POST",route="/a",service="s",status="503"}"#
                    .into(),
                10.0,
            ),
        ]));
        let m = http_means(&before, &after);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, "s POST /a");
        assert_eq!(m[0].1, 20.0);
        assert!((m[0].2 - 100.0).abs() < 1e-9);
    }
}
