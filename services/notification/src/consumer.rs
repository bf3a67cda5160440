//! The event consumer: `{prefix}.notifications` with manual acks and bounded
//! prefetch.
//!
//! Messages are taken in batches (whatever has arrived while the previous batch
//! was being stored): parse each once; store the notifications and message ids
//! of the whole batch in one statement (with their queued deliveries); ack;
//! then deliver in the background (`crate::channels`), so a slow webhook
//! stalls neither the queue nor the storing. The order matters: the ack comes
//! after the commit, so a crash anywhere before it means a redelivery, which
//! the processed-messages table turns into a no-op; a crash after it leaves
//! queued deliveries that the retry loop makes when their lease ends.
//!
//! - Unusable messages (no id, bad JSON, nonsense values) are rejected without
//!   requeue, so the broker dead-letters them to `{prefix}.notifications.dlq`.
//! - An event type this release does not know is acked, counted (`ignored`)
//!   and logged: the queue takes every `transaction.*` event, and a producer
//!   newer than this consumer must not fill the dead-letter queue.
//! - The database refusing the data (SQLSTATE classes 22 and 23): the batch's
//!   messages are stored one at a time, and only the one it refuses is
//!   dead-lettered (the reason logged); the others are stored.
//! - Any other database error (the connection, the server, its settings: no
//!   fault of the messages) is retried in place with backoff for a while
//!   ([`Patience`], longer for every round a message has made), then the
//!   messages go to `{prefix}.notifications.retry`, which hands them back
//!   after 2 s, with the round counted in their `x-payflow-attempt` header;
//!   each original is acked once the broker confirmed its copy. Nacking them
//!   back instead spent the quorum queue's delivery limit: a Postgres outage of
//!   2.5 min dead-lettered every event. Such a message is never given up: it
//!   waits for the database as long as that takes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use payflow_common::db::is_transient;
use payflow_messaging::{Incoming, Message, Publisher, Topology};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::events::{EventBody, EventKind, NewNotification};
use crate::metrics::Outcome;
use crate::state::AppState;
use crate::store::{self, EventToStore, Queue, Recorded};

/// How long database errors are retried in place before the messages go to
/// the retry queue: `first` for a message on its first round, doubling with
/// each round it has made, up to `longest`. Waiting in place costs the broker
/// nothing and holds the consumer (every message would fail the same way);
/// the growth keeps a long outage from cycling the messages every few seconds.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    pub first: Duration,
    pub longest: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Self { first: Duration::from_secs(10), longest: Duration::from_secs(60) }
    }
}

impl Patience {
    /// In-place retry budget for a batch whose most travelled message made `rounds` rounds.
    fn for_rounds(&self, rounds: u32) -> Duration {
        self.first.saturating_mul(1 << rounds.min(16)).min(self.longest.max(self.first))
    }
}

/// Most events stored in one statement.
const MAX_BATCH: usize = 100;

/// Longest pause between reconnection attempts after a failed session.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// A session that lasted this long was healthy: the next failure starts the
/// reconnection backoff from the beginning.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Consumes events until `cancel`, reconnecting whenever the broker
/// connection or channel is lost.
pub async fn consume(state: AppState, cfg: &Config, cancel: CancellationToken) -> anyhow::Result<()> {
    consume_with(state, cfg, Patience::default(), cancel).await
}

/// [`consume`] with another [`Patience`] (tests shorten it).
pub async fn consume_with(
    state: AppState,
    cfg: &Config,
    patience: Patience,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let topology = cfg.amqp.topology();
    let mut delay = Duration::from_millis(500);
    loop {
        let Some(conn) = payflow_messaging::connect_with_retry(&cfg.amqp.amqp_url, cancel.cancelled()).await else {
            return Ok(());
        };
        let started = Instant::now();
        let result = session(&state, &conn, &topology, cfg.prefetch, patience, &cancel).await;
        // Closing a connection that is already gone fails; nothing to do then.
        let _ = conn.close(200, "notification consumer stopping").await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) => {
                if started.elapsed() >= HEALTHY_SESSION {
                    delay = Duration::from_millis(500);
                }
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "event consumer lost the broker; reconnecting"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Ok(()),
                }
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
            }
        }
    }
}

/// What a session's batches need.
struct Ctx<'a> {
    state: &'a AppState,
    topology: &'a Topology,
    /// Confirmed publishing to the retry queue.
    retry: Publisher,
    patience: Patience,
    cancel: &'a CancellationToken,
}

