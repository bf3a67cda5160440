//! Postgres access for the `notify` schema.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

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

/// One message to store: its id, its kind, its correlation id, its notifications, each with the
/// id of the event it comes from (the message id, unless the message carries several events).
pub struct EventToStore<'a> {
    pub message_id: Uuid,
    pub kind: &'a str,
    pub correlation_id: &'a str,
    pub notifications: &'a [(Uuid, NewNotification)],
}

/// Where [`record_events`] queues deliveries, and [`claim_due`] takes them from.
#[derive(Debug, Clone, Copy)]
pub struct Queue<'a> {
    /// The channels whose deliveries are queued.
    pub channels: &'a [&'a str],
    /// The AMQP prefix of this PayFlow: its processes take only its own rows.
    pub prefix: &'a str,
    /// How long a stored or claimed delivery belongs to the process that has it.
    pub lease: Duration,
}

/// The statement of [`record_events`]: the guard rows, and the notifications of the events whose
/// guard row is new. No conflict target on the notifications: either unique guard (per event,
/// per transaction) turns a repeat into "nothing inserted". With `queued`, each stored
/// notification also gets a `delivery_queue` row per channel in `$12` under the prefix `$14`,
/// leased for `$13` seconds to the process that stores it (it attempts them at once), with its
/// correlation id (`$11`); without, the statement is the plain insert of the common case.
fn record_events_sql(queued: bool) -> String {
    const GUARD: &str = "fresh AS (INSERT INTO notify.processed_messages (message_id, kind) \
                         SELECT * FROM UNNEST($1::uuid[], $2::text[]) \
                         ON CONFLICT (message_id) DO NOTHING RETURNING message_id)";
    const INSERT: &str = "INSERT INTO notify.notifications \
                              (id, event_id, user_id, type, message, transaction_id, occurred_at) \
                          SELECT n.id, n.event_id, n.user_id, n.type, n.message, n.transaction_id, n.occurred_at";
    const INPUT: &str = "UNNEST($3::uuid[], $4::uuid[], $5::uuid[], $6::text[], $7::text[], $8::uuid[], \
                                $9::timestamptz[], $10::uuid[]";
    const NAMES: &str = "n(id, event_id, user_id, type, message, transaction_id, occurred_at, message_id";
    const NEW_ONLY: &str = "WHERE n.message_id IN (SELECT message_id FROM fresh) ON CONFLICT DO NOTHING";
    if !queued {
        return format!("WITH {GUARD} {INSERT} FROM {INPUT}) AS {NAMES}) {NEW_ONLY} RETURNING {COLUMNS}");
    }
    format!(
        "WITH {GUARD}, \
              n AS (SELECT * FROM {INPUT}, $11::text[]) AS {NAMES}, correlation_id)), \
              stored AS ({INSERT} FROM n {NEW_ONLY} RETURNING {COLUMNS}), \
              q AS (INSERT INTO notify.delivery_queue \
                        (notification_id, channel, prefix, next_attempt_at, correlation_id) \
                    SELECT s.id, c.channel, $14, now() + make_interval(secs => $13), n.correlation_id \
                    FROM stored s JOIN n ON n.id = s.id CROSS JOIN unnest($12::text[]) AS c(channel)) \
         SELECT {COLUMNS} FROM stored"
    )
}

static RECORD_EVENTS: LazyLock<String> = LazyLock::new(|| record_events_sql(false));
static RECORD_EVENTS_QUEUED: LazyLock<String> = LazyLock::new(|| record_events_sql(true));

