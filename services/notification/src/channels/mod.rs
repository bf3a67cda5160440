//! Delivery channels. Each is a small adapter behind [`DeliveryChannel`]; the
//! consumer hands every newly stored notification to all configured channels
//! and records each attempt in `notify.deliveries`.
//!
//! Delivery never holds an ack: the event is acked once its notifications
//! are stored, and they are readable through the API either way. Deliveries
//! through the channels that can fail (webhook, e-mail) are queued in
//! `notify.delivery_queue` in the same commit as the notification: a failed
//! one is tried again with backoff ([`retry`]), and one whose process died
//! before the attempt is taken up when its lease runs out. Delivery is
//! therefore at least once: receivers deduplicate by the notification's `id`.
//!
//! First attempts run in the background, at most [`FIRST_ATTEMPT_BATCHES`]
//! batches at once; past that (a slow receiver) a batch's queued deliveries
//! are left to the retry loop, so a slow receiver delays its own deliveries,
//! never the storing of new notifications.

pub mod log;
pub mod retry;
pub mod smtp;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, Span};

use crate::config::Config;
use crate::state::AppState;
use crate::store::{self, Attempt, DeliveryResult, Notification};

/// Upper bound for one delivery, whatever a channel's own timeouts say, so a
/// hung channel cannot hold a first-attempt slot or a lease forever.
pub const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);

/// Batches whose first attempts may run at once in one process.
pub const FIRST_ATTEMPT_BATCHES: usize = 16;

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
    /// Whether its deliveries are queued: kept until they succeed, retried
    /// with backoff, resumed after a crash. Everything but the log.
    fn queued(&self) -> bool {
        true
    }
    async fn deliver(&self, n: &Notification, correlation_id: &str) -> anyhow::Result<Sent>;
}

/// The configured channels.
#[derive(Clone)]
pub struct Channels {
    list: Arc<Vec<Arc<dyn DeliveryChannel>>>,
    queued: Arc<Vec<&'static str>>,
    first_attempts: Arc<Semaphore>,
}

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
        let queued = list.iter().filter(|c| c.queued()).map(|c| c.name()).collect();
        Self {
            list: Arc::new(list),
            queued: Arc::new(queued),
            first_attempts: Arc::new(Semaphore::new(FIRST_ATTEMPT_BATCHES)),
        }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.list.iter().map(|c| c.name()).collect()
    }

    /// The channels whose deliveries are queued (see [`DeliveryChannel::queued`]).
    pub fn queued(&self) -> &[&'static str] {
        &self.queued
    }

    /// Leave to run one batch's first attempts, if fewer than [`FIRST_ATTEMPT_BATCHES`] run.
    pub fn first_attempt_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.first_attempts.clone().try_acquire_owned().ok()
    }

    fn get(&self, name: &str) -> Option<&dyn DeliveryChannel> {
        self.list.iter().find(|c| c.name() == name).map(|c| c.as_ref())
    }
}

/// One delivery to attempt.
struct Job<'a> {
    notification: &'a Notification,
    channel: &'a dyn DeliveryChannel,
    correlation_id: &'a str,
    span: Span,
    /// Attempts made before this one.
    made: i32,
}

/// First attempts: every newly stored notification through every channel,
/// each with its event's correlation id and log span.
pub async fn deliver_new(state: &AppState, notifications: &[(Notification, String, Span)]) {
    attempt(state, first_jobs(state, notifications, |_| true)).await;
}

/// When [`Channels::first_attempt_slot`] had none (the queued deliveries were
/// stored due at once, for the retry loop): the log channel now, it cannot be slow.
pub async fn defer_new(state: &AppState, notifications: &[(Notification, String, Span)]) {
    attempt(state, first_jobs(state, notifications, |ch| !ch.queued())).await;
    for channel in state.channels.queued() {
        state.counters.deferred.with_label_values(&[channel]).inc_by(notifications.len() as u64);
    }
}

/// First attempts of `notifications` through the channels `which` picks.
fn first_jobs<'a>(
    state: &'a AppState,
    notifications: &'a [(Notification, String, Span)],
    which: impl Fn(&dyn DeliveryChannel) -> bool + Copy + 'a,
) -> Vec<Job<'a>> {
    notifications
        .iter()
        .flat_map(|(n, correlation_id, span)| {
            state.channels.list.iter().filter(move |ch| which(ch.as_ref())).map(move |ch| Job {
                notification: n,
                channel: ch.as_ref(),
                correlation_id,
                span: span.clone(),
                made: 0,
            })
        })
        .collect()
}

/// Runs the attempts concurrently and records them all in one statement,
/// with what comes next for the queued ones. Errors here are logged, never
/// returned: the notifications are stored either way, and a queued delivery
/// whose outcome went unrecorded is attempted again when its lease ends.
async fn attempt(state: &AppState, jobs: Vec<Job<'_>>) {
    let attempts = jobs.into_iter().map(|job| {
        let span = job.span.clone();
        async move {
            let (n, ch) = (job.notification, job.channel);
            let result = match tokio::time::timeout(DELIVERY_DEADLINE, ch.deliver(n, job.correlation_id)).await {
                Ok(Ok(Sent::Delivered)) => DeliveryResult::Ok,
                Ok(Ok(Sent::Skipped(why))) => DeliveryResult::Skipped(why),
                Ok(Err(e)) => DeliveryResult::Failed(format!("{e:#}")),
                Err(_) => DeliveryResult::Failed("timed out".into()),
            };
            let made = job.made + 1;
            let retry_in = match &result {
                DeliveryResult::Failed(_) if ch.queued() => state.retry.next(made, n.id),
                _ => None,
            };
            match &result {
                DeliveryResult::Failed(error) if ch.queued() && retry_in.is_none() => {
                    state.counters.gave_up.with_label_values(&[ch.name()]).inc();
                    tracing::error!(channel = ch.name(), notification_id = %n.id, attempts = made, %error,
                        "notification delivery failed; giving up");
                }
                DeliveryResult::Failed(error) => {
                    let retry_in_ms = retry_in.map(|d| d.as_millis() as u64);
                    tracing::warn!(channel = ch.name(), notification_id = %n.id, attempts = made, retry_in_ms, %error,
                        "notification delivery failed");
                }
                _ => {}
            }
            state.counters.deliveries.with_label_values(&[ch.name(), result.label()]).inc();
            Attempt {
                notification_id: n.id,
                channel: ch.name(),
                result,
                attempts: ch.queued().then_some(made),
                retry_in,
            }
        }
        .instrument(span)
    });
    let results = futures::future::join_all(attempts).await;
    // One statement for every attempt of the batch, not one commit each.
    if let Err(e) = store::record_attempts(&state.pool, &results).await {
        tracing::warn!(error = %e, attempts = results.len(), "could not record delivery attempts");
    }
}
