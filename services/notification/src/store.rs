//! Postgres access for the `notify` schema.

use chrono::{DateTime, Utc};
use payflow_common::ids::UserId;
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::events::{NewNotification, NotificationType};

/// Most notifications the list endpoint returns.
pub const LIST_LIMIT: i64 = 50;

/// A stored notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: Uuid,
    pub event_id: Uuid,
    pub user_id: UserId,
    pub kind: NotificationType,
    pub message: String,
    pub transaction_id: Option<Uuid>,
    pub read: bool,
    pub created_at: DateTime<Utc>,
}

impl Notification {
    /// The public JSON shape (API answers and webhook bodies alike).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "user_id": self.user_id,
            "type": self.kind.as_str(),
            "message": self.message,
            "transaction_id": self.transaction_id,
            "read": self.read,
            "created_at": payflow_common::telemetry::rfc3339(self.created_at),
        })
    }
}

const COLUMNS: &str = "id, event_id, user_id, type, message, transaction_id, read, created_at";

fn from_row(row: &PgRow) -> sqlx::Result<Notification> {
    let kind: String = row.try_get("type")?;
    Ok(Notification {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        user_id: row.try_get("user_id")?,
        // The CHECK constraint only admits known types; anything else is a
        // schema/code mismatch worth an error rather than a guess.
        kind: NotificationType::parse(&kind).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "type".into(),
            source: format!("unknown notification type {kind:?}").into(),
        })?,
        message: row.try_get("message")?,
        transaction_id: row.try_get("transaction_id")?,
        read: row.try_get("read")?,
        created_at: row.try_get("created_at")?,
    })
}

/// What storing an event did.
#[derive(Debug)]
pub enum Recorded {
    /// Newly stored notifications (to be delivered).
    Stored(Vec<Notification>),
    /// The message id was processed before, or every notification already
    /// existed: nothing new.
    Duplicate,
}

/// One message to store: its id, its kind, its notifications, each with the
/// id of the event it comes from (the message id, unless the message carries
/// several events).
pub struct EventToStore<'a> {
    pub message_id: Uuid,
    pub kind: &'a str,
    pub notifications: &'a [(Uuid, NewNotification)],
}

