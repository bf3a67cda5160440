//! `payflow-bench`: the send-money benchmark. Registers users through the
//! gateway, then for each concurrency level runs a closed loop of
//! `POST /api/transactions` for a fixed time and reports, per level, how much
//! was accepted (client side) and how much settled (from `txn.transactions`),
//! how fast, and what was left over. Prints markdown on stdout, progress on stderr.
//!
//! It measures a running PayFlow; `scripts/bench.sh` starts one with the
//! gateway's rate limits off, which the benchmark needs.

mod db;
mod load;
mod probe;
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(name = "payflow-bench", version, about = "Send-money benchmark against a running PayFlow gateway")]
struct Cli {
    /// Base URL of the gateway.
    #[arg(long, env = "PAYFLOW_BENCH_GATEWAY", default_value = "http://127.0.0.1:3000")]
    gateway: String,
    /// Postgres of that PayFlow (settlement is read from txn.transactions).
    #[arg(long = "database-url", env = "PAYFLOW_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Users to register; senders and receivers are drawn from them at random.
    #[arg(long, env = "PAYFLOW_BENCH_USERS", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(2..=100_000))]
    users: u32,
    /// Concurrency levels (closed-loop senders), comma-separated; "none" runs
    /// only the --paced-rates levels.
    #[arg(long, env = "PAYFLOW_BENCH_LEVELS", default_value = "1,2,4,8,16,32,64,128", value_parser = parse_levels)]
    levels: Levels,
    /// Open-loop levels at these fixed rates (requests per second, comma-separated),
    /// run after the closed-loop levels: to probe latency at a chosen load.
    #[arg(long = "paced-rates", env = "PAYFLOW_BENCH_PACED_RATES", value_delimiter = ',')]
    paced_rates: Vec<f64>,
    /// Seconds of load per level.
    #[arg(long, env = "PAYFLOW_BENCH_DURATION", default_value_t = 10.0)]
    duration: f64,
    /// Most seconds to wait after a level for its transactions to settle.
    #[arg(long = "drain-timeout", env = "PAYFLOW_BENCH_DRAIN_TIMEOUT", default_value_t = 60.0)]
    drain_timeout: f64,
    /// Amount of every transfer (each user starts with the sign-up credit).
    #[arg(long, env = "PAYFLOW_BENCH_AMOUNT", default_value = "0.01")]
    amount: String,
    /// Registrations in flight at once (auth hashes passwords with argon2).
    #[arg(long = "register-concurrency", env = "PAYFLOW_BENCH_REGISTER_CONCURRENCY", default_value_t = 8)]
    register_concurrency: usize,
    /// Per-request time limit, seconds.
    #[arg(long = "request-timeout", env = "PAYFLOW_BENCH_REQUEST_TIMEOUT", default_value_t = 30.0)]
    request_timeout: f64,
    /// Refresh every access token before a level once they are this old (seconds);
    /// keep it below auth's PAYFLOW_ACCESS_TOKEN_TTL_SECS minus one level.
    #[arg(long = "token-refresh-after", env = "PAYFLOW_BENCH_TOKEN_REFRESH_AFTER", default_value_t = 600)]
    token_refresh_after: u64,
    /// Prometheus endpoints scraped before and after each level (empty: none).
    #[arg(
        long = "metrics-urls",
        env = "PAYFLOW_BENCH_METRICS_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:3000/metrics,http://127.0.0.1:3001/metrics,http://127.0.0.1:3002/metrics,http://127.0.0.1:3005/metrics"
    )]
    metrics_urls: Vec<String>,
    /// RabbitMQ management API (credentials in the URL) for the work queue's depth.
    #[arg(long = "rabbitmq-management-url", env = "PAYFLOW_RABBITMQ_MANAGEMENT_URL", hide_env_values = true)]
    rabbitmq_management_url: Option<String>,
    /// Skip the last, open-loop level (requests at a fixed rate of half the
    /// peak accepted/s, latency counted from when each was due).
    #[arg(long = "no-paced", env = "PAYFLOW_BENCH_NO_PACED")]
    no_paced: bool,
    /// The open-loop level's most requests in flight.
    #[arg(long = "paced-max-in-flight", env = "PAYFLOW_BENCH_PACED_MAX_IN_FLIGHT", default_value_t = 256)]
    paced_max_in_flight: usize,
    /// The work queue whose depth is sampled.
    #[arg(long = "queue", env = "PAYFLOW_BENCH_QUEUE", default_value = "payflow.transactions")]
    queue: String,
}

/// The closed-loop levels, parsed once: "none" or a list of 1..=4096.
#[derive(Clone, Debug)]
struct Levels(Vec<u32>);

