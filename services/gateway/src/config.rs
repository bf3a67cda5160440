use clap::Args;
use payflow_common::config::{JwtVerifyArgs, ListenArgs, RedisArgs};

/// Settings of the API gateway.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Port of the public API.
    #[arg(long = "gateway-port", env = "PAYFLOW_GATEWAY_PORT", default_value_t = 3000)]
    pub port: u16,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub jwt: JwtVerifyArgs,
    #[command(flatten)]
    pub upstreams: UpstreamArgs,
    #[command(flatten)]
    pub limits: RateLimitArgs,
    /// Origins allowed by CORS (comma-separated, trailing slash ignored; `*`: any origin, without credentials).
    #[arg(
        long = "cors-origins",
        env = "PAYFLOW_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = "http://localhost:3000,http://localhost:8080,http://localhost"
    )]
    pub cors_origins: Vec<String>,
    /// Peers (IPs or CIDRs, comma-separated) whose X-Forwarded-For is believed, e.g. the ingress.
    #[arg(long = "trusted-proxies", env = "PAYFLOW_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
}

/// Where the services are.
#[derive(Debug, Clone, Args)]
pub struct UpstreamArgs {
    /// Base URL of the auth service.
    #[arg(long = "auth-url", env = "PAYFLOW_AUTH_URL", default_value = "http://127.0.0.1:3004")]
    pub auth_url: String,
    /// Base URL of the wallet service.
    #[arg(long = "wallet-url", env = "PAYFLOW_WALLET_URL", default_value = "http://127.0.0.1:3001")]
    pub wallet_url: String,
    /// Base URL of the transaction service.
    #[arg(long = "transaction-url", env = "PAYFLOW_TRANSACTION_URL", default_value = "http://127.0.0.1:3002")]
    pub transaction_url: String,
    /// Base URL of the notification service.
    #[arg(long = "notification-url", env = "PAYFLOW_NOTIFICATION_URL", default_value = "http://127.0.0.1:3003")]
    pub notification_url: String,
    /// Time limit for one upstream call, in milliseconds.
    #[arg(long = "upstream-timeout-ms", env = "PAYFLOW_UPSTREAM_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Consecutive failures (connection errors, timeouts; not 5xx answers) that open an upstream's circuit breaker.
    #[arg(long = "breaker-failures", env = "PAYFLOW_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,
    /// Seconds an open breaker waits before letting one trial request through.
    #[arg(long = "breaker-open-secs", env = "PAYFLOW_BREAKER_OPEN_SECS", default_value_t = 10)]
    pub breaker_open_secs: u64,
}

/// Token-bucket rate limits, kept in Redis so they hold across gateway replicas.
#[derive(Debug, Clone, Args)]
pub struct RateLimitArgs {
    /// Requests per minute per client address (all /api routes).
    #[arg(long = "rate-limit-ip-per-minute", env = "PAYFLOW_RATE_LIMIT_IP_PER_MINUTE", default_value_t = 600)]
    pub ip_per_minute: u32,
    /// Requests per minute per authenticated user.
    #[arg(long = "rate-limit-user-per-minute", env = "PAYFLOW_RATE_LIMIT_USER_PER_MINUTE", default_value_t = 300)]
    pub user_per_minute: u32,
    /// Requests per minute per client address to register, login and refresh.
    #[arg(long = "rate-limit-auth-per-minute", env = "PAYFLOW_RATE_LIMIT_AUTH_PER_MINUTE", default_value_t = 30)]
    pub auth_per_minute: u32,
}