/// Stores the notifications of several events in one statement (one round trip, one commit),
/// each keyed by its message id: a message seen before stores nothing. The answers follow the
/// order of `events`; a message id repeated within the batch counts once, the repeats are
/// duplicates.
pub async fn record_events(pool: &PgPool, events: &[EventToStore<'_>]) -> sqlx::Result<Vec<Recorded>> {
    let mut seen = std::collections::HashSet::new();
    let first: Vec<bool> = events.iter().map(|e| seen.insert(e.message_id)).collect();
    let unique = || events.iter().zip(&first).filter(|(_, f)| **f).map(|(e, _)| e);
    let notes = || unique().flat_map(|e| e.notifications.iter().map(move |(event, n)| (e.message_id, *event, n)));
    // The guard rows, and the notifications of the events whose guard row is new. No conflict
    // target on the notifications: either unique guard (per event, per transaction) turns a
    // repeat into "nothing inserted".
    let rows = sqlx::query(&format!(
        "WITH fresh AS (INSERT INTO notify.processed_messages (message_id, kind) \
                        SELECT * FROM UNNEST($1::uuid[], $2::text[]) \
                        ON CONFLICT (message_id) DO NOTHING RETURNING message_id) \
         INSERT INTO notify.notifications (id, event_id, user_id, type, message, transaction_id, occurred_at) \
         SELECT n.id, n.event_id, n.user_id, n.type, n.message, n.transaction_id, n.occurred_at \
         FROM UNNEST($3::uuid[], $4::uuid[], $5::uuid[], $6::text[], $7::text[], $8::uuid[], \
                     $9::timestamptz[], $10::uuid[]) \
              AS n(id, event_id, user_id, type, message, transaction_id, occurred_at, message_id) \
         WHERE n.message_id IN (SELECT message_id FROM fresh) \
         ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(unique().map(|e| e.message_id).collect::<Vec<_>>())
    .bind(unique().map(|e| e.kind).collect::<Vec<_>>())
    .bind(notes().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
    .bind(notes().map(|(_, event, _)| event).collect::<Vec<_>>())
    .bind(notes().map(|(.., n)| n.user_id.0).collect::<Vec<_>>())
    .bind(notes().map(|(.., n)| n.kind.as_str()).collect::<Vec<_>>())
    .bind(notes().map(|(.., n)| n.message.as_str()).collect::<Vec<_>>())
    .bind(notes().map(|(.., n)| n.transaction_id).collect::<Vec<_>>())
    .bind(notes().map(|(.., n)| n.occurred_at).collect::<Vec<_>>())
    .bind(notes().map(|(message, ..)| message).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    // Stored rows name their event; the message each event came in says whose answer they are.
    let message_of: std::collections::HashMap<Uuid, Uuid> =
        notes().map(|(message, event, _)| (event, message)).collect();
    let mut by_event: std::collections::HashMap<Uuid, Vec<Notification>> = std::collections::HashMap::new();
    for row in &rows {
        let n = from_row(row)?;
        let message = message_of.get(&n.event_id).copied().unwrap_or(n.event_id);
        by_event.entry(message).or_default().push(n);
    }
    Ok(events
        .iter()
        .zip(first)
        .map(|(e, first)| match by_event.remove(&e.message_id) {
            Some(stored) if first => Recorded::Stored(stored),
            _ => Recorded::Duplicate,
        })
        .collect())
}

/// How long a processed message id is remembered. Redeliveries come within minutes (retries,
/// delivery limit); past that, the unique `(transaction_id, user_id, type)` index still stops a
/// second notification for the same transaction.
pub const PROCESSED_RETENTION_DAYS: i32 = 7;

/// Forgets processed message ids older than `days`; returns how many went.
pub async fn purge_processed(pool: &PgPool, days: i32) -> sqlx::Result<u64> {
    Ok(sqlx::query("DELETE FROM notify.processed_messages WHERE processed_at < now() - make_interval(days => $1)")
        .bind(days)
        .execute(pool)
        .await?
        .rows_affected())
}

/// A user's newest notifications first.
pub async fn list_for_user(pool: &PgPool, user: UserId, limit: i64) -> sqlx::Result<Vec<Notification>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM notify.notifications WHERE user_id = $1 \
         ORDER BY created_at DESC, id DESC LIMIT $2"
    ))
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Result of marking a notification read on behalf of `user`.
#[derive(Debug)]
pub enum MarkRead {
    Done(Notification),
    NotFound,
    /// It exists but belongs to someone else.
    NotYours,
}

/// Marks the caller's notification read. Idempotent: marking it again keeps
/// the first `read_at`.
pub async fn mark_read(pool: &PgPool, id: Uuid, user: UserId) -> sqlx::Result<MarkRead> {
    let row = sqlx::query(&format!(
        "UPDATE notify.notifications SET read = true, read_at = COALESCE(read_at, now()) \
         WHERE id = $1 AND user_id = $2 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(user)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = row {
        return Ok(MarkRead::Done(from_row(&row)?));
    }
    let exists =
        sqlx::query("SELECT 1 FROM notify.notifications WHERE id = $1").bind(id).fetch_optional(pool).await?.is_some();
    Ok(if exists { MarkRead::NotYours } else { MarkRead::NotFound })
}

/// How one delivery attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    Ok,
    /// The channel had nothing to do (e.g. no e-mail address known).
    Skipped(String),
    Failed(String),
}

impl DeliveryResult {
    pub fn label(&self) -> &'static str {
        match self {
            DeliveryResult::Ok => "ok",
            DeliveryResult::Skipped(_) => "skipped",
            DeliveryResult::Failed(_) => "failed",
        }
    }

    fn error(&self) -> Option<&str> {
        match self {
            DeliveryResult::Ok => None,
            DeliveryResult::Skipped(e) | DeliveryResult::Failed(e) => Some(e),
        }
    }
}

/// Longest error text kept per delivery attempt.
const MAX_ERROR_CHARS: usize = 1000;

/// Records delivery attempts (notification, channel, result), all in one statement.
pub async fn record_deliveries(pool: &PgPool, attempts: &[(Uuid, &str, DeliveryResult)]) -> sqlx::Result<()> {
    if attempts.is_empty() {
        return Ok(());
    }
    let error = |r: &DeliveryResult| r.error().map(|e| e.chars().take(MAX_ERROR_CHARS).collect::<String>());
    sqlx::query(
        "INSERT INTO notify.deliveries (notification_id, channel, result, error) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[])",
    )
    .bind(attempts.iter().map(|a| a.0).collect::<Vec<_>>())
    .bind(attempts.iter().map(|a| a.1).collect::<Vec<_>>())
    .bind(attempts.iter().map(|a| a.2.label()).collect::<Vec<_>>())
    .bind(attempts.iter().map(|a| error(&a.2)).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}