fn parse_levels(s: &str) -> Result<Levels, String> {
    if s.trim() == "none" {
        return Ok(Levels(Vec::new()));
    }
    s.split(',')
        .map(|p| match p.trim().parse::<u32>() {
            Ok(n @ 1..=4096) => Ok(n),
            _ => Err(format!("'{p}' is not a concurrency between 1 and 4096")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Levels)
}

fn secs(v: f64, what: &str, max: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(v.is_finite() && v > 0.0 && v <= max, "{what} must be between 0 and {max} seconds, got {v}");
    Ok(Duration::from_secs_f64(v))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let duration = secs(cli.duration, "--duration", 3600.0)?;
    let drain_limit = secs(cli.drain_timeout, "--drain-timeout", 3600.0)?;
    let request_timeout = secs(cli.request_timeout, "--request-timeout", 600.0)?;
    anyhow::ensure!(!cli.levels.0.is_empty() || !cli.paced_rates.is_empty(), "--levels none needs --paced-rates");
    for &r in &cli.paced_rates {
        anyhow::ensure!(r.is_finite() && r > 0.0, "--paced-rates must be positive numbers, got {r}");
    }
    anyhow::ensure!(!cli.amount.is_empty(), "--amount is empty");
    let gateway = cli.gateway.trim_end_matches('/').to_string();
    let max_level = (cli.levels.0.iter().copied().max().unwrap_or(1) as usize).max(cli.paced_max_in_flight);

    let client = reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(max_level + 16)
        .tcp_nodelay(true)
        .build()?;
    let management =
        cli.rabbitmq_management_url.as_deref().map(|u| probe::Management::parse(u, &cli.queue)).transpose()?;

    wait_ready(&client, &gateway).await?;
    let pool = db::connect(&cli.database_url).await.context("connecting to Postgres (--database-url)")?;
    let stale = db::open_total(&pool).await.context("reading txn.transactions (did `payflow migrate` run?)")?;
    if stale > 0 {
        eprintln!("bench: note: {stale} transactions are PENDING/PROCESSING before the run (not counted)");
    }

    let run_id = format!("{:08x}", rand::random::<u32>());
    let t = Instant::now();
    eprintln!("bench: registering {} users (run {run_id})", cli.users);
    let mut users =
        load::register_users(&client, &gateway, cli.users as usize, cli.register_concurrency, &run_id).await?;
    let mut tokens_at = Instant::now();
    let reg_secs = t.elapsed().as_secs_f64();
    eprintln!("bench: registered {} users in {reg_secs:.1} s ({:.0}/s)", users.len(), users.len() as f64 / reg_secs);

    let mut levels = Vec::new();
    for &c in &cli.levels.0 {
        if tokens_at.elapsed() >= Duration::from_secs(cli.token_refresh_after) {
            eprintln!("bench: refreshing access tokens");
            users = load::refresh_tokens(&client, &gateway, users, cli.register_concurrency).await?;
            tokens_at = Instant::now();
        }
        let shared = Arc::new(users.clone());
        eprintln!("bench: conc {c}: {:.0} s of load", duration.as_secs_f64());
        let load = Load::Closed(c as usize);
        let level = run_level(&client, &pool, &cli, management.clone(), shared, load, duration, drain_limit)
            .await
            .with_context(|| format!("level {c}"))?;
        eprintln!(
            "bench: conc {c}: {:.0} accepted/s, {:.0} settled/s, {} errors, backlog {} at end, {}, {}/{} COMPLETED",
            level.accepted_per_sec(),
            level.settled_per_sec(),
            level.load.error_count(),
            level.backlog_at_end,
            match level.drained_after {
                Some(d) => format!("drained in {d:.1} s"),
                None => format!("NOT drained within {:.0} s", drain_limit.as_secs_f64()),
            },
            level.settlement.completed,
            level.load.accepted(),
        );
        levels.push(level);
    }

    let peak = levels.iter().map(report::Level::accepted_per_sec).fold(0.0, f64::max);
    let half_peak = (!cli.no_paced && peak > 0.0).then_some(peak / 2.0);
    for rate in cli.paced_rates.iter().copied().chain(half_peak) {
        let what = if Some(rate) == half_peak { " (half the peak)" } else { "" };
        eprintln!("bench: paced at {rate:.0}/s{what}: {:.0} s of load", duration.as_secs_f64());
        let load = Load::Paced { rate, max_in_flight: cli.paced_max_in_flight };
        let shared = Arc::new(users.clone());
        let level = run_level(&client, &pool, &cli, management.clone(), shared, load, duration, drain_limit)
            .await
            .context("paced level")?;
        eprintln!(
            "bench: paced at {rate:.0}/s: {:.0} accepted/s, accept p99 {:.2} ms",
            level.accepted_per_sec(),
            level.load.accept_latency.value_at_quantile(0.99) as f64 / 1e3
        );
        levels.push(level);
    }

    print_report(&cli, &levels, users.len(), reg_secs, stale);
    eprintln!("bench: done");
    pool.close().await;
    Ok(())
}

async fn wait_ready(client: &reqwest::Client, gateway: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get(format!("{gateway}/readyz")).timeout(Duration::from_secs(2)).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            other if Instant::now() >= deadline => {
                anyhow::bail!("gateway {gateway}/readyz is not ready: {:?}", other.map(|r| r.status()))
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// How a level drives the gateway.
#[derive(Clone, Copy)]
enum Load {
    /// This many senders, each sending again as soon as answered.
    Closed(usize),
    /// A request every 1/rate seconds, answered or not.
    Paced { rate: f64, max_in_flight: usize },
}

#[allow(clippy::too_many_arguments)]
async fn run_level(
    client: &reqwest::Client,
    pool: &sqlx::PgPool,
    cli: &Cli,
    management: Option<probe::Management>,
    users: Arc<Vec<load::User>>,
    mode: Load,
    duration: Duration,
    drain_limit: Duration,
) -> anyhow::Result<report::Level> {
    let before = probe::scrape(client, &cli.metrics_urls).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let load_end = Instant::now() + duration;
    let sampler = tokio::spawn(probe::sample(pool.clone(), client.clone(), management, load_end, stop_rx));

    let counters_before = db::counters(pool).await?;
    let cpu_before = probe::cpu();
    let load = match mode {
        Load::Closed(c) => load::closed_loop(client, &cli.gateway, users, &cli.amount, c, duration).await?,
        Load::Paced { rate, max_in_flight } => {
            load::paced(client, &cli.gateway, users, &cli.amount, rate, max_in_flight, duration).await?
        }
    };
    let cpu = probe::cpu_usage(&cpu_before, &probe::cpu());
    let window_end = db::clock(pool).await?;
    let backlog_at_end = db::open_among(pool, &load.ids).await?;
    let backlog_total_at_end = db::open_total(pool).await?;

    let drain_started = Instant::now();
    let mut open = backlog_at_end;
    let drained_after = loop {
        if open == 0 {
            break Some(drain_started.elapsed().as_secs_f64());
        }
        if drain_started.elapsed() >= drain_limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        open = db::open_among(pool, &load.ids).await?;
    };
    let _ = stop_tx.send(true);
    let samples = sampler.await?;
    let after = probe::scrape(client, &cli.metrics_urls).await;
    let settlement = db::settlement(pool, &load.ids, window_end).await?;
    let counters_after = db::counters(pool).await?;
    let db_delta = db::Counters {
        commits: counters_after.commits - counters_before.commits,
        wal_syncs: counters_after.wal_syncs - counters_before.wal_syncs,
        wal_bytes: counters_after.wal_bytes - counters_before.wal_bytes,
    };
    Ok(report::Level {
        db: db_delta,
        concurrency: match mode {
            Load::Closed(c) => c,
            Load::Paced { max_in_flight, .. } => max_in_flight,
        },
        paced_rate: match mode {
            Load::Closed(_) => None,
            Load::Paced { rate, .. } => Some(rate),
        },
        settlement,
        backlog_at_end,
        backlog_total_at_end,
        drained_after,
        samples,
        worker_batch_mean: probe::worker_batch_mean(&before, &after),
        http: probe::http_means(&before, &after),
        cpu,
        load,
    })
}

fn print_report(cli: &Cli, levels: &[report::Level], users: usize, reg_secs: f64, stale: i64) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("## PayFlow send-money benchmark\n");
    println!(
        "{users} users (registered in {reg_secs:.1} s), amount {} per transfer, {} s per level, drain limit {} s, \
         gateway {}, {cores} cores shared by load generator and servers; started with {stale} open transactions.\n",
        cli.amount, cli.duration, cli.drain_timeout, cli.gateway
    );
    println!("{}", report::main_table(levels, cli.drain_timeout));
    println!(
        "accepted/s: 201 answers per second of load (client side); accept p50/p99: their latency. \
         settled/s: that level's transactions whose completed_at falls inside the load window, per second. \
         settle p50/p99: completed_at - created_at of that level's COMPLETED transactions (window and drain). \
         backlog at end: that level's PENDING+PROCESSING when the load stopped; drained: time until it reached 0.\n"
    );
    let busy: Vec<String> = levels
        .iter()
        .filter(|l| l.backlog_total_at_end > l.backlog_at_end)
        .map(|l| format!("conc {}: {}", l.label(), l.backlog_total_at_end))
        .collect();
    if !busy.is_empty() {
        println!("Open transactions in the whole database at the end of a level: {}\n", busy.join(", "));
    }
    println!("### Targets\n\n{}", report::verdict(levels));
    println!("### Where the time goes (window and drain of each level)\n");
    println!("{}", report::diagnostics_table(levels));
    println!("CPU during the load (cores; the machine has {cores}):\n\n{}", report::cpu_lines(levels, cores as f64));
    let lat = report::server_latencies(levels);
    if !lat.is_empty() {
        println!("Server-side mean latency by route (requests during the level):\n\n{lat}");
    }
}
