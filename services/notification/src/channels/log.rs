//! The log channel: always on, so every notification leaves a trace even
//! where no webhook or SMTP server is configured.

use async_trait::async_trait;

use super::{DeliveryChannel, Sent};
use crate::store::Notification;

pub struct LogChannel;

#[async_trait]
impl DeliveryChannel for LogChannel {
    fn name(&self) -> &'static str {
        "log"
    }

    /// A log line cannot fail in a way a retry would fix.
    fn queued(&self) -> bool {
        false
    }

    /// One structured line (JSON through the service's log subscriber).
    async fn deliver(&self, n: &Notification, correlation_id: &str) -> anyhow::Result<Sent> {
        tracing::info!(
            target: "payflow_notification::delivery",
            channel = "log",
            notification_id = %n.id,
            user_id = %n.user_id,
            r#type = n.kind.as_str(),
            // Not `message`: that is the name of the log line's own text.
            text = %n.message,
            transaction_id = %n.transaction_id.map(|t| t.to_string()).unwrap_or_default(),
            created_at = %payflow_common::telemetry::rfc3339(n.created_at),
            correlation_id,
            "notification"
        );
        Ok(Sent::Delivered)
    }
}
