//! `payflow worker`: settles transactions. Takes settle messages in batches,
//! posts each transfer at wallet (posting twice is a success, not a second
//! movement), completes or fails the transactions with their events in one
//! commit, and only then acks. Transient failures go to the retry queue;
//! unparseable messages are rejected into the dead-letter queue.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use payflow_common::health::Readiness;
use payflow_common::metrics::{Metrics, LATENCY_BUCKETS};

use payflow_common::server::{self, ServiceInfo};
use payflow_messaging::{connect_with_retry, Incoming, Message, Poison, Publisher, Topology};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts};
use serde::Deserialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::WorkerConfig;
use crate::model::Status;
use crate::store;
use crate::wallet_client::{Resolution, WalletClient};

/// PROCESSING for `$1` (uuid[]) still PENDING; `IS TRUE` keeps the planner on
/// the primary key (see the note in `store`).
pub(crate) const MARK_PROCESSING: &str = "UPDATE txn.transactions SET status = 'PROCESSING', \
     processing_started_at = now() WHERE id = ANY($1) AND (status = 'PENDING') IS TRUE";

/// A settle message: `{"transactionId"}`, or `{"transactionIds":[...]}` for
/// the transactions accepted together (one message per accept batch).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Settle {
    transaction_id: Option<Uuid>,
    #[serde(default)]
    transaction_ids: Vec<Uuid>,
}

impl Settle {
    fn ids(&self) -> impl Iterator<Item = &Uuid> {
        self.transaction_id.iter().chain(self.transaction_ids.iter())
    }

    /// Names at least one transaction (else the message is poison).
    fn names_any(&self) -> bool {
        self.ids().next().is_some()
    }
}

#[derive(Clone)]
struct WorkerMetrics {
    messages: IntCounterVec,
    settled: IntCounterVec,
    settle_seconds: Histogram,
    batch_size: Histogram,
}

impl WorkerMetrics {
    fn new(m: &Metrics) -> anyhow::Result<Self> {
        let w = Self {
            messages: IntCounterVec::new(
                Opts::new("payflow_worker_messages_total", "Settle messages by outcome"),
                &["outcome"],
            )?,
            settled: IntCounterVec::new(
                Opts::new("payflow_transactions_settled_total", "Transactions that reached a final status"),
                &["status"],
            )?,
            settle_seconds: Histogram::with_opts(
                HistogramOpts::new("payflow_settle_duration_seconds", "Time from accept to final status")
                    // Past the request latencies up to minutes, so a backlog shows as what it is.
                    .buckets([LATENCY_BUCKETS, &[30.0, 60.0, 120.0, 300.0]].concat()),
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("payflow_worker_batch_size", "Messages settled per database transaction")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0]),
            )?,
        };
        m.register(Box::new(w.messages.clone()));
        m.register(Box::new(w.settled.clone()));
        m.register(Box::new(w.settle_seconds.clone()));
        m.register(Box::new(w.batch_size.clone()));
        Ok(w)
    }
}

/// Most messages settled per database transaction.
const MAX_BATCH: usize = 200;

/// Wallet posts at most this many transfers per call (its `post-batch` limit).
const MAX_POST: usize = 200;

/// Batches settling at the same time (see `consume_connected`).
const PIPELINE: usize = 2;

/// How long a batch waits, from its first message, for more to join it.
const GATHER: Duration = Duration::from_millis(2);

/// `first` and what else `stream` yields within `window` of it, at most `max`: one commit for
/// all. The window bounds the whole gathering, not the gap between two messages: with a gap
/// bound, a steady stream a little faster than one message per window kept a batch open with
/// no end in sight (one sender at 400/s: batches of 40 that waited 80 ms to start).
pub(crate) async fn gather<T, E>(
    first: T,
    stream: &mut (impl futures::Stream<Item = Result<T, E>> + Unpin),
    max: usize,
    window: Duration,
) -> Result<Vec<T>, E> {
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + window;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(item)) => batch.push(item?),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(batch)
}

struct Worker {
    pool: PgPool,
    wallet: WalletClient,
    topology: Topology,
    metrics: WorkerMetrics,
    cfg: WorkerConfig,
}

/// Runs the worker (and its metrics endpoint) until shutdown.
pub async fn run(cfg: WorkerConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let pool = payflow_common::db::connect(&cfg.db, "worker").await?;
    let metrics = Metrics::new("worker");
    // Not ready while RabbitMQ refuses its topology: it cannot take a single settle message then.
    let readiness = Readiness::postgres(pool.clone())
        .with_state_check(payflow_messaging::declared::readiness_check(cfg.amqp.topology().prefix()));
    let info = ServiceInfo::new("worker", metrics.clone(), readiness);
    let listener = server::bind(cfg.listen.addr(cfg.port)).await?;
    let http =
        tokio::spawn(server::serve(listener, server::with_common_layers(axum::Router::new(), &info), cancel.clone()));
    let worker = std::sync::Arc::new(Worker {
        wallet: WalletClient::new(&cfg.wallet)?,
        topology: cfg.amqp.topology(),
        metrics: WorkerMetrics::new(&metrics)?,
        pool,
        cfg,
    });
    worker.consume(&cancel).await;
    cancel.cancel();
    http.await??;
    Ok(())
}

