//! The events this service consumes, parsed once into typed values, and what
//! each one means for the people involved.

use chrono::{DateTime, Utc};
use payflow_common::ids::UserId;
use payflow_common::money::{format_minor, parse_amount, Currency};
use serde::Deserialize;
use uuid::Uuid;

/// Longest failure reason copied into a notification; the rest is cut so a
/// producer's long error text cannot bloat every user's list.
const MAX_REASON_CHARS: usize = 200;

/// The event types (AMQP `type`, also the routing key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Completed,
    Failed,
}

impl EventKind {
    pub fn from_type(t: &str) -> Option<Self> {
        match t {
            payflow_messaging::topology::COMPLETED => Some(Self::Completed),
            payflow_messaging::topology::FAILED => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => payflow_messaging::topology::COMPLETED,
            Self::Failed => payflow_messaging::topology::FAILED,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventStatus {
    Completed,
    Failed,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }
}

/// Body of `transaction.completed` and `transaction.failed`.
///
/// Unknown fields are ignored on purpose (no `deny_unknown_fields`): producers
/// may add fields, and an older consumer must keep working when they do.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionEvent {
    pub transaction_id: Uuid,
    pub from_user_id: UserId,
    pub to_user_id: UserId,
    /// Decimal string with the currency's digits, e.g. `"10.00"`.
    pub amount: String,
    pub currency: Currency,
    pub status: EventStatus,
    #[serde(default)]
    pub reason: Option<String>,
    /// Informational only, so an event without it is still usable.
    #[serde(default)]
    pub occurred_at: Option<DateTime<Utc>>,
    /// The correlation id of the request that made this transfer. A message of
    /// many events carries the first one's in its AMQP header; older producers
    /// do not write this field, and the header stands in.
    #[serde(default)]
    pub correlation_id: Option<String>,
}

/// A message's body: one event, or `{"events":[...]}`, the events of one kind
/// that a worker batch produced together (one message for many transfers).
#[derive(Debug, Clone)]
pub enum EventBody {
    Many { events: Vec<TransactionEvent> },
    One(TransactionEvent),
}

impl<'de> Deserialize<'de> for EventBody {
    // By hand rather than `untagged`, so a bad event says what is wrong with it.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        match v.get("events") {
            Some(events) => Vec::<TransactionEvent>::deserialize(events)
                .map(|events| Self::Many { events })
                .map_err(|e| D::Error::custom(format!("events: {e}"))),
            None => TransactionEvent::deserialize(v).map(Self::One).map_err(D::Error::custom),
        }
    }
}

impl EventBody {
    /// Each event with the id its notifications are stored under: the message
    /// id for a message of one event (as always), else an id derived from the
    /// message and the transaction, the same on every redelivery.
    pub fn events(&self, message_id: Uuid) -> Vec<(Uuid, &TransactionEvent)> {
        match self {
            Self::One(e) => vec![(message_id, e)],
            Self::Many { events } => {
                events.iter().map(|e| (Uuid::new_v5(&message_id, e.transaction_id.as_bytes()), e)).collect()
            }
        }
    }
}

/// The notification types of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationType {
    TransactionCompleted,
    TransactionReceived,
    TransactionFailed,
    Welcome,
}

impl NotificationType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TransactionCompleted => "TRANSACTION_COMPLETED",
            Self::TransactionReceived => "TRANSACTION_RECEIVED",
            Self::TransactionFailed => "TRANSACTION_FAILED",
            Self::Welcome => "WELCOME",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TRANSACTION_COMPLETED" => Some(Self::TransactionCompleted),
            "TRANSACTION_RECEIVED" => Some(Self::TransactionReceived),
            "TRANSACTION_FAILED" => Some(Self::TransactionFailed),
            "WELCOME" => Some(Self::Welcome),
            _ => None,
        }
    }
}

/// A notification about to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    pub user_id: UserId,
    pub kind: NotificationType,
    pub message: String,
    pub transaction_id: Option<Uuid>,
    pub occurred_at: Option<DateTime<Utc>>,
}

/// An event that parsed but makes no sense; it is dead-lettered like any
/// other poison message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEvent(pub String);

impl TransactionEvent {
    /// The notifications `kind` of this event gives: sender and receiver for a
    /// completion, the sender alone for a failure.
    pub fn notifications(&self, kind: EventKind) -> Result<Vec<NewNotification>, InvalidEvent> {
        let expected = match kind {
            EventKind::Completed => EventStatus::Completed,
            EventKind::Failed => EventStatus::Failed,
        };
        if self.status != expected {
            return Err(InvalidEvent(format!("event type {} carries status {}", kind.as_str(), self.status.as_str())));
        }
        // Refused here rather than by Postgres, whose error would fail the
        // statement of a whole batch of events.
        if let Some(at) = self.occurred_at.filter(|at| !storable(*at)) {
            return Err(InvalidEvent(format!("occurredAt {at} is outside the range a timestamp can hold")));
        }
        // Re-rendered from minor units, so the text users read is always
        // canonical, and anything that is not an amount is refused.
        let minor =
            parse_amount(&self.amount, self.currency, i64::MAX).map_err(|e| InvalidEvent(format!("amount {e}")))?;
        let money = format!("{} {}", format_minor(minor, self.currency), self.currency);
        let note = |user_id, kind, message: String| NewNotification {
            user_id,
            kind,
            message,
            transaction_id: Some(self.transaction_id),
            occurred_at: self.occurred_at,
        };
        Ok(match kind {
            EventKind::Completed => vec![
                note(self.from_user_id, NotificationType::TransactionCompleted, format!("You sent {money}")),
                note(self.to_user_id, NotificationType::TransactionReceived, format!("You received {money}")),
            ],
            EventKind::Failed => {
                let message = match self.reason.as_deref().map(clean_reason) {
                    Some(reason) if !reason.is_empty() => {
                        format!("Your transfer of {money} failed: {reason}")
                    }
                    _ => format!("Your transfer of {money} failed"),
                };
                vec![note(self.from_user_id, NotificationType::TransactionFailed, message)]
            }
        })
    }
}

