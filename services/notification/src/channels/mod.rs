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
//!
//! Each queued channel has its own bound on deliveries under way in the
//! process ([`DeliveryChannel::concurrency`]), shared by first attempts and
//! retries: a batch holds thousands of notifications, and one connection per
//! delivery for all of them at once would swamp the receiver and the process.
//!
//! A failure another attempt would not fix ([`Permanent`]: the receiver
//! refused the notification itself, the stored address is unusable) is given
//! up at once instead of being retried for hours.

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

/// Longest a first attempt waits for room in its channel. The wait and the
/// delivery together end within the lease its queue row was stored with
/// ([`retry::LEASE`]), with time to record the outcome, so no retry loop
/// takes the row while its first attempt runs. One that waited this long is
/// left to the retry loop, which takes it when the lease ends.
pub const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(retry::LEASE.as_secs() - DELIVERY_DEADLINE.as_secs() - 10);

/// The `result` label of a delivery given up at once on a [`Permanent`]
/// failure, in `payflow_notification_deliveries_total` (its row in
/// `notify.deliveries` says `failed`, with the reason).
pub const REJECTED: &str = "rejected";

/// What a channel reports for a delivery that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// Nothing to do for this notification (the reason is recorded).
    Skipped(String),
}

/// A failure another attempt would not fix (the receiver refused the
/// notification itself, the stored address is unusable). A channel returns
/// it as its error (`anyhow::Error::from`); the delivery is then given up at
/// once with this reason instead of being retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub String);

#[async_trait]
pub trait DeliveryChannel: Send + Sync {
    /// The `channel` label in metrics and the deliveries table.
    fn name(&self) -> &'static str;
    /// Whether its deliveries are queued: kept until they succeed, retried
    /// with backoff, resumed after a crash. Everything but the log.
    fn queued(&self) -> bool {
        true
    }
    /// Most of its deliveries under way at once in this process, first
    /// attempts and retries together; `None`: no bound. Only a queued channel
    /// is bounded: a first attempt that waits too long for room is left to
    /// the retry loop, which needs the queue row.
    fn concurrency(&self) -> Option<usize> {
        None
    }
    async fn deliver(&self, n: &Notification, correlation_id: &str) -> anyhow::Result<Sent>;
}

/// A configured channel and the room it has for deliveries.
struct Configured {
    channel: Arc<dyn DeliveryChannel>,
    /// One permit per delivery under way; `None`: unbounded.
    in_flight: Option<Arc<Semaphore>>,
}

/// The configured channels.
#[derive(Clone)]
pub struct Channels {
    list: Arc<Vec<Configured>>,
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
                cfg.webhook_concurrency.into(),
            )?));
        }
        if let Some(url) = cfg.smtp_url() {
            list.push(Arc::new(smtp::SmtpChannel::new(
                url,
                &cfg.smtp_from,
                Arc::new(smtp::AuthSchemaDirectory::new(pool.clone())),
                cfg.smtp_concurrency.into(),
            )?));
        }
        Ok(Self::new(list))
    }

    pub fn new(list: Vec<Arc<dyn DeliveryChannel>>) -> Self {
        let queued = list.iter().filter(|c| c.queued()).map(|c| c.name()).collect();
        let list = list
            .into_iter()
            .map(|channel| {
                let bound = channel.concurrency().filter(|_| channel.queued());
                Configured { in_flight: bound.map(|n| Arc::new(Semaphore::new(n.max(1)))), channel }
            })
            .collect();
        Self {
            list: Arc::new(list),
            queued: Arc::new(queued),
            first_attempts: Arc::new(Semaphore::new(FIRST_ATTEMPT_BATCHES)),
        }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.list.iter().map(|c| c.channel.name()).collect()
    }

    /// The channels whose deliveries are queued (see [`DeliveryChannel::queued`]).
    pub fn queued(&self) -> &[&'static str] {
        &self.queued
    }

    /// Leave to run one batch's first attempts, if fewer than [`FIRST_ATTEMPT_BATCHES`] run.
    pub fn first_attempt_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.first_attempts.clone().try_acquire_owned().ok()
    }

    fn get(&self, name: &str) -> Option<&Configured> {
        self.list.iter().find(|c| c.channel.name() == name)
    }

    /// The permits of `name`'s deliveries under way, if it is bounded.
    fn in_flight(&self, name: &str) -> Option<Arc<Semaphore>> {
        self.get(name).and_then(|c| c.in_flight.clone())
    }
}

