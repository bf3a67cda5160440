//! Settings of the auth service. Every one is a flag with an environment
//! variable and a default, so `payflow auth --help` documents them all.

use payflow_common::config::{DbArgs, JwtClaimArgs, ListenArgs, RedisArgs, ServiceTokenArgs};

/// `Debug` is written by hand so that logging a config never prints the
/// signing key, the service token or credentials inside connection URLs.
#[derive(clap::Args, Clone)]
pub struct Config {
    /// Port the auth HTTP server listens on.
    #[arg(long = "auth-port", env = "PAYFLOW_AUTH_PORT", default_value_t = 3004)]
    pub port: u16,

    #[command(flatten)]
    pub listen: ListenArgs,

    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub service_token: ServiceTokenArgs,

    #[command(flatten)]
    pub claims: JwtClaimArgs,

    /// Ed25519 private key (PKCS#8 PEM) that signs access tokens. When absent, a
    /// random key is generated at start: tokens then die with the process.
    #[arg(long = "jwt-private-key", env = "PAYFLOW_JWT_PRIVATE_KEY", hide_env_values = true)]
    pub jwt_private_key: Option<String>,

    /// Base URL of the wallet service (registration creates the user's wallet there).
    #[arg(long = "wallet-url", env = "PAYFLOW_WALLET_URL", default_value = "http://127.0.0.1:3001")]
    pub wallet_url: String,

    /// Lifetime of access tokens, in seconds.
    #[arg(
        long = "access-token-ttl-secs",
        env = "PAYFLOW_ACCESS_TOKEN_TTL_SECS",
        default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub access_token_ttl_secs: u64,

    /// Lifetime of refresh tokens, in seconds; each rotation starts a new lifetime.
    #[arg(
        long = "refresh-token-ttl-secs",
        env = "PAYFLOW_REFRESH_TOKEN_TTL_SECS",
        default_value_t = 604_800,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub refresh_token_ttl_secs: u64,

    /// Failed logins for one email, within the lockout window, after which logins are refused.
    #[arg(
        long = "login-max-failures",
        env = "PAYFLOW_LOGIN_MAX_FAILURES",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub login_max_failures: u32,

    /// How long a locked email stays locked, in seconds; also the window failures are counted in.
    #[arg(
        long = "login-lockout-secs",
        env = "PAYFLOW_LOGIN_LOCKOUT_SECS",
        default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub login_lockout_secs: u64,

    /// Password hashes (argon2id) computed at once; each takes one CPU core for tens of milliseconds.
    /// A login or registration waits at most 2 s for one, then gets a 503 with Retry-After.
    #[arg(
        long = "hash-concurrency",
        env = "PAYFLOW_HASH_CONCURRENCY",
        default_value_t = 2,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024)
    )]
    pub hash_concurrency: usize,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const REDACTED: &str = "<redacted>";
        f.debug_struct("Config")
            .field("port", &self.port)
            .field("listen", &self.listen)
            .field("database_url", &REDACTED)
            .field("db_max_connections", &self.db.max_connections)
            .field("redis_url", &REDACTED)
            .field("service_token", &REDACTED)
            .field("claims", &self.claims)
            .field("jwt_private_key", &self.jwt_private_key.as_ref().map(|_| REDACTED))
            .field("wallet_url", &self.wallet_url)
            .field("access_token_ttl_secs", &self.access_token_ttl_secs)
            .field("refresh_token_ttl_secs", &self.refresh_token_ttl_secs)
            .field("login_max_failures", &self.login_max_failures)
            .field("login_lockout_secs", &self.login_lockout_secs)
            .field("hash_concurrency", &self.hash_concurrency)
            .finish()
    }
}

impl Config {
    /// Values clap cannot check on its own (and that tests may set directly).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.access_token_ttl_secs >= 1, "access token TTL must be at least 1 s");
        anyhow::ensure!(self.refresh_token_ttl_secs >= 1, "refresh token TTL must be at least 1 s");
        anyhow::ensure!(self.login_max_failures >= 1, "login max failures must be at least 1");
        anyhow::ensure!(self.login_lockout_secs >= 1, "login lockout must be at least 1 s");
        anyhow::ensure!(self.hash_concurrency >= 1, "hash concurrency must be at least 1");
        // Bounds keep the conversions to i64 seconds and Postgres intervals exact.
        const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;
        for (name, v) in [
            ("access token TTL", self.access_token_ttl_secs),
            ("refresh token TTL", self.refresh_token_ttl_secs),
            ("login lockout", self.login_lockout_secs),
        ] {
            anyhow::ensure!(v <= TEN_YEARS, "{name} must be at most ten years");
        }
        let url = reqwest::Url::parse(&self.wallet_url)
            .map_err(|e| anyhow::anyhow!("invalid wallet URL {:?}: {e}", self.wallet_url))?;
        anyhow::ensure!(matches!(url.scheme(), "http" | "https"), "wallet URL must be http(s): {:?}", self.wallet_url);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        auth: Config,
    }

    #[test]
    fn defaults_parse_and_validate() {
        let cli = Cli::try_parse_from(["payflow", "--service-token", "0123456789abcdef"]).unwrap();
        let cfg = cli.auth;
        assert_eq!(cfg.port, 3004);
        assert_eq!(cfg.access_token_ttl_secs, 900);
        assert_eq!(cfg.refresh_token_ttl_secs, 604_800);
        assert_eq!(cfg.login_max_failures, 5);
        assert_eq!(cfg.login_lockout_secs, 900);
        assert_eq!(cfg.hash_concurrency, 2);
        assert_eq!(cfg.wallet_url, "http://127.0.0.1:3001");
        cfg.validate().unwrap();
    }

    #[test]
    fn debug_hides_secrets() {
        let mut cfg = Cli::try_parse_from(["payflow", "--service-token", "0123456789abcdef"]).unwrap().auth;
        cfg.jwt_private_key = Some("-----BEGIN PRIVATE KEY-----secret".into());
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(!shown.contains("payflow:payflow"), "{shown}");
        assert!(shown.contains("wallet_url"), "{shown}");
    }

    #[test]
    fn zero_values_are_refused() {
        let res = Cli::try_parse_from(["payflow", "--service-token", "0123456789abcdef", "--hash-concurrency", "0"]);
        assert!(res.is_err());
    }
}