/// Whether Postgres can store `at` in a `timestamptz`: 4713 BC to 294276 AD
/// (chrono parses years from -262143, which Postgres refuses).
fn storable(at: DateTime<Utc>) -> bool {
    use chrono::Datelike;
    // 4713 BC is astronomical year -4712, and Postgres starts late in it; the
    // whole first and last years are refused rather than tested to the day.
    (-4711..=294_275).contains(&at.year())
}

/// Control characters out, whitespace trimmed, length capped.
fn clean_reason(reason: &str) -> String {
    let cleaned: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let trimmed = cleaned.trim();
    if trimmed.chars().count() <= MAX_REASON_CHARS {
        trimmed.to_string()
    } else {
        let mut cut: String = trimmed.chars().take(MAX_REASON_CHARS).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> TransactionEvent {
        serde_json::from_str(json).unwrap()
    }

    const COMPLETED: &str = r#"{"transactionId":"0190a0a0-0000-7000-8000-000000000001",
        "fromUserId":"0190a0a0-0000-7000-8000-000000000002",
        "toUserId":"0190a0a0-0000-7000-8000-000000000003",
        "amount":"10.00","currency":"USD","status":"COMPLETED","reason":null,
        "occurredAt":"2026-11-21T08:00:00.000Z","someNewField":{"x":1}}"#;

    #[test]
    fn completed_gives_sender_and_receiver_and_ignores_unknown_fields() {
        let e = event(COMPLETED);
        let n = e.notifications(EventKind::Completed).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].user_id, e.from_user_id);
        assert_eq!(n[0].kind, NotificationType::TransactionCompleted);
        assert_eq!(n[0].message, "You sent 10.00 USD");
        assert_eq!(n[1].user_id, e.to_user_id);
        assert_eq!(n[1].kind, NotificationType::TransactionReceived);
        assert_eq!(n[1].message, "You received 10.00 USD");
        assert_eq!(n[1].transaction_id, Some(e.transaction_id));
    }

    #[test]
    fn failed_gives_the_sender_the_reason() {
        let e = event(
            &COMPLETED
                .replace("\"COMPLETED\"", "\"FAILED\"")
                .replace("\"reason\":null", "\"reason\":\"Transfer timed out\\n\""),
        );
        let n = e.notifications(EventKind::Failed).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].user_id, e.from_user_id);
        assert_eq!(n[0].kind, NotificationType::TransactionFailed);
        assert_eq!(n[0].message, "Your transfer of 10.00 USD failed: Transfer timed out");

        let e = event(&COMPLETED.replace("\"COMPLETED\"", "\"FAILED\""));
        assert_eq!(e.notifications(EventKind::Failed).unwrap()[0].message, "Your transfer of 10.00 USD failed");
    }

    #[test]
    fn amounts_are_rendered_canonically() {
        let e = event(&COMPLETED.replace("\"10.00\"", "\"10.5\""));
        assert_eq!(e.notifications(EventKind::Completed).unwrap()[0].message, "You sent 10.50 USD");
    }

    #[test]
    fn nonsense_is_refused() {
        let e = event(COMPLETED);
        assert!(e.notifications(EventKind::Failed).is_err(), "status mismatch");
        for amount in ["\"-1\"", "\"0\"", "\"1.234\"", "\"ten\"", "\"1e3\""] {
            let e = event(&COMPLETED.replace("\"10.00\"", amount));
            assert!(e.notifications(EventKind::Completed).is_err(), "{amount}");
        }
        assert!(serde_json::from_str::<TransactionEvent>(&COMPLETED.replace("\"USD\"", "\"dollars\"")).is_err());
        assert!(serde_json::from_str::<TransactionEvent>(&COMPLETED.replace("\"COMPLETED\"", "\"PENDING\"")).is_err());
        assert!(serde_json::from_str::<TransactionEvent>(r#"{"transactionId":"x"}"#).is_err());
    }

    #[test]
    fn timestamps_postgres_cannot_hold_are_refused() {
        let at = |t: &str| event(&COMPLETED.replace("2026-11-21T08:00:00.000Z", t));
        assert!(at("-4711-01-01T00:00:00Z").notifications(EventKind::Completed).is_ok());
        assert!(at("+262142-06-01T00:00:00Z").notifications(EventKind::Completed).is_ok());
        for t in ["-4712-01-01T00:00:00Z", "-200000-01-01T00:00:00Z"] {
            // chrono reads them all; Postgres would refuse them.
            let e = at(t);
            assert!(e.occurred_at.is_some(), "{t}");
            let err = e.notifications(EventKind::Completed).expect_err(t);
            assert!(err.0.contains("occurredAt"), "{err}");
        }
    }

    #[test]
    fn event_types() {
        assert_eq!(EventKind::from_type("transaction.completed"), Some(EventKind::Completed));
        assert_eq!(EventKind::from_type("transaction.failed"), Some(EventKind::Failed));
        assert_eq!(EventKind::from_type("transaction.created"), None);
        for t in [
            NotificationType::TransactionCompleted,
            NotificationType::TransactionReceived,
            NotificationType::TransactionFailed,
            NotificationType::Welcome,
        ] {
            assert_eq!(NotificationType::parse(t.as_str()), Some(t));
        }
    }

    #[test]
    fn long_reasons_are_cut() {
        let r = clean_reason(&"x".repeat(500));
        assert_eq!(r.chars().count(), MAX_REASON_CHARS + 1);
    }
}
