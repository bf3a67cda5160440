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
//! - Unusable messages (no id, bad JSON, unknown type, nonsense values) are
//!   rejected without requeue, so the broker dead-letters them to
//!   `{prefix}.notifications.dlq`.
//! - Database errors: transient ones (connection loss, pool exhaustion,
//!   serialization failures) are retried in place for a while, which does not
//!   count against the delivery limit; then, or for any other database error,
//!   the message is nacked with requeue and the quorum queue's delivery limit
//!   dead-letters a message that keeps failing. Nothing loops forever.

use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use payflow_common::db::is_transient;
use payflow_messaging::{Incoming, Topology};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::events::{EventBody, EventKind, NewNotification};
use crate::metrics::Outcome;
use crate::state::AppState;
use crate::store::{self, EventToStore, Queue, Recorded};

/// How long a transient database error is retried in place before the
/// message is handed back to the broker.
const TRANSIENT_RETRY_BUDGET: Duration = Duration::from_secs(30);

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
    let topology = cfg.amqp.topology();
    let mut delay = Duration::from_millis(500);
    loop {
        let Some(conn) = payflow_messaging::connect_with_retry(&cfg.amqp.amqp_url, cancel.cancelled()).await else {
            return Ok(());
        };
        let started = Instant::now();
        let result = session(&state, &conn, &topology, cfg.prefetch, &cancel).await;
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

/// One connection's worth of consuming. `Ok` only when cancelled.
async fn session(
    state: &AppState,
    conn: &Connection,
    topology: &Topology,
    prefetch: u16,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let channel = conn.create_channel().await?;
    topology.declare(&channel).await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
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
                    handle_batch(state, batch, &mut tasks, cancel).await;
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
    correlation_id: String,
    redelivered: bool,
}

/// Parses one message (one event or a batch of them); an unusable one is
/// dead-lettered here, whole.
async fn parse(d: Delivery) -> Option<Parsed> {
    // The AMQP `type` names the event; the routing key is the same by
    // convention and stands in when a producer left `type` out.
    let kind_text =
        d.properties.kind().as_ref().map(|k| k.as_str()).filter(|k| !k.is_empty()).unwrap_or(d.routing_key.as_str());
    let Some(kind) = EventKind::from_type(kind_text) else {
        let reason = format!("unknown event type {kind_text:?}");
        poison(&d, &reason).await;
        return None;
    };
    let msg = match Incoming::<EventBody>::parse(&d) {
        Ok(m) => m,
        Err(e) => {
            poison(&d, &e.to_string()).await;
            return None;
        }
    };
    let correlation_id = sane_correlation_id(&msg.correlation_id).unwrap_or(msg.id.to_string());
    let mut notifications = Vec::new();
    for (event_id, event) in msg.body.events(msg.id) {
        match event.notifications(kind) {
            Ok(ns) => notifications.extend(ns.into_iter().map(|n| (event_id, n))),
            Err(e) => {
                poison(&d, &format!("event of transaction {}: {e}", event.transaction_id)).await;
                return None;
            }
        }
    }
    if notifications.is_empty() {
        poison(&d, "a batch of no events").await;
        return None;
    }
    Some(Parsed { message_id: msg.id, kind, notifications, correlation_id, redelivered: msg.redelivered, delivery: d })
}

/// Stores a batch in one statement, acks its events, then delivers (in a task).
async fn handle_batch(state: &AppState, batch: Vec<Delivery>, tasks: &mut JoinSet<()>, cancel: &CancellationToken) {
    state.counters.batch_size.observe(batch.len() as f64);
    let mut events = Vec::with_capacity(batch.len());
    for d in batch {
        match parse(d).await {
            Some(p) => events.push(p),
            None => state.counters.message(Outcome::Poison),
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
    let recorded = match store_events(state, &events, &queue, cancel).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, events = events.len(), "cannot store events; returning them to the queue");
            for p in &events {
                nack_requeue(&p.delivery).await;
                state.counters.message(Outcome::Error);
            }
            return;
        }
    };
    let mut deliveries = Vec::new();
    for (p, recorded) in events.into_iter().zip(recorded) {
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
                deliveries.extend(stored.into_iter().map(|n| (n, p.correlation_id.clone(), span.clone())));
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

/// Stores the events, retrying transient database errors in place (with
/// backoff, within [`TRANSIENT_RETRY_BUDGET`]) so a short outage does not
/// burn the messages' delivery limit.
async fn store_events(
    state: &AppState,
    events: &[Parsed],
    queue: &Queue<'_>,
    cancel: &CancellationToken,
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
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match store::record_events(&state.pool, &batch, queue).await {
            Ok(r) => return Ok(r),
            Err(e) if is_transient(&e) && started.elapsed() + delay < TRANSIENT_RETRY_BUDGET => {
                tracing::warn!(
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "database unavailable; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Err(e),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A correlation id fit for logs and headers: 1-128 visible ASCII characters.
fn sane_correlation_id(raw: &str) -> Option<String> {
    (!raw.is_empty() && raw.len() <= 128 && raw.bytes().all(|b| b.is_ascii_graphic())).then(|| raw.to_string())
}

/// Rejects without requeue: the queue's dead-letter exchange moves the
/// message to the DLQ, where it can be inspected.
async fn poison(d: &Delivery, reason: &str) -> Outcome {
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
    Outcome::Poison
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