/// Stores the notifications of several events in one statement (one round trip, one commit),
/// each keyed by its message id: a message seen before stores nothing. The answers follow the
/// order of `events`; a message id repeated within the batch counts once, the repeats are
/// duplicates. Each stored notification is queued, in the same commit, for every channel of
/// `queue` (leased for `lease` to the caller, which delivers it now).
pub async fn record_events(
    pool: &PgPool,
    events: &[EventToStore<'_>],
    queue: &Queue<'_>,
) -> sqlx::Result<Vec<Recorded>> {
    record_events_correlated(pool, events, &HashMap::new(), queue).await
}

/// [`record_events`] for messages whose events carry correlation ids of their own (a message of
/// many events names only its first transfer's): `correlations` maps such an event's id to its
/// id, which its queued deliveries keep; the other events' use their message's.
pub async fn record_events_correlated(
    pool: &PgPool,
    events: &[EventToStore<'_>],
    correlations: &HashMap<Uuid, String>,
    queue: &Queue<'_>,
) -> sqlx::Result<Vec<Recorded>> {
    let mut seen = std::collections::HashSet::new();
    let first: Vec<bool> = events.iter().map(|e| seen.insert(e.message_id)).collect();
    let unique = || events.iter().zip(&first).filter(|(_, f)| **f).map(|(e, _)| e);
    let notes = || unique().flat_map(|e| e.notifications.iter().map(move |(event, n)| (e, *event, n)));
    let queued = !queue.channels.is_empty();
    let sql: &str = if queued { &RECORD_EVENTS_QUEUED } else { &RECORD_EVENTS };
    let query = sqlx::query(sql)
        .bind(unique().map(|e| e.message_id).collect::<Vec<_>>())
        .bind(unique().map(|e| e.kind).collect::<Vec<_>>())
        .bind(notes().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
        .bind(notes().map(|(_, event, _)| event).collect::<Vec<_>>())
        .bind(notes().map(|(.., n)| n.user_id.0).collect::<Vec<_>>())
        .bind(notes().map(|(.., n)| n.kind.as_str()).collect::<Vec<_>>())
        .bind(notes().map(|(.., n)| n.message.as_str()).collect::<Vec<_>>())
        .bind(notes().map(|(.., n)| n.transaction_id).collect::<Vec<_>>())
        .bind(notes().map(|(.., n)| n.occurred_at).collect::<Vec<_>>())
        .bind(notes().map(|(e, ..)| e.message_id).collect::<Vec<_>>());
    let rows = if queued {
        query
            .bind(
                notes()
                    .map(|(e, event, _)| correlations.get(&event).map_or(e.correlation_id, String::as_str))
                    .collect::<Vec<_>>(),
            )
            .bind(queue.channels)
            .bind(queue.lease.as_secs_f64())
            .bind(queue.prefix)
    } else {
        query
    }
    .fetch_all(pool)
    .await?;
    // Stored rows name their event; the message each event came in says whose answer they are.
    let message_of: std::collections::HashMap<Uuid, Uuid> =
        notes().map(|(e, event, _)| (event, e.message_id)).collect();
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

/// One delivery attempt, to record.
#[derive(Debug)]
pub struct Attempt<'a> {
    pub notification_id: Uuid,
    pub channel: &'a str,
    pub result: DeliveryResult,
    /// For a channel with a `delivery_queue` row: attempts made, this one included.
    pub attempts: Option<i32>,
    /// After a failed attempt with a queue row: when to try again; `None` gives up.
    pub retry_in: Option<Duration>,
}

/// Records delivery attempts in one statement: a row each in `deliveries`; for channels with a
/// queue row, a success (or skip) deletes it and a failure schedules the next attempt or marks
/// the row given up.
pub async fn record_attempts(pool: &PgPool, attempts: &[Attempt<'_>]) -> sqlx::Result<()> {
    /// The common case (only the log channel): the attempts alone, no queue row touched.
    const PLAIN: &str = "INSERT INTO notify.deliveries (notification_id, channel, result, error) \
                         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[])";
    const QUEUED: &str = "WITH a AS (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
                                                          $5::int4[], $6::float8[]) \
                                     AS a(id, channel, result, error, attempts, retry_in)), \
              d AS (INSERT INTO notify.deliveries (notification_id, channel, result, error) \
                    SELECT id, channel, result, error FROM a), \
              done AS (DELETE FROM notify.delivery_queue q USING a \
                       WHERE q.notification_id = a.id AND q.channel = a.channel \
                         AND a.attempts IS NOT NULL AND a.result <> 'failed') \
         UPDATE notify.delivery_queue q SET attempts = a.attempts, last_error = a.error, \
                next_attempt_at = CASE WHEN a.retry_in IS NULL THEN q.next_attempt_at \
                                       ELSE now() + make_interval(secs => a.retry_in) END, \
                gave_up_at = CASE WHEN a.retry_in IS NULL THEN now() END \
         FROM a WHERE q.notification_id = a.id AND q.channel = a.channel \
                  AND a.attempts IS NOT NULL AND a.result = 'failed'";
    if attempts.is_empty() {
        return Ok(());
    }
    let queued = attempts.iter().any(|a| a.attempts.is_some());
    let error = |r: &DeliveryResult| r.error().map(|e| e.chars().take(MAX_ERROR_CHARS).collect::<String>());
    let query = sqlx::query(if queued { QUEUED } else { PLAIN })
        .bind(attempts.iter().map(|a| a.notification_id).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| a.channel).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| a.result.label()).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| error(&a.result)).collect::<Vec<_>>());
    let query = if queued {
        query
            .bind(attempts.iter().map(|a| a.attempts).collect::<Vec<_>>())
            .bind(attempts.iter().map(|a| a.retry_in.map(|d| d.as_secs_f64())).collect::<Vec<_>>())
    } else {
        query
    };
    query.execute(pool).await?;
    Ok(())
}

/// A queued delivery taken for another attempt.
#[derive(Debug)]
pub struct Due {
    pub notification: Notification,
    pub channel: String,
    /// Attempts made before this one.
    pub attempts: i32,
    pub correlation_id: String,
}

/// Takes at most `limit` due deliveries of `queue`, oldest due first, leasing each (another
/// process takes it only after the lease). Concurrent callers get different rows.
pub async fn claim_due(pool: &PgPool, queue: &Queue<'_>, limit: i64) -> sqlx::Result<Vec<Due>> {
    static CLAIM: LazyLock<String> = LazyLock::new(|| {
        let columns = COLUMNS.split(", ").map(|c| format!("n.{c}")).collect::<Vec<_>>().join(", ");
        format!(
            "UPDATE notify.delivery_queue q SET next_attempt_at = now() + make_interval(secs => $3) \
             FROM notify.notifications n \
             WHERE n.id = q.notification_id AND (q.notification_id, q.channel) IN \
                   (SELECT notification_id, channel FROM notify.delivery_queue \
                    WHERE gave_up_at IS NULL AND next_attempt_at <= now() AND channel = ANY($1) AND prefix = $4 \
                    ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING {columns}, q.channel, q.attempts, q.correlation_id"
        )
    });
    let rows = sqlx::query(&CLAIM)
        .bind(queue.channels)
        .bind(limit)
        .bind(queue.lease.as_secs_f64())
        .bind(queue.prefix)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Due {
                notification: from_row(row)?,
                channel: row.try_get("channel")?,
                attempts: row.try_get("attempts")?,
                correlation_id: row.try_get("correlation_id")?,
            })
        })
        .collect()
}