/// One connection's worth of consuming. `Ok` only when cancelled.
async fn session(
    state: &AppState,
    conn: &Connection,
    topology: &Topology,
    prefetch: u16,
    patience: Patience,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let channel = conn.create_channel().await?;
    topology.declare(&channel).await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let ctx = Ctx { state, topology, retry: Publisher::new(conn).await?, patience, cancel };
    let queue = topology.notifications_queue();
    let tag = format!("payflow-notification-{}", Uuid::new_v4());
    let mut consumer =
        channel.basic_consume(&queue, &tag, BasicConsumeOptions::default(), FieldTable::default()).await?;
    tracing::info!(%queue, prefetch, "consuming events");

    // Deliveries and acks run as tasks; acks name their own delivery tag, so
    // their order does not matter. The prefetch bounds what is in flight.
    let mut tasks = JoinSet::new();
    let result = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_panic(done),
            next = consumer.next() => match next {
                Some(Ok(first)) => {
                    let mut batch = vec![first];
                    let mut failed = None;
                    // What is already buffered joins the batch, without waiting for more.
                    while batch.len() < MAX_BATCH {
                        match consumer.next().now_or_never() {
                            Some(Some(Ok(d))) => batch.push(d),
                            Some(Some(Err(e))) => {
                                failed = Some(anyhow::Error::new(e).context("consumer failed"));
                                break;
                            }
                            Some(None) => {
                                failed = Some(anyhow::anyhow!("the broker ended the consumer"));
                                break;
                            }
                            None => break,
                        }
                    }
                    handle_batch(&ctx, batch, &mut tasks).await;
                    if let Some(e) = failed {
                        break Err(e);
                    }
                }
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("consumer failed")),
                None => break Err(anyhow::anyhow!("the broker ended the consumer")),
            },
        }
    };
    // Let first attempts under way finish (a delivery cut short would wait
    // out its lease). Whatever was never acked goes back to the queue when
    // the channel closes.
    while let Some(done) = tasks.join_next().await {
        log_panic(done);
    }
    let _ = channel.close(200, "notification consumer stopping").await;
    result
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "event handler task failed");
    }
}

/// A parsed message, ready to store.
struct Parsed {
    delivery: Delivery,
    message_id: Uuid,
    kind: EventKind,
    /// Each with the id of the event it comes from.
    notifications: Vec<(Uuid, NewNotification)>,
    /// The message's (its header, else its id).
    correlation_id: String,
    /// The events that carry their own correlation id, by event id.
    correlations: HashMap<Uuid, String>,
    redelivered: bool,
    /// Rounds it already made through the retry queue.
    attempt: u32,
}

impl Parsed {
    /// The correlation id of the event `event_id` came from.
    fn correlation_of(&self, event_id: Uuid) -> &str {
        self.correlations.get(&event_id).map_or(&self.correlation_id, String::as_str)
    }

    /// The copy that goes to the retry queue, one round further.
    fn next_round(&self) -> Message {
        Message {
            id: self.message_id,
            kind: self.kind.as_str().to_string(),
            correlation_id: self.correlation_id.clone(),
            timestamp: chrono::Utc::now().timestamp().max(0) as u64,
            body: self.delivery.data.clone(),
            attempt: self.attempt.saturating_add(1),
        }
    }
}

/// What became of a message at parsing.
enum Parse {
    Ready(Box<Parsed>),
    /// Dead-lettered.
    Poison,
    /// Acked and left alone.
    Ignored,
}

/// Parses one message (one event or a batch of them); an unusable one is
/// dead-lettered here, whole.
async fn parse(d: Delivery) -> Parse {
    // The AMQP `type` names the event; the routing key is the same by
    // convention and stands in when a producer left `type` out.
    let kind_text =
        d.properties.kind().as_ref().map(|k| k.as_str()).filter(|k| !k.is_empty()).unwrap_or(d.routing_key.as_str());
    let Some(kind) = EventKind::from_type(kind_text) else {
        // Not poison: a newer producer's event, or one meant for other consumers.
        tracing::info!(
            event_type = kind_text,
            message_id = d.properties.message_id().as_ref().map_or("-", |s| s.as_str()),
            "event type unknown to this release; acked and ignored"
        );
        ack(&d).await;
        return Parse::Ignored;
    };
    let msg = match Incoming::<EventBody>::parse(&d) {
        Ok(m) => m,
        Err(e) => return poison(&d, &e.to_string()).await,
    };
    let correlation_id = sane_correlation_id(&msg.correlation_id).unwrap_or(msg.id.to_string());
    let mut notifications = Vec::new();
    let mut correlations = HashMap::new();
    for (event_id, event) in msg.body.events(msg.id) {
        match event.notifications(kind) {
            Ok(ns) => notifications.extend(ns.into_iter().map(|n| (event_id, n))),
            Err(e) => return poison(&d, &format!("event of transaction {}: {e}", event.transaction_id)).await,
        }
        if let Some(own) = event.correlation_id.as_deref().and_then(sane_correlation_id) {
            correlations.insert(event_id, own);
        }
    }
    if notifications.is_empty() {
        return poison(&d, "a batch of no events").await;
    }
    Parse::Ready(Box::new(Parsed {
        message_id: msg.id,
        kind,
        notifications,
        correlation_id,
        correlations,
        redelivered: msg.redelivered,
        attempt: msg.attempt,
        delivery: d,
    }))
}

