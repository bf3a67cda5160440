use clap::Args;
use payflow_common::config::{DbArgs, JwtVerifyArgs, ListenArgs, ServiceTokenArgs};
use payflow_messaging::AmqpArgs;

/// Where wallet is and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct WalletArgs {
    /// Base URL of the wallet service.
    #[arg(long = "wallet-url", env = "PAYFLOW_WALLET_URL", default_value = "http://127.0.0.1:3001")]
    pub wallet_url: String,
    #[command(flatten)]
    pub service_token: ServiceTokenArgs,
    /// Timeout in seconds (1-86400, wallet's limit) that wallet records on each hold this
    /// process places (its `timeout_at`); wallet voids a hold still unresolved this long plus
    /// its expiry grace after. The reversal picks transactions by its own `--older-than`.
    #[arg(long = "pending-timeout-secs", env = "PAYFLOW_PENDING_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub pending_timeout_secs: u64,
}

/// Settings of the transaction service (API and outbox relay).
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Port of the transaction HTTP API.
    #[arg(long = "transaction-port", env = "PAYFLOW_TRANSACTION_PORT", default_value_t = 3002)]
    pub port: u16,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub jwt: JwtVerifyArgs,
    #[command(flatten)]
    pub wallet: WalletArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Largest amount one transfer may move, in the currency's units.
    #[arg(long = "max-amount", env = "PAYFLOW_MAX_AMOUNT", default_value = "1000000.00")]
    pub max_amount: String,
    /// Currency assumed for amounts (wallets must match it).
    #[arg(long = "default-currency", env = "PAYFLOW_DEFAULT_CURRENCY", default_value = "USD")]
    pub default_currency: String,
    /// Run the outbox relay inside this process.
    #[arg(long = "relay", env = "PAYFLOW_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub relay: bool,
}

/// Settings of `payflow worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// Port of the worker's metrics and health endpoints.
    #[arg(long = "worker-port", env = "PAYFLOW_WORKER_PORT", default_value_t = 3005)]
    pub port: u16,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub wallet: WalletArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Unacknowledged messages the broker may hand this worker at once (1-65535; the
    /// broker reads 0 as "unlimited", so it is refused).
    #[arg(long = "worker-prefetch", env = "PAYFLOW_WORKER_PREFETCH", default_value_t = 200,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// Most messages settled in one database transaction (at most 200).
    #[arg(long = "worker-batch", env = "PAYFLOW_WORKER_BATCH", default_value_t = 100)]
    pub batch: usize,
    /// Tries a settle message gets through the retry queue (2 s apart) before it is
    /// dead-lettered; the reversal then finishes its transactions.
    #[arg(long = "worker-max-retries", env = "PAYFLOW_WORKER_MAX_RETRIES", default_value_t = 150,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_retries: u32,
}

/// Settings of `payflow reverse-pending`.
#[derive(Debug, Clone, Args)]
pub struct ReversalConfig {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub wallet: WalletArgs,
    /// Only transactions pending longer than this (e.g. `60s`, `5m`; 5 s to 7 days). A value
    /// shorter than an accept's wallet call (up to about 10 s) can fail transfers still being
    /// accepted.
    #[arg(long = "older-than", env = "PAYFLOW_REVERSAL_OLDER_THAN", default_value = "60s", value_parser = parse_older_than)]
    pub older_than: std::time::Duration,
    /// Prefix of the exchanges its events go to (as the services' PAYFLOW_AMQP_PREFIX).
    #[arg(long = "amqp-prefix", env = "PAYFLOW_AMQP_PREFIX", default_value = "payflow")]
    pub amqp_prefix: String,
    /// Transactions claimed at a time (1-1000); outcomes are committed at least every second.
    #[arg(long = "reversal-batch", env = "PAYFLOW_REVERSAL_BATCH", default_value_t = 100,
          value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub batch: i64,
    /// No new wallet call after this long (1 s to 1 h); keep it below the Job's deadline
    /// (`activeDeadlineSeconds` 300) minus one wallet call (10 s).
    #[arg(long = "reversal-time-budget", env = "PAYFLOW_REVERSAL_TIME_BUDGET", default_value = "240s",
          value_parser = parse_time_budget)]
    pub time_budget: std::time::Duration,
    /// Stop the pass after this many wallet calls failed in a row (at least 1).
    #[arg(long = "reversal-max-wallet-failures", env = "PAYFLOW_REVERSAL_MAX_WALLET_FAILURES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_wallet_failures: u32,
}

/// `90`, `90s`, `5m`, `1h`, `250ms`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration such as 60s or 5m"))?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    let ms = n.checked_mul(ms_per_unit).ok_or_else(|| format!("{s:?} is too long"))?;
    Ok(std::time::Duration::from_millis(ms))
}

