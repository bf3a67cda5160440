//! Configuration shared by several services. Every setting is a command-line
//! flag with an environment variable and a documented default, so `--help`
//! is the reference for what can be configured.

use std::net::SocketAddr;

use clap::{Args, Parser};

/// Wraps one component's arguments so they can be parsed on their own.
#[derive(Parser)]
struct Only<T: Args> {
    #[command(flatten)]
    inner: T,
}

/// Parses one component's configuration from `--name=value` flags and the
/// environment, so a caller that runs several components in one process
/// (`payflow dev`, tests) honours every PAYFLOW_* variable each one does.
pub fn parse_component<T: Args>(flags: impl IntoIterator<Item = String>) -> Result<T, clap::Error> {
    let argv = std::iter::once("payflow".to_string()).chain(flags);
    Ok(Only::<T>::try_parse_from(argv)?.inner)
}

/// Where a service listens.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Address to bind the HTTP server to.
    #[arg(long = "bind", env = "PAYFLOW_BIND", default_value = "0.0.0.0")]
    pub bind: std::net::IpAddr,
}

impl ListenArgs {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.bind, port)
    }
}

/// Postgres connection settings.
#[derive(Clone, Args)]
pub struct DbArgs {
    /// Postgres connection URL (one database; each service owns a schema in it).
    #[arg(
        long = "database-url",
        env = "PAYFLOW_DATABASE_URL",
        default_value = "postgres://payflow:payflow@127.0.0.1:5432/payflow",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Maximum connections in this service's pool (at least 1).
    #[arg(
        long = "db-max-connections",
        env = "PAYFLOW_DB_MAX_CONNECTIONS",
        default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,
}

/// Redis connection settings.
#[derive(Clone, Args)]
pub struct RedisArgs {
    /// Redis URL: the gateway's rate limits and idempotency fast path, and the list of revoked
    /// tokens (auth writes it; auth and the gateway check it).
    #[arg(
        long = "redis-url",
        env = "PAYFLOW_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,
}

/// The shared secret that internal (service-to-service) endpoints require.
#[derive(Clone, Args)]
pub struct ServiceTokenArgs {
    /// Credential for internal endpoints (wallet creation, transfers). Never routed by the gateway.
    #[arg(long = "service-token", env = "PAYFLOW_SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: String,
}

/// How access tokens are verified.
#[derive(Debug, Clone, Args)]
pub struct JwtVerifyArgs {
    /// Where auth publishes its public keys.
    #[arg(long = "jwks-url", env = "PAYFLOW_JWKS_URL", default_value = "http://127.0.0.1:3004/.well-known/jwks.json")]
    pub jwks_url: String,
    #[command(flatten)]
    pub claims: JwtClaimArgs,
}

impl JwtVerifyArgs {
    /// A verifier that fetches auth's keys from `jwks_url`.
    pub fn verifier(&self) -> crate::jwt::JwtVerifier {
        crate::jwt::JwtVerifier::from_jwks_url(&self.jwks_url, &self.claims)
    }
}

/// The `iss` and `aud` every access token carries.
#[derive(Debug, Clone, Args)]
pub struct JwtClaimArgs {
    /// Issuer (`iss`) of access tokens.
    #[arg(long = "jwt-issuer", env = "PAYFLOW_JWT_ISSUER", default_value = "payflow-auth")]
    pub issuer: String,
    /// Audience (`aud`) of access tokens.
    #[arg(long = "jwt-audience", env = "PAYFLOW_JWT_AUDIENCE", default_value = "payflow-api")]
    pub audience: String,
}

impl Default for JwtClaimArgs {
    fn default() -> Self {
        Self { issuer: "payflow-auth".into(), audience: "payflow-api".into() }
    }
}

/// Connection URLs carry passwords: show only scheme, host and port.
fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            let host = host.split(['/', '?']).next().unwrap_or("");
            format!("{scheme}://***@{host}")
        }
        None => "***".into(),
    }
}

impl std::fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbArgs")
            .field("database_url", &redact_url(&self.database_url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs").field("redis_url", &redact_url(&self.redis_url)).finish()
    }
}

impl std::fmt::Debug for ServiceTokenArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokenArgs").field("service_token", &"***").finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_component, DbArgs};

    #[test]
    fn a_pool_of_no_connections_is_refused_when_parsed() {
        // sqlx would panic later ("max_connections must be greater than zero").
        let err = parse_component::<DbArgs>(["--db-max-connections=0".to_string()]).expect_err("0 is refused");
        assert!(err.to_string().contains("--db-max-connections"), "{err}");
        let ok = parse_component::<DbArgs>(["--db-max-connections=1".to_string()]).expect("1 is fine");
        assert_eq!(ok.max_connections, 1);
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(super::redact_url("postgres://u:secret@db:5432/payflow"), "postgres://***@db:5432");
        assert_eq!(super::redact_url("redis://127.0.0.1:6379"), "redis://***@127.0.0.1:6379");
    }
}
