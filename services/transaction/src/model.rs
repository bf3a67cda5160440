//! A transaction as stored, and how the API and events render it.

use chrono::{DateTime, Utc};
use payflow_common::money::{format_minor, Currency};
use payflow_common::telemetry::rfc3339;
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "UPPERCASE")]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl Status {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "PENDING" => Some(Status::Pending),
            "PROCESSING" => Some(Status::Processing),
            "COMPLETED" => Some(Status::Completed),
            "FAILED" => Some(Status::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Transaction {
    pub id: Uuid,
    pub from_user_id: Uuid,
    pub to_user_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub description: Option<String>,
    pub status: Status,
    pub error_message: Option<String>,
    pub correlation_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub processing_started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Columns in the order of [`Transaction`], for `SELECT`/`RETURNING`.
pub const COLUMNS: &str = "id, from_user_id, to_user_id, amount, currency::text AS currency, description, status, \
     error_message, correlation_id, created_at, processing_started_at, completed_at";

impl Transaction {
    pub fn currency(&self) -> Currency {
        Currency::parse(&self.currency).unwrap_or(Currency::USD)
    }

    pub fn amount_text(&self) -> String {
        format_minor(self.amount, self.currency())
    }

    /// The public shape (api.md).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "from_user_id": self.from_user_id,
            "to_user_id": self.to_user_id,
            "amount": self.amount_text(),
            "currency": self.currency,
            "description": self.description,
            "status": self.status,
            "error_message": self.error_message,
            "created_at": rfc3339(self.created_at),
            "processing_started_at": self.processing_started_at.map(rfc3339),
            "completed_at": self.completed_at.map(rfc3339),
        })
    }

    /// The 201 answer to `POST /api/transactions`.
    pub fn accepted_json(&self) -> Value {
        let mut v = self.to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("message".into(), json!("Transaction queued for processing"));
            o.insert("timestamp".into(), json!(rfc3339(self.created_at)));
        }
        v
    }

    /// The body of a `transaction.completed` / `transaction.failed` event. It
    /// carries the transfer's correlation id: a message of many events has
    /// only one in its AMQP header (the first transfer's).
    pub fn event_json(&self) -> Value {
        json!({
            "transactionId": self.id,
            "fromUserId": self.from_user_id,
            "toUserId": self.to_user_id,
            "amount": self.amount_text(),
            "currency": self.currency,
            "status": self.status,
            "reason": self.error_message,
            "occurredAt": rfc3339(self.completed_at.unwrap_or(self.created_at)),
            "correlationId": self.correlation_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_names_its_own_correlation_id() {
        let t = |correlation_id: &str| Transaction {
            id: Uuid::now_v7(),
            from_user_id: Uuid::now_v7(),
            to_user_id: Uuid::now_v7(),
            amount: 150,
            currency: "USD".into(),
            description: None,
            status: Status::Completed,
            error_message: None,
            correlation_id: Some(correlation_id.into()),
            created_at: Utc::now(),
            processing_started_at: None,
            completed_at: Some(Utc::now()),
        };
        assert_eq!(t("req-1").event_json()["correlationId"], "req-1");
        assert_eq!(t("req-2").event_json()["correlationId"], "req-2");
        let older = Transaction { correlation_id: None, ..t("x") };
        assert!(older.event_json()["correlationId"].is_null());
    }
}