/// [`parse_duration`] within `min..=max`.
fn parse_duration_in(
    s: &str,
    min: std::time::Duration,
    max: std::time::Duration,
    what: &str,
) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d < min || d > max {
        return Err(format!("{what} must be between {min:?} and {max:?}, not {s:?}"));
    }
    Ok(d)
}

/// `--older-than`: at least 5 s (the operator's smallest `pendingTimeoutSeconds`; 0 would fail
/// transfers while they are being accepted), at most 7 days (holds expire at wallet long before).
pub fn parse_older_than(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    parse_duration_in(s, Duration::from_secs(5), Duration::from_secs(7 * 86_400), "--older-than")
}

/// `--reversal-time-budget`: 1 s to 1 h.
pub fn parse_time_budget(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    parse_duration_in(s, Duration::from_secs(1), Duration::from_secs(3600), "--reversal-time-budget")
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, ReversalConfig, WalletArgs, WorkerConfig};
    use payflow_common::config::parse_component;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("-1s").is_err());
        // n * 1000 would wrap in a release build.
        assert!(parse_duration(&format!("{}s", u64::MAX / 10)).is_err());
        assert!(parse_duration(&format!("{}h", u64::MAX / 1000)).is_err());
    }

    fn args<const N: usize>(flags: [&str; N]) -> Vec<String> {
        ["--service-token=t"].iter().chain(flags.iter()).map(|f| f.to_string()).collect()
    }

    /// The clap error of parsing `flags` as `T`, which must name `flag`.
    fn refused<T: clap::Args + std::fmt::Debug, const N: usize>(flags: [&str; N], flag: &str) {
        let err = parse_component::<T>(args(flags)).expect_err(&format!("{flags:?} must be refused"));
        assert!(err.to_string().contains(flag), "{flags:?}: {err}");
    }

    #[test]
    fn a_pending_timeout_outside_wallets_range_is_refused() {
        refused::<WalletArgs, 1>(["--pending-timeout-secs=0"], "--pending-timeout-secs");
        refused::<WalletArgs, 1>(["--pending-timeout-secs=86401"], "--pending-timeout-secs");
        for ok in ["1", "86400"] {
            let parsed = parse_component::<WalletArgs>(args([&format!("--pending-timeout-secs={ok}")])).expect(ok);
            assert_eq!(parsed.pending_timeout_secs.to_string(), ok);
        }
    }

    #[test]
    fn a_worker_prefetch_of_zero_unlimited_at_the_broker_is_refused() {
        refused::<WorkerConfig, 1>(["--worker-prefetch=0"], "--worker-prefetch");
        let parsed = parse_component::<WorkerConfig>(args(["--worker-prefetch=1"])).expect("1");
        assert_eq!(parsed.prefetch, 1);
    }

    #[test]
    fn reversal_options_are_checked_when_parsed() {
        let defaults = parse_component::<ReversalConfig>(args([])).expect("defaults");
        assert_eq!(defaults.older_than, Duration::from_secs(60));
        assert_eq!(defaults.batch, 100);
        assert_eq!(defaults.time_budget, Duration::from_secs(240));
        assert_eq!(defaults.max_wallet_failures, 5);

        for bad in ["0s", "4s", "4999ms", "8d", "169h", "18446744073709551615s"] {
            refused::<ReversalConfig, 1>([&format!("--older-than={bad}")], "--older-than");
        }
        for bad in ["0", "-1", "1001"] {
            refused::<ReversalConfig, 1>([&format!("--reversal-batch={bad}")], "--reversal-batch");
        }
        for bad in ["0s", "999ms", "61m"] {
            refused::<ReversalConfig, 1>([&format!("--reversal-time-budget={bad}")], "--reversal-time-budget");
        }
        refused::<ReversalConfig, 1>(["--reversal-max-wallet-failures=0"], "--reversal-max-wallet-failures");

        let edge = parse_component::<ReversalConfig>(args([
            "--older-than=5s",
            "--reversal-batch=1",
            "--reversal-time-budget=1s",
            "--reversal-max-wallet-failures=1",
        ]))
        .expect("the smallest values");
        assert_eq!(
            (edge.older_than, edge.batch, edge.time_budget, edge.max_wallet_failures),
            (Duration::from_secs(5), 1, Duration::from_secs(1), 1)
        );
        let edge = parse_component::<ReversalConfig>(args(["--older-than=168h", "--reversal-batch=1000"]))
            .expect("the largest values");
        assert_eq!((edge.older_than, edge.batch), (Duration::from_secs(7 * 86_400), 1000));
    }
}