/// Stores a batch in one statement, acks its events, then delivers (in a task).
async fn handle_batch(ctx: &Ctx<'_>, batch: Vec<Delivery>, tasks: &mut JoinSet<()>) {
    let state = ctx.state;
    state.counters.batch_size.observe(batch.len() as f64);
    let mut events = Vec::with_capacity(batch.len());
    for d in batch {
        match parse(d).await {
            Parse::Ready(p) => events.push(*p),
            Parse::Poison => state.counters.message(Outcome::Poison),
            Parse::Ignored => state.counters.message(Outcome::Ignored),
        }
    }
    if events.is_empty() {
        return;
    }
    // Decided before storing: without a slot, the batch's queued deliveries are
    // stored due at once (no lease), for the retry loop to make.
    let slot = state.channels.first_attempt_slot();
    let mut queue = state.queue();
    if slot.is_none() {
        queue.lease = Duration::ZERO;
    }
    let rounds = events.iter().map(|p| p.attempt).max().unwrap_or(0);
    let patience = ctx.patience.for_rounds(rounds);
    let stored = match store_events(ctx, &events, &queue, patience).await {
        Ok(recorded) => events.into_iter().zip(recorded).collect(),
        Err(e) if refuses_data(&e) => {
            tracing::warn!(error = %e, events = events.len(), "the database refused a batch; storing its events one by one");
            one_by_one(ctx, events, &queue, patience).await
        }
        Err(e) => {
            retry_later(ctx, events, &e).await;
            return;
        }
    };
    finish(state, stored, slot, tasks).await;
}

/// After the database refused a batch's data: each message on its own, so
/// only the one at fault is dead-lettered. A database error of another kind
/// sends that message and the rest to the retry queue.
async fn one_by_one(
    ctx: &Ctx<'_>,
    events: Vec<Parsed>,
    queue: &Queue<'_>,
    patience: Duration,
) -> Vec<(Parsed, Recorded)> {
    let mut stored = Vec::with_capacity(events.len());
    let mut rest = events.into_iter();
    while let Some(p) = rest.next() {
        match store_events(ctx, std::slice::from_ref(&p), queue, patience).await {
            Ok(recorded) => stored.extend(std::iter::once(p).zip(recorded)),
            Err(e) if refuses_data(&e) => {
                poison(&p.delivery, &format!("the database refused it: {e}")).await;
                ctx.state.counters.message(Outcome::Poison);
            }
            Err(e) => {
                retry_later(ctx, std::iter::once(p).chain(rest).collect(), &e).await;
                break;
            }
        }
    }
    stored
}

/// Acks the stored and duplicate messages, then delivers what was stored.
async fn finish(
    state: &AppState,
    stored: Vec<(Parsed, Recorded)>,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    tasks: &mut JoinSet<()>,
) {
    let mut deliveries = Vec::new();
    for (p, recorded) in stored {
        let span = tracing::info_span!(
            "event",
            correlation_id = %p.correlation_id,
            message_id = %p.message_id,
            kind = p.kind.as_str(),
        );
        match recorded {
            Recorded::Duplicate => {
                span.in_scope(|| tracing::info!(redelivered = p.redelivered, "duplicate event skipped"));
                state.counters.message(Outcome::Duplicate);
            }
            Recorded::Stored(stored) => {
                for n in &stored {
                    state.counters.stored.with_label_values(&[n.kind.as_str()]).inc();
                }
                span.in_scope(|| tracing::info!(notifications = stored.len(), "event stored"));
                state.counters.message(Outcome::Stored);
                deliveries.extend(stored.into_iter().map(|n| {
                    let correlation_id = p.correlation_of(n.event_id).to_string();
                    (n, correlation_id, span.clone())
                }));
            }
        }
        ack(&p.delivery).await;
    }
    if deliveries.is_empty() {
        return;
    }
    // One task for the batch: every delivery at once, one statement recording them all.
    match slot {
        Some(slot) => {
            let state = state.clone();
            tasks.spawn(async move {
                crate::channels::deliver_new(&state, &deliveries).await;
                drop(slot);
            });
        }
        None => crate::channels::defer_new(state, &deliveries).await,
    }
}

