//! Delivery channels. Each is a small adapter behind [`DeliveryChannel`]; the
//! consumer hands every newly stored notification to all configured channels
//! and records each attempt in `notify.deliveries`.
//!
//! A failed delivery never blocks the ack: the notification is stored and
//! readable through the API either way. Redelivering failed webhooks and
//! e-mails (from the `deliveries` table, with backoff) is future work.

pub mod log;
pub mod smtp;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use tracing::{Instrument, Span};

use crate::config::Config;
use crate::metrics::Counters;
use crate::store::{self, DeliveryResult, Notification};

/// Upper bound for one delivery, whatever a channel's own timeouts say, so a
/// hung channel cannot hold a message unacked forever.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);

/// What a channel reports for a delivery that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// Nothing to do for this notification (the reason is recorded).
    Skipped(String),
}

#[async_trait]
pub trait DeliveryChannel: Send + Sync {
    /// The `channel` label in metrics and the deliveries table.
    fn name(&self) -> &'static str;
    async fn deliver(&self, n: &Notification, correlation_id: &str) -> anyhow::Result<Sent>;
}

/// The configured channels.
#[derive(Clone)]
pub struct Channels(Arc<Vec<Arc<dyn DeliveryChannel>>>);

impl Channels {
    /// The log channel always; webhook and SMTP when their URL is set.
    pub fn from_config(cfg: &Config, pool: &PgPool) -> anyhow::Result<Self> {
        let mut list: Vec<Arc<dyn DeliveryChannel>> = vec![Arc::new(log::LogChannel)];
        if let Some(url) = cfg.webhook_url() {
            let secret = cfg.webhook_secret.as_deref().unwrap_or_default();
            list.push(Arc::new(webhook::WebhookChannel::new(
                url,
                secret,
                Duration::from_millis(cfg.webhook_timeout_ms),
            )?));
        }
        if let Some(url) = cfg.smtp_url() {
            list.push(Arc::new(smtp::SmtpChannel::new(
                url,
                &cfg.smtp_from,
                Arc::new(smtp::AuthSchemaDirectory::new(pool.clone())),
            )?));
        }
        Ok(Self::new(list))
    }

    pub fn new(list: Vec<Arc<dyn DeliveryChannel>>) -> Self {
        Self(Arc::new(list))
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|c| c.name()).collect()
    }

    /// Delivers every notification through every channel, concurrently, and
    /// records all attempts in one statement. Each notification comes with
    /// its event's correlation id and log span. Errors here are logged, never
    /// returned: the notifications are already stored.
    pub async fn deliver_all(
        &self,
        pool: &PgPool,
        counters: &Counters,
        notifications: &[(Notification, String, Span)],
    ) {
        let attempts = notifications.iter().flat_map(|(n, correlation_id, span)| {
            self.0.iter().map(move |ch| {
                async move {
                    let result = match tokio::time::timeout(DELIVERY_DEADLINE, ch.deliver(n, correlation_id)).await {
                        Ok(Ok(Sent::Delivered)) => DeliveryResult::Ok,
                        Ok(Ok(Sent::Skipped(why))) => DeliveryResult::Skipped(why),
                        Ok(Err(e)) => DeliveryResult::Failed(format!("{e:#}")),
                        Err(_) => DeliveryResult::Failed("timed out".into()),
                    };
                    if let DeliveryResult::Failed(error) = &result {
                        tracing::warn!(
                            channel = ch.name(),
                            notification_id = %n.id,
                            %error,
                            "notification delivery failed"
                        );
                    }
                    counters.deliveries.with_label_values(&[ch.name(), result.label()]).inc();
                    (n.id, ch.name(), result)
                }
                .instrument(span.clone())
            })
        });
        let results = futures::future::join_all(attempts).await;
        // One statement for every attempt of the batch, not one commit each.
        if let Err(e) = store::record_deliveries(pool, &results).await {
            tracing::warn!(error = %e, attempts = results.len(), "could not record delivery attempts");
        }
    }
}