/// One delivery to attempt.
struct Job<'a> {
    notification: &'a Notification,
    channel: &'a Configured,
    correlation_id: &'a str,
    span: Span,
    /// Attempts made before this one.
    made: i32,
    /// Room in its channel, when the caller took it already (the retry loop
    /// claims no more than it can start); otherwise the attempt waits for it.
    permit: Option<OwnedSemaphorePermit>,
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
            state.channels.list.iter().filter(move |c| which(c.channel.as_ref())).map(move |c| Job {
                notification: n,
                channel: c,
                correlation_id,
                span: span.clone(),
                made: 0,
                permit: None,
            })
        })
        .collect()
}

/// Runs the attempts concurrently, each channel within its bound, and records
/// them all in one statement, with what comes next for the queued ones.
/// Errors here are logged, never returned: the notifications are stored
/// either way, and a queued delivery whose outcome went unrecorded (or whose
/// first attempt found no room in time) is attempted again when its lease ends.
async fn attempt(state: &AppState, jobs: Vec<Job<'_>>) {
    let attempts = jobs.into_iter().map(|job| {
        let span = job.span.clone();
        async move {
            let (n, ch) = (job.notification, job.channel.channel.as_ref());
            let permit = match (job.permit, &job.channel.in_flight) {
                (Some(permit), _) => Some(permit),
                (None, None) => None,
                (None, Some(room)) => {
                    match tokio::time::timeout(FIRST_ATTEMPT_WAIT, room.clone().acquire_owned()).await {
                        Ok(Ok(permit)) => Some(permit),
                        // The wait ran out, or the process is stopping (the
                        // retry loop closed the room): the lease brings it back.
                        _ => {
                            state.counters.deferred.with_label_values(&[ch.name()]).inc();
                            // Counted above; a line each would flood the log when it happens.
                            tracing::debug!(channel = ch.name(), notification_id = %n.id,
                                "channel busy; first delivery attempt left to the retry loop");
                            return None;
                        }
                    }
                }
            };
            let sent = tokio::time::timeout(DELIVERY_DEADLINE, ch.deliver(n, job.correlation_id)).await;
            drop(permit);
            let (result, permanent) = match sent {
                Ok(Ok(Sent::Delivered)) => (DeliveryResult::Ok, false),
                Ok(Ok(Sent::Skipped(why))) => (DeliveryResult::Skipped(why), false),
                Ok(Err(e)) => {
                    let permanent = e.is::<Permanent>();
                    (DeliveryResult::Failed(format!("{e:#}")), permanent)
                }
                Err(_) => (DeliveryResult::Failed("timed out".into()), false),
            };
            let made = job.made + 1;
            let retry_in = match &result {
                DeliveryResult::Failed(_) if ch.queued() && !permanent => state.retry.next(made, n.id),
                _ => None,
            };
            match &result {
                DeliveryResult::Failed(error) if ch.queued() && retry_in.is_none() => {
                    state.counters.gave_up.with_label_values(&[ch.name()]).inc();
                    tracing::error!(channel = ch.name(), notification_id = %n.id, attempts = made, %error,
                        permanent, "notification delivery failed; giving up");
                }
                DeliveryResult::Failed(error) => {
                    let retry_in_ms = retry_in.map(|d| d.as_millis() as u64);
                    tracing::warn!(channel = ch.name(), notification_id = %n.id, attempts = made, retry_in_ms, %error,
                        "notification delivery failed");
                }
                _ => {}
            }
            let label = if permanent { REJECTED } else { result.label() };
            state.counters.deliveries.with_label_values(&[ch.name(), label]).inc();
            Some(Attempt {
                notification_id: n.id,
                channel: ch.name(),
                result,
                attempts: ch.queued().then_some(made),
                retry_in,
            })
        }
        .instrument(span)
    });
    let results: Vec<Attempt> = futures::future::join_all(attempts).await.into_iter().flatten().collect();
    // One statement for every attempt of the batch, not one commit each.
    if let Err(e) = store::record_attempts(&state.pool, &results).await {
        tracing::warn!(error = %e, attempts = results.len(), "could not record delivery attempts");
    }
}
