use std::time::Duration;

use clap::Args;
use payflow_common::config::{DbArgs, JwtVerifyArgs, ListenArgs};
use payflow_messaging::AmqpArgs;

use crate::channels::retry::RetryPolicy;

/// Settings of the notification service.
#[derive(Clone, Args)]
pub struct Config {
    /// Port of the notification HTTP API.
    #[arg(long = "notification-port", env = "PAYFLOW_NOTIFICATION_PORT", default_value_t = 3003)]
    pub port: u16,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub jwt: JwtVerifyArgs,
    /// Events the broker hands the consumer before they are acked (bounds memory and parallel work).
    #[arg(
        long = "notification-prefetch",
        env = "PAYFLOW_NOTIFICATION_PREFETCH",
        default_value_t = 50,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub prefetch: u16,
    /// URL that receives every notification as a signed JSON POST (no webhook channel when unset).
    #[arg(long = "webhook-url", env = "PAYFLOW_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key of the `X-PayFlow-Signature` header (at least 16 characters; required with --webhook-url).
    #[arg(long = "webhook-secret", env = "PAYFLOW_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Longest a webhook call may take, in milliseconds.
    #[arg(
        long = "webhook-timeout-ms",
        env = "PAYFLOW_WEBHOOK_TIMEOUT_MS",
        default_value_t = 5000,
        value_parser = clap::value_parser!(u64).range(1..=60_000)
    )]
    pub webhook_timeout_ms: u64,
    /// Most webhook calls under way at once per process (first attempts and retries together).
    #[arg(
        long = "webhook-concurrency",
        env = "PAYFLOW_WEBHOOK_CONCURRENCY",
        default_value_t = 16,
        value_parser = clap::value_parser!(u16).range(1..=1000)
    )]
    pub webhook_concurrency: u16,
    /// SMTP server for e-mail notifications, e.g. smtp://host:25 or smtps://user:pass@host:465 (no e-mail when unset).
    #[arg(long = "smtp-url", env = "PAYFLOW_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Sender address of notification e-mails.
    #[arg(long = "smtp-from", env = "PAYFLOW_SMTP_FROM", default_value = "payflow@localhost")]
    pub smtp_from: String,
    /// Most e-mails (SMTP connections) under way at once per process (first attempts and retries together).
    #[arg(
        long = "smtp-concurrency",
        env = "PAYFLOW_SMTP_CONCURRENCY",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..=100)
    )]
    pub smtp_concurrency: u16,
    /// Attempts per notification and channel (webhook, e-mail) before giving up; 1: no retries.
    #[arg(
        long = "notification-delivery-attempts",
        env = "PAYFLOW_NOTIFICATION_DELIVERY_ATTEMPTS",
        default_value_t = 12,
        value_parser = clap::value_parser!(u32).range(1..=100)
    )]
    pub delivery_attempts: u32,
    /// Wait after a failed delivery before the next attempt, in milliseconds; it doubles with every further failure, up to an hour.
    #[arg(
        long = "notification-retry-delay-ms",
        env = "PAYFLOW_NOTIFICATION_RETRY_DELAY_MS",
        default_value_t = 5000,
        value_parser = clap::value_parser!(u64).range(10..=3_600_000)
    )]
    pub retry_delay_ms: u64,
}

impl Config {
    /// The webhook URL, if one is set (an empty variable counts as unset, as
    /// Kubernetes manifests often render optional values that way).
    pub fn webhook_url(&self) -> Option<&str> {
        non_empty(&self.webhook_url)
    }

    pub fn smtp_url(&self) -> Option<&str> {
        non_empty(&self.smtp_url)
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy { attempts: self.delivery_attempts, first_delay: Duration::from_millis(self.retry_delay_ms) }
    }
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

// Secrets and credentials stay out of logs.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("port", &self.port)
            .field("listen", &self.listen)
            .field("db", &self.db)
            .field("amqp", &self.amqp)
            .field("jwt", &self.jwt)
            .field("prefetch", &self.prefetch)
            .field("webhook_url", &self.webhook_url().map(|_| "***"))
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "***"))
            .field("webhook_timeout_ms", &self.webhook_timeout_ms)
            .field("webhook_concurrency", &self.webhook_concurrency)
            .field("smtp_url", &self.smtp_url().map(|_| "***"))
            .field("smtp_from", &self.smtp_from)
            .field("smtp_concurrency", &self.smtp_concurrency)
            .field("delivery_attempts", &self.delivery_attempts)
            .field("retry_delay_ms", &self.retry_delay_ms)
            .finish()
    }
}
