//! The e-mail channel (lettre over SMTP).
//!
//! Events carry user ids, not addresses, and auth owns the addresses, so the
//! channel asks an [`EmailDirectory`]. The one provided reads `auth.users`
//! read-only in the shared database: the smallest coupling that works today.
//! An internal auth endpoint would replace it without touching the channel.
//!
//! A stored address that is not one is final for that notification (it is
//! given up at once, see [`Permanent`]); the server's errors are retried.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use payflow_common::ids::UserId;
use sqlx::PgPool;

use super::{DeliveryChannel, Permanent, Sent};
use crate::events::NotificationType;
use crate::store::Notification;

/// Longest an SMTP conversation step may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a user's e-mail address comes from.
#[async_trait]
pub trait EmailDirectory: Send + Sync {
    async fn email_of(&self, user: UserId) -> anyhow::Result<Option<String>>;
}

/// Reads addresses from auth's `users` table.
pub struct AuthSchemaDirectory {
    pool: PgPool,
}

impl AuthSchemaDirectory {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl EmailDirectory for AuthSchemaDirectory {
    async fn email_of(&self, user: UserId) -> anyhow::Result<Option<String>> {
        Ok(sqlx::query_scalar::<_, String>("SELECT email FROM auth.users WHERE id = $1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?)
    }
}

pub struct SmtpChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    directory: Arc<dyn EmailDirectory>,
    concurrency: usize,
}

impl SmtpChannel {
    /// `url` as lettre reads it: `smtp://host:25`, `smtp://host:587?tls=required`,
    /// `smtps://user:pass@host:465`. Nothing connects until the first e-mail.
    ///
    /// One connection per e-mail: lettre's pool (feature `pool`, off) spawns
    /// tasks when built and dropped, which aborts when the state is dropped
    /// outside a runtime; notification volumes do not need it. `concurrency`
    /// bounds the e-mails (so connections) under way at once in this process.
    pub fn new(url: &str, from: &str, directory: Arc<dyn EmailDirectory>, concurrency: usize) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| anyhow::anyhow!("PAYFLOW_SMTP_URL is not usable: {e}"))?
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        let from: Mailbox = from.parse().map_err(|e| anyhow::anyhow!("PAYFLOW_SMTP_FROM is not an address: {e}"))?;
        Ok(Self { transport, from, directory, concurrency })
    }
}

fn subject(kind: NotificationType) -> &'static str {
    match kind {
        NotificationType::TransactionCompleted => "PayFlow: money sent",
        NotificationType::TransactionReceived => "PayFlow: money received",
        NotificationType::TransactionFailed => "PayFlow: transfer failed",
        NotificationType::Welcome => "Welcome to PayFlow",
    }
}

/// The e-mail for one notification. Its Message-ID derives from the
/// notification id, so a resent copy is recognisably the same mail.
pub fn build_email(from: &Mailbox, to: Mailbox, n: &Notification, correlation_id: &str) -> anyhow::Result<Message> {
    let mut body = format!("{}\n", n.message);
    if let Some(t) = n.transaction_id {
        body.push_str(&format!("\nTransaction: {t}\n"));
    }
    body.push_str("\nThis message was sent by PayFlow. You can see all your notifications in the app.\n");
    Ok(Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject(n.kind))
        .message_id(Some(format!("<{}@notifications.payflow>", n.id)))
        .date_now()
        .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("X-PayFlow-Notification-Id"), n.id.to_string()))
        .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("X-Correlation-Id"), correlation_id.to_string()))
        .header(ContentType::TEXT_PLAIN)
        .body(body)?)
}

#[async_trait]
impl DeliveryChannel for SmtpChannel {
    fn name(&self) -> &'static str {
        "smtp"
    }

    fn concurrency(&self) -> Option<usize> {
        Some(self.concurrency)
    }

    async fn deliver(&self, n: &Notification, correlation_id: &str) -> anyhow::Result<Sent> {
        let Some(address) = self.directory.email_of(n.user_id).await? else {
            return Ok(Sent::Skipped("no e-mail address known for the user".into()));
        };
        // The same stored address every time: retrying cannot help.
        let to: Mailbox =
            address.parse().map_err(|e| Permanent(format!("stored address is not usable: {e}; not retried")))?;
        let email = build_email(&self.from, to, n, correlation_id)?;
        self.transport.send(email).await?;
        Ok(Sent::Delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification() -> Notification {
        Notification {
            id: uuid::Uuid::now_v7(),
            event_id: uuid::Uuid::now_v7(),
            user_id: UserId::new(),
            kind: NotificationType::TransactionReceived,
            message: "You received 10.00 USD".into(),
            transaction_id: Some(uuid::Uuid::now_v7()),
            read: false,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn builds_a_plain_text_mail() {
        let n = notification();
        let from: Mailbox = "PayFlow <payflow@localhost>".parse().unwrap();
        let to: Mailbox = "bob@example.com".parse().unwrap();
        let mail = build_email(&from, to, &n, "corr-1").unwrap();
        let text = String::from_utf8(mail.formatted()).unwrap();
        assert!(text.contains("From: PayFlow <payflow@localhost>\r\n"), "{text}");
        assert!(text.contains("To: bob@example.com\r\n"), "{text}");
        assert!(text.contains("Subject: PayFlow: money received\r\n"), "{text}");
        assert!(text.contains(&format!("Message-ID: <{}@notifications.payflow>", n.id)));
        assert!(text.contains(&format!("X-PayFlow-Notification-Id: {}", n.id)));
        assert!(text.contains("X-Correlation-Id: corr-1"));
        assert!(text.contains("Content-Type: text/plain; charset=utf-8"));
        assert!(text.contains("You received 10.00 USD"));
        assert!(text.contains(&format!("Transaction: {}", n.transaction_id.unwrap())));

        let envelope = mail.envelope();
        assert_eq!(envelope.to()[0].to_string(), "bob@example.com");
    }

    #[test]
    fn configuration_is_checked() {
        struct Nobody;
        #[async_trait]
        impl EmailDirectory for Nobody {
            async fn email_of(&self, _: UserId) -> anyhow::Result<Option<String>> {
                Ok(None)
            }
        }
        let dir: Arc<dyn EmailDirectory> = Arc::new(Nobody);
        let ok = SmtpChannel::new("smtp://127.0.0.1:25", "payflow@localhost", dir.clone(), 3).unwrap();
        assert_eq!(ok.concurrency(), Some(3));
        assert!(SmtpChannel::new("smtp://127.0.0.1:25", "not an address", dir.clone(), 3).is_err());
        assert!(SmtpChannel::new("http://x", "payflow@localhost", dir, 3).is_err());
    }

    #[tokio::test]
    async fn users_without_an_address_are_skipped() {
        struct Nobody;
        #[async_trait]
        impl EmailDirectory for Nobody {
            async fn email_of(&self, _: UserId) -> anyhow::Result<Option<String>> {
                Ok(None)
            }
        }
        let ch = SmtpChannel::new("smtp://127.0.0.1:1", "payflow@localhost", Arc::new(Nobody), 1).unwrap();
        assert!(matches!(ch.deliver(&notification(), "c").await.unwrap(), Sent::Skipped(_)));
    }
}
