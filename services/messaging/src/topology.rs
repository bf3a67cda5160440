//! Exchanges and queues. Work and event queues are quorum queues, so the
//! broker counts deliveries and dead-letters a message past the limit instead
//! of redelivering it forever. Each has a delay queue for retries (messages
//! wait there for their TTL, then go back to work) and a dead-letter queue.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Routing key of the message that asks a worker to settle a transaction.
pub const SETTLE: &str = "transaction.settle";
/// Routing keys of events.
pub const COMPLETED: &str = "transaction.completed";
pub const FAILED: &str = "transaction.failed";

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

    /// Declares everything; safe to call from every process at every start.
    pub async fn declare(&self, ch: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(&self.work_exchange(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
        ch.exchange_declare(&self.events_exchange(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
        ch.exchange_declare(&self.dead_letter_exchange(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
        self.declare_work_queue(ch, &self.transactions_queue(), &self.work_exchange(), &[SETTLE]).await?;
        self.declare_work_queue(ch, &self.notifications_queue(), &self.events_exchange(), &["transaction.*"]).await?;
        Ok(())
    }

    /// A quorum queue bound to `exchange`, its dead-letter queue and its retry queue.
    async fn declare_work_queue(&self, ch: &Channel, queue: &str, exchange: &str, keys: &[&str]) -> lapin::Result<()> {
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        let dlq = self.dead_letter_queue(queue);
        ch.queue_declare(&dlq, durable, quorum()).await?;
        ch.queue_bind(&dlq, &self.dead_letter_exchange(), queue, QueueBindOptions::default(), FieldTable::default())
            .await?;

        let mut args = quorum();
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(self.delivery_limit as i32));
        args.insert("x-dead-letter-exchange".into(), string(&self.dead_letter_exchange()));
        args.insert("x-dead-letter-routing-key".into(), string(queue));
        ch.queue_declare(queue, durable, args).await?;
        for key in keys {
            ch.queue_bind(queue, exchange, key, QueueBindOptions::default(), FieldTable::default()).await?;
        }

        // Messages published here (default exchange, routing key = queue name)
        // wait RETRY_DELAY_MS, then dead-letter straight back into `queue`.
        let mut retry = FieldTable::default();
        retry.insert("x-message-ttl".into(), AMQPValue::LongInt(RETRY_DELAY_MS as i32));
        retry.insert("x-dead-letter-exchange".into(), string(""));
        retry.insert("x-dead-letter-routing-key".into(), string(queue));
        ch.queue_declare(&self.retry_queue(queue), durable, retry).await?;
        Ok(())
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