impl Worker {
    async fn consume(self: &std::sync::Arc<Self>, cancel: &CancellationToken) {
        while !cancel.is_cancelled() {
            let Some(conn) = connect_with_retry(&self.cfg.amqp.amqp_url, cancel.cancelled()).await else { break };
            match self.consume_connected(&conn, cancel).await {
                Ok(()) => {
                    let _ = conn.close(200, "shutdown").await;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "worker lost its connection; reconnecting"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = cancel.cancelled() => break,
            }
        }
    }

    async fn consume_connected(
        self: &std::sync::Arc<Self>,
        conn: &lapin::Connection,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let channel = conn.create_channel().await?;
        self.topology.declare(&channel).await?;
        channel.basic_qos(self.cfg.prefetch, BasicQosOptions::default()).await?;
        let retry = Publisher::new(conn).await?;
        let tag = format!("worker-{}", Uuid::new_v4());
        let mut consumer = channel
            .basic_consume(
                &self.topology.transactions_queue(),
                &tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.topology.transactions_queue(), "worker consuming");
        // Up to PIPELINE batches settle at once: while one waits on wallet or its commit, the
        // next is gathered and started. A batch that fails ends the session (the channel is gone).
        let mut in_flight: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
        loop {
            while in_flight.len() >= PIPELINE {
                if let Some(done) = in_flight.join_next().await {
                    done??;
                }
            }
            let first = tokio::select! {
                d = consumer.next() => d,
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    done??;
                    continue;
                }
                _ = cancel.cancelled() => break,
            };
            let Some(first) = first else { anyhow::bail!("consumer cancelled by the broker") };
            let batch = gather(first?, &mut consumer, self.cfg.batch.clamp(1, MAX_BATCH), GATHER).await?;
            let (worker, retry) = (self.clone(), retry.clone());
            in_flight.spawn(async move { worker.settle_batch(batch, &retry).await });
        }
        while let Some(done) = in_flight.join_next().await {
            done??;
        }
        Ok(())
    }

    async fn settle_batch(&self, batch: Vec<Delivery>, retry: &Publisher) -> anyhow::Result<()> {
        self.metrics.batch_size.observe(batch.len() as f64);
        let mut work: Vec<(Delivery, Incoming<Settle>)> = Vec::with_capacity(batch.len());
        for d in batch {
            let parsed = Incoming::<Settle>::parse(&d).and_then(|m| {
                if m.body.names_any() {
                    Ok(m)
                } else {
                    Err(Poison::BadBody("names no transaction".into()))
                }
            });
            match parsed {
                Ok(m) => work.push((d, m)),
                Err(reason) => {
                    tracing::warn!(%reason, "poison settle message: dead-lettering");
                    self.metrics.messages.with_label_values(&["poison"]).inc();
                    d.acker.reject(BasicRejectOptions { requeue: false }).await?;
                }
            }
        }
        if work.is_empty() {
            return Ok(());
        }
        let mut seen = HashSet::new();
        let ids: Vec<Uuid> =
            work.iter().flat_map(|(_, m)| m.body.ids()).copied().filter(|id| seen.insert(*id)).collect();
        if let Err(e) = sqlx::query(MARK_PROCESSING).bind(&ids).execute(&self.pool).await {
            // Nothing was posted yet. Parked in the retry queue like any other failed commit:
            // ending the session instead would return every prefetched message to the broker,
            // each redelivery counted against the delivery limit, so a database outage of
            // half a minute would dead-letter settlements that only needed to wait.
            tracing::warn!(error = %e, "could not mark the batch PROCESSING; retrying it later");
            for (d, m) in work {
                self.retry_later(d, &m, retry).await?;
            }
            return Ok(());
        }

        let correlation = work.first().map(|(_, m)| m.correlation_id.clone()).unwrap_or_default();
        let outcomes = self.resolve_all(&ids, &correlation).await;
        crate::fault::point("worker-after-post");

        let mut completed = Vec::new();
        let mut failed = Vec::new();
        let mut unresolved: HashSet<Uuid> = HashSet::new();
        match outcomes {
            Some(outcomes) => {
                for (id, outcome) in outcomes {
                    match outcome {
                        Resolution::Posted => completed.push(id),
                        Resolution::Voided | Resolution::NotFound => {
                            failed.push((id, "Transfer was reversed before it could settle".to_string()))
                        }
                    }
                }
            }
            None => unresolved.extend(ids.iter().copied()),
        }
        match store::finish(&self.pool, &self.topology, &completed, &failed).await {
            Ok(changed) => {
                let now = chrono::Utc::now();
                for t in &changed {
                    let label = if t.status == Status::Completed { "COMPLETED" } else { "FAILED" };
                    self.metrics.settled.with_label_values(&[label]).inc();
                    let secs = (now - t.created_at).num_microseconds().unwrap_or_default() as f64 / 1e6;
                    self.metrics.settle_seconds.observe(secs.max(0.0));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not record settlements; retrying the batch");
                unresolved.extend(ids.iter().copied());
            }
        }
        for (d, m) in work {
            if m.body.ids().any(|id| unresolved.contains(id)) {
                self.retry_later(d, &m, retry).await?;
            } else {
                self.metrics.messages.with_label_values(&["settled"]).inc();
                d.acker.ack(BasicAckOptions::default()).await?;
            }
        }
        Ok(())
    }

    /// Posts the batch at wallet in one call. A transfer wallet never saw is
    /// voided (recorded as such), so it can never move later. `None`: wallet
    /// unreachable, the whole batch is retried later.
    async fn resolve_all(&self, ids: &[Uuid], correlation_id: &str) -> Option<Vec<(Uuid, Resolution)>> {
        let started = Instant::now();
        // A batch of messages can name more transactions than wallet posts per call.
        let mut outcomes = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_POST) {
            match self.wallet.post_many(chunk, correlation_id).await {
                Ok(o) => outcomes.extend(o),
                Err(e) => {
                    tracing::warn!(error = %e, batch = ids.len(), elapsed_ms = started.elapsed().as_millis() as u64, "wallet unavailable");
                    return None;
                }
            }
        }
        for (id, outcome) in outcomes.iter_mut() {
            if *outcome == Resolution::NotFound {
                match self.wallet.void(*id, correlation_id).await {
                    Ok(r) => *outcome = r,
                    Err(e) => {
                        tracing::warn!(transaction_id = %id, error = %e, "could not void an unknown transfer");
                        return None;
                    }
                }
            }
        }
        Some(outcomes)
    }

