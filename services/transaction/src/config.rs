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
    #[arg(long = "pending-timeout-secs", env = "PAYFLOW_PENDING_TIMEOUT_SECS", default_value_t = 60)]
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
    /// Unacknowledged messages the broker may hand this worker at once.
    #[arg(long = "worker-prefetch", env = "PAYFLOW_WORKER_PREFETCH", default_value_t = 200)]
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
    /// Only transactions pending longer than this (e.g. `60s`, `5m`).
    #[arg(long = "older-than", env = "PAYFLOW_REVERSAL_OLDER_THAN", default_value = "60s", value_parser = parse_duration)]
    pub older_than: std::time::Duration,
    /// Prefix of the exchanges its events go to (as the services' PAYFLOW_AMQP_PREFIX).
    #[arg(long = "amqp-prefix", env = "PAYFLOW_AMQP_PREFIX", default_value = "payflow")]
    pub amqp_prefix: String,
    /// Transactions handled per database transaction.
    #[arg(long = "reversal-batch", env = "PAYFLOW_REVERSAL_BATCH", default_value_t = 100)]
    pub batch: i64,
}

/// `90`, `90s`, `5m`, `1h`, `250ms`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration such as 60s or 5m"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    Ok(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
