//! Exchanges and queues. Work and event queues are quorum queues, so the
//! broker counts deliveries and dead-letters a message past the limit instead
//! of redelivering it forever. Each has a delay queue for retries (messages
//! wait there for their TTL, then go back to work) and a dead-letter queue.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::AMQPErrorKind;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Routing key of the message that asks a worker to settle a transaction.
pub const SETTLE: &str = "transaction.settle";
/// Routing keys of events.
pub const COMPLETED: &str = "transaction.completed";
pub const FAILED: &str = "transaction.failed";
/// What binds the notification queue to the events exchange: every transaction
/// event, including types this release does not know (the consumer acks and
/// counts those, see `payflow_notification::consumer`).
pub const EVENTS: &str = "transaction.*";

/// Delay before a retried message is delivered again.
pub const RETRY_DELAY_MS: u32 = 2_000;

#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    delivery_limit: u32,
}

impl Topology {
    pub fn new(prefix: &str, delivery_limit: u32) -> Self {
        Self { prefix: prefix.to_string(), delivery_limit: delivery_limit.max(1) }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Direct exchange for work (settle requests).
    pub fn work_exchange(&self) -> String {
        format!("{}.work", self.prefix)
    }
    /// Topic exchange for events (`transaction.completed`, `transaction.failed`).
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }
    /// Where rejected and over-delivered messages go.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }
    pub fn transactions_queue(&self) -> String {
        format!("{}.transactions", self.prefix)
    }
    pub fn notifications_queue(&self) -> String {
        format!("{}.notifications", self.prefix)
    }
    pub fn retry_queue(&self, queue: &str) -> String {
        format!("{queue}.retry")
    }
    pub fn dead_letter_queue(&self, queue: &str) -> String {
        format!("{queue}.dlq")
    }
    /// The queues consumers read, each with a retry and a dead-letter queue.
    pub fn work_queues(&self) -> [String; 2] {
        [self.transactions_queue(), self.notifications_queue()]
    }
    /// Every dead-letter queue of this PayFlow.
    pub fn dead_letter_queues(&self) -> [String; 2] {
        self.work_queues().map(|q| self.dead_letter_queue(&q))
    }
    /// `name` without this PayFlow's prefix (`payflow.transactions.dlq` → `transactions.dlq`):
    /// the same metric label on every install.
    pub fn unprefixed<'a>(&self, name: &'a str) -> &'a str {
        name.strip_prefix(self.prefix.as_str()).and_then(|n| n.strip_prefix('.')).unwrap_or(name)
    }

    /// Declares everything; safe to call from every process at every start.
    /// The outcome is recorded for readiness ([`crate::declared::failure`]); a
    /// refusal is logged at error, naming what was refused and why (for an
    /// existing queue with other arguments, the broker's text names the
    /// argument, the value asked for and the value the queue has).
    pub async fn declare(&self, ch: &Channel) -> Result<(), DeclareError> {
        let result = self.declare_all(ch).await;
        match &result {
            Ok(()) => crate::declared::declared(&self.prefix),
            Err(e) if e.refused() => crate::declared::refused(&self.prefix, &e.to_string()),
            // The connection went away mid-way: says nothing about the topology.
            Err(_) => {}
        }
        result
    }

    async fn declare_all(&self, ch: &Channel) -> Result<(), DeclareError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        for (name, kind) in [
            (self.work_exchange(), ExchangeKind::Direct),
            (self.events_exchange(), ExchangeKind::Topic),
            (self.dead_letter_exchange(), ExchangeKind::Direct),
        ] {
            ch.exchange_declare(&name, kind, durable, FieldTable::default())
                .await
                .map_err(|e| DeclareError::new(format!("exchange '{name}'"), e))?;
        }
        self.declare_work_queue(ch, &self.transactions_queue(), &self.work_exchange(), &[SETTLE]).await?;
        self.declare_work_queue(ch, &self.notifications_queue(), &self.events_exchange(), &[EVENTS]).await?;
        Ok(())
    }

    /// The arguments a work queue is declared with: quorum, this topology's delivery limit, and
    /// dead-lettering to its `.dlq`. (Tests declare a queue as another configuration would.)
    pub fn work_queue_arguments(&self, queue: &str) -> FieldTable {
        let mut args = quorum();
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(self.delivery_limit as i32));
        args.insert("x-dead-letter-exchange".into(), string(&self.dead_letter_exchange()));
        args.insert("x-dead-letter-routing-key".into(), string(queue));
        args
    }

    /// A quorum queue bound to `exchange`, its dead-letter queue and its retry queue.
    async fn declare_work_queue(
        &self,
        ch: &Channel,
        queue: &str,
        exchange: &str,
        keys: &[&str],
    ) -> Result<(), DeclareError> {
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        let declare_queue = |name: String, args: FieldTable| async move {
            ch.queue_declare(&name, durable, args).await.map_err(|e| DeclareError::new(format!("queue '{name}'"), e))
        };
        let bind = |name: String, exchange: String, key: String| async move {
            ch.queue_bind(&name, &exchange, &key, QueueBindOptions::default(), FieldTable::default())
                .await
                .map_err(|e| DeclareError::new(format!("binding of queue '{name}' to '{exchange}' ({key})"), e))
        };
        let dlq = self.dead_letter_queue(queue);
        declare_queue(dlq.clone(), quorum()).await?;
        bind(dlq, self.dead_letter_exchange(), queue.to_string()).await?;

        declare_queue(queue.to_string(), self.work_queue_arguments(queue)).await?;
        for key in keys {
            bind(queue.to_string(), exchange.to_string(), key.to_string()).await?;
        }

        // Messages published here (default exchange, routing key = queue name)
        // wait RETRY_DELAY_MS, then dead-letter straight back into `queue`.
        let mut retry = FieldTable::default();
        retry.insert("x-message-ttl".into(), AMQPValue::LongInt(RETRY_DELAY_MS as i32));
        retry.insert("x-dead-letter-exchange".into(), string(""));
        retry.insert("x-dead-letter-routing-key".into(), string(queue));
        declare_queue(self.retry_queue(queue), retry).await?;
        Ok(())
    }
}

/// A declaration that failed: what was being declared, and the broker's answer
/// (in the message itself, not as a source, so `{:#}` does not say it twice).
#[derive(Debug, thiserror::Error)]
#[error("cannot declare {object}: {error}")]
pub struct DeclareError {
    /// E.g. `queue 'payflow.notifications'`.
    pub object: String,
    pub error: lapin::Error,
}

impl DeclareError {
    fn new(object: String, error: lapin::Error) -> Self {
        Self { object, error }
    }

    /// The broker refused it (a channel error such as `PRECONDITION_FAILED`),
    /// rather than the connection failing: trying again will not help until
    /// someone changes the broker or the configuration.
    pub fn refused(&self) -> bool {
        matches!(&self.error, lapin::Error::ProtocolError(e) if matches!(e.kind(), AMQPErrorKind::Soft(_)))
    }
}

fn quorum() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-queue-type".into(), string("quorum"));
    t
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_string()))
}

/// Keeps `ShortString` in the public API out of callers' sight.
pub fn short(s: &str) -> ShortString {
    ShortString::from(s.to_string())
}
