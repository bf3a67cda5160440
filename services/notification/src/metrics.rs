//! The service's business metrics, registered in the service's registry so
//! `/metrics` shows them next to the HTTP metrics.

use payflow_common::metrics::Metrics;
use prometheus::{IntCounterVec, Opts};

/// What became of one consumed message (`outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Notifications stored (their delivery follows).
    Stored,
    /// Already processed: acked and skipped.
    Duplicate,
    /// Unusable: rejected to the dead-letter queue.
    Poison,
    /// Could not be stored yet (database trouble): sent to the retry queue.
    Retried,
    /// Could not be stored, and the retry queue refused it too: nacked for
    /// redelivery (which spends the delivery limit).
    Error,
    /// An event type this release does not know: acked and left alone.
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Stored => "stored",
            Outcome::Duplicate => "duplicate",
            Outcome::Poison => "poison",
            Outcome::Retried => "retried",
            Outcome::Error => "error",
            Outcome::Ignored => "ignored",
        }
    }
}

#[derive(Clone)]
pub struct Counters {
    /// `payflow_notification_deliveries_total{channel,result}`
    pub deliveries: IntCounterVec,
    /// `payflow_notification_deliveries_given_up_total{channel}`
    pub gave_up: IntCounterVec,
    /// `payflow_notification_deliveries_deferred_total{channel}`
    pub deferred: IntCounterVec,
    /// `payflow_notifications_stored_total{type}`
    pub stored: IntCounterVec,
    /// `payflow_notification_messages_total{outcome}`
    pub messages: IntCounterVec,
    /// `payflow_notification_batch_size`: events stored per statement.
    pub batch_size: prometheus::Histogram,
}

impl Counters {
    pub fn register(metrics: &Metrics) -> anyhow::Result<Self> {
        let c = Self {
            deliveries: IntCounterVec::new(
                Opts::new(
                    "payflow_notification_deliveries_total",
                    "Notification delivery attempts by channel and result (ok, failed, skipped; rejected: refused for good, not retried)",
                ),
                &["channel", "result"],
            )?,
            gave_up: IntCounterVec::new(
                Opts::new(
                    "payflow_notification_deliveries_given_up_total",
                    "Notification deliveries given up after their last failed attempt, by channel",
                ),
                &["channel"],
            )?,
            deferred: IntCounterVec::new(
                Opts::new(
                    "payflow_notification_deliveries_deferred_total",
                    "First delivery attempts left to the retry loop because too many were under way, by channel",
                ),
                &["channel"],
            )?,
            stored: IntCounterVec::new(
                Opts::new("payflow_notifications_stored_total", "Notifications stored, by type"),
                &["type"],
            )?,
            messages: IntCounterVec::new(
                Opts::new(
                    "payflow_notification_messages_total",
                    "Consumed event messages by outcome (stored, duplicate, poison, retried, error, ignored)",
                ),
                &["outcome"],
            )?,
            batch_size: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "payflow_notification_batch_size",
                    "Event messages stored per statement",
                )
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]),
            )?,
        };
        metrics.register(Box::new(c.deliveries.clone()));
        metrics.register(Box::new(c.gave_up.clone()));
        // Zero series from the start, so the alert on them has something to compare with.
        for channel in ["webhook", "smtp"] {
            c.gave_up.with_label_values(&[channel]);
        }
        metrics.register(Box::new(c.deferred.clone()));
        metrics.register(Box::new(c.stored.clone()));
        metrics.register(Box::new(c.messages.clone()));
        metrics.register(Box::new(c.batch_size.clone()));
        Ok(c)
    }

    pub fn message(&self, outcome: Outcome) {
        self.messages.with_label_values(&[outcome.as_str()]).inc();
    }

    /// How many messages ended with `outcome` (tests and diagnostics).
    pub fn messages_with(&self, outcome: Outcome) -> u64 {
        self.messages.with_label_values(&[outcome.as_str()]).get()
    }
}
