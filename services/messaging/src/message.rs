//! The envelope every PayFlow message has: a unique id, a type, a timestamp
//! and the correlation id of the request that caused it.

use lapin::message::Delivery;
use lapin::protocol::basic::AMQPProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde::de::DeserializeOwned;
use uuid::Uuid;

pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// How many times a consumer sent the message back for a later try (absent: none).
pub const ATTEMPT_HEADER: &str = "x-payflow-attempt";

/// An outgoing message.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: Uuid,
    /// `transaction.settle`, `transaction.completed`, ...
    pub kind: String,
    pub correlation_id: String,
    /// Seconds since the epoch.
    pub timestamp: u64,
    pub body: Vec<u8>,
    /// Earlier tries that ended in the retry queue (0 for a new message).
    pub attempt: u32,
}

impl Message {
    /// Persistent, JSON, with id, type, timestamp and correlation header.
    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(CORRELATION_HEADER.into(), AMQPValue::LongString(LongString::from(self.correlation_id.clone())));
        if self.attempt > 0 {
            headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(self.attempt));
        }
        BasicProperties::default()
            .with_message_id(self.id.to_string().into())
            .with_type(self.kind.clone().into())
            .with_timestamp(self.timestamp)
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_correlation_id(self.correlation_id.clone().into())
            .with_headers(headers)
    }
}

/// A received message, parsed once.
#[derive(Debug, Clone)]
pub struct Incoming<T> {
    pub id: Uuid,
    pub kind: String,
    pub correlation_id: String,
    pub body: T,
    /// Whether the broker delivered it before (a crash or a nack).
    pub redelivered: bool,
    /// Earlier tries that ended in the retry queue.
    pub attempt: u32,
}

/// Why a delivery could not be used; such messages go to the dead-letter queue.
#[derive(Debug, thiserror::Error)]
pub enum Poison {
    #[error("message has no valid message_id")]
    MissingId,
    #[error("message body is not valid: {0}")]
    BadBody(String),
}

impl<T: DeserializeOwned> Incoming<T> {
    pub fn parse(d: &Delivery) -> Result<Self, Poison> {
        let p: &AMQPProperties = &d.properties;
        let id = p.message_id().as_ref().and_then(|s| Uuid::parse_str(s.as_str()).ok()).ok_or(Poison::MissingId)?;
        let kind = p.kind().as_ref().map(|s| s.to_string()).unwrap_or_default();
        let correlation_id = p.correlation_id().as_ref().map(|s| s.to_string()).unwrap_or_else(|| id.to_string());
        let body = serde_json::from_slice(&d.data).map_err(|e| Poison::BadBody(e.to_string()))?;
        let attempt =
            p.headers().as_ref().and_then(|h| h.inner().get(ATTEMPT_HEADER).cloned()).map_or(0, |v| match v {
                AMQPValue::LongUInt(n) => n,
                AMQPValue::LongInt(n) => n.max(0) as u32,
                AMQPValue::LongLongInt(n) => n.clamp(0, u32::MAX as i64) as u32,
                _ => 0,
            });
        Ok(Self { id, kind, correlation_id, body, redelivered: d.redelivered, attempt })
    }
}