    /// Parks the message in the retry queue (it comes back after a delay) and
    /// acks the original; if even that fails, nacks it back to the queue. A
    /// message that used up its tries is dead-lettered instead: the retry queue
    /// hands back a new message each time, so the broker's delivery limit never
    /// counts these rounds.
    async fn retry_later(&self, d: Delivery, m: &Incoming<Settle>, retry: &Publisher) -> anyhow::Result<()> {
        let attempt = m.attempt.saturating_add(1);
        if attempt > self.cfg.max_retries {
            tracing::warn!(message_id = %m.id, tries = m.attempt, "settle message still failing after its last try: dead-lettering");
            self.metrics.messages.with_label_values(&["gave_up"]).inc();
            d.acker.reject(BasicRejectOptions { requeue: false }).await?;
            return Ok(());
        }
        self.metrics.messages.with_label_values(&["retried"]).inc();
        let msg = Message {
            id: m.id,
            kind: m.kind.clone(),
            correlation_id: m.correlation_id.clone(),
            timestamp: chrono::Utc::now().timestamp().max(0) as u64,
            body: d.data.clone(),
            attempt,
        };
        let queue = self.topology.retry_queue(&self.topology.transactions_queue());
        match retry.publish("", &queue, &msg).await {
            Ok(()) => d.acker.ack(BasicAckOptions::default()).await?,
            Err(e) => {
                tracing::warn!(error = %e, "retry queue unavailable; requeueing");
                d.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await?
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use futures::stream::{self, StreamExt};

    use super::gather;

    /// A message every `gap`, for ever.
    fn steady(gap: Duration) -> impl futures::Stream<Item = Result<u32, Infallible>> + Unpin {
        Box::pin(stream::unfold(1u32, move |n| async move {
            tokio::time::sleep(gap).await;
            Some((Ok(n), n + 1))
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_does_not_keep_a_batch_open_past_its_window() {
        let started = tokio::time::Instant::now();
        let batch = gather(0, &mut steady(Duration::from_micros(1500)), 100, Duration::from_millis(2)).await;
        let batch = batch.expect("no error");
        // Messages at 1.5 ms: one more joins within the 2 ms window, then the batch starts.
        assert_eq!(batch, vec![0, 1]);
        assert!(started.elapsed() <= Duration::from_millis(2), "waited {:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_already_buffered_fills_the_batch_at_once() {
        let started = tokio::time::Instant::now();
        let mut buffered = stream::iter((1..=150).map(Ok::<u32, Infallible>));
        let batch = gather(0, &mut buffered, 100, Duration::from_millis(2)).await.expect("no error");
        assert_eq!(batch.len(), 100);
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(buffered.next().await, Some(Ok(100)), "the rest stays for the next batch");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_ends_the_gathering_with_it() {
        let mut failing = stream::iter([Ok(1), Err("channel closed"), Ok(2)]);
        assert_eq!(gather(0, &mut failing, 100, Duration::from_millis(2)).await, Err("channel closed"));
    }
}