/// Whether the database refused the data itself (SQLSTATE class 22, data
/// exception, or 23, integrity constraint violation, or a value that could not
/// be encoded): the same message would fail the same way every time. Every
/// other error is about the database (unreachable, read-only, a schema or a
/// privilege missing), no fault of the messages, and is waited out.
fn refuses_data(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// Stores the events, retrying database errors that are not the data's fault
/// in place (with backoff, within `patience`), so a short outage costs no
/// round through the retry queue.
async fn store_events(
    ctx: &Ctx<'_>,
    events: &[Parsed],
    queue: &Queue<'_>,
    patience: Duration,
) -> sqlx::Result<Vec<Recorded>> {
    let batch: Vec<EventToStore> = events
        .iter()
        .map(|p| EventToStore {
            message_id: p.message_id,
            kind: p.kind.as_str(),
            correlation_id: &p.correlation_id,
            notifications: &p.notifications,
        })
        .collect();
    let correlations: HashMap<Uuid, String> =
        events.iter().flat_map(|p| p.correlations.iter().map(|(k, v)| (*k, v.clone()))).collect();
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match store::record_events_correlated(&ctx.state.pool, &batch, &correlations, queue).await {
            Ok(r) => return Ok(r),
            Err(e) if !refuses_data(&e) && started.elapsed() + delay < patience => {
                if is_transient(&e) {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database unavailable; retrying");
                } else {
                    tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "database refuses to store events; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.cancel.cancelled() => return Err(e),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends the messages to the retry queue (they come back in 2 s, one round
/// further) and acks the originals once the broker confirmed the copies. If
/// the broker refuses the copies too, the originals are nacked back to the
/// queue, which spends their delivery limit: the last resort.
async fn retry_later(ctx: &Ctx<'_>, events: Vec<Parsed>, error: &sqlx::Error) {
    let rounds = events.iter().map(|p| p.attempt).max().unwrap_or(0);
    if is_transient(error) {
        tracing::warn!(%error, events = events.len(), rounds, "cannot store events yet; sending them to the retry queue");
    } else {
        tracing::error!(%error, events = events.len(), rounds, "cannot store events; sending them to the retry queue");
    }
    let retry_queue = ctx.topology.retry_queue(&ctx.topology.notifications_queue());
    let copies: Vec<(String, String, Message)> =
        events.iter().map(|p| (String::new(), retry_queue.clone(), p.next_round())).collect();
    match ctx.retry.publish_all(&copies).await {
        Ok(()) => {
            for p in &events {
                ack(&p.delivery).await;
                ctx.state.counters.message(Outcome::Retried);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "the retry queue refused them; returning them to their queue");
            for p in &events {
                nack_requeue(&p.delivery).await;
                ctx.state.counters.message(Outcome::Error);
            }
        }
    }
}

/// A correlation id fit for logs and headers: 1-128 visible ASCII characters.
fn sane_correlation_id(raw: &str) -> Option<String> {
    (!raw.is_empty() && raw.len() <= 128 && raw.bytes().all(|b| b.is_ascii_graphic())).then(|| raw.to_string())
}

/// Rejects without requeue: the queue's dead-letter exchange moves the
/// message to the DLQ, where it can be inspected.
async fn poison(d: &Delivery, reason: &str) -> Parse {
    tracing::warn!(
        reason,
        message_id = d.properties.message_id().as_ref().map_or("-", |s| s.as_str()),
        routing_key = d.routing_key.as_str(),
        delivery_tag = d.delivery_tag,
        "poison message dead-lettered"
    );
    if let Err(e) = d.acker.reject(BasicRejectOptions { requeue: false }).await {
        tracing::warn!(error = %e, "reject failed; the broker will redeliver the message");
    }
    Parse::Poison
}

async fn ack(d: &Delivery) {
    if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
        // The work is committed: a redelivery will be recognised as a duplicate.
        tracing::warn!(error = %e, "ack failed; a redelivery will be skipped as a duplicate");
    }
}

async fn nack_requeue(d: &Delivery) {
    let opts = BasicNackOptions { requeue: true, multiple: false };
    if let Err(e) = d.acker.nack(opts).await {
        tracing::warn!(error = %e, "nack failed; the broker will redeliver the message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_are_sanitised() {
        assert_eq!(sane_correlation_id("abc-1"), Some("abc-1".into()));
        assert_eq!(sane_correlation_id(""), None);
        assert_eq!(sane_correlation_id("a b"), None);
        assert_eq!(sane_correlation_id("a\r\nb"), None);
        assert_eq!(sane_correlation_id(&"x".repeat(129)), None);
    }
}
