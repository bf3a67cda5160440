//! Operator metrics: reconciles, failures, durations, applies, status writes.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    reconciles: IntCounter,
    failures: IntCounterVec,
    duration: Histogram,
    applies: IntCounterVec,
    status_writes: IntCounter,
    queue_depth: prometheus::IntGaugeVec,
    desired_workers: prometheus::IntGaugeVec,
    fallback: prometheus::IntGaugeVec,
    decisions: IntCounterVec,
    current_workers: prometheus::IntGaugeVec,
    leader: prometheus::IntGauge,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let m = Self {
            reconciles: IntCounter::new("payflow_operator_reconciles_total", "Reconciles started")?,
            failures: IntCounterVec::new(
                Opts::new("payflow_operator_reconcile_errors_total", "Reconciles that failed, by error kind"),
                &["error"],
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new("payflow_operator_reconcile_duration_seconds", "Reconcile duration")
                    .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            applies: IntCounterVec::new(
                Opts::new("payflow_operator_applies_total", "Server-side applies of children, by kind"),
                &["kind"],
            )?,
            status_writes: IntCounter::new("payflow_operator_status_writes_total", "Status updates written")?,
            queue_depth: prometheus::IntGaugeVec::new(
                Opts::new("payflow_operator_scaler_queue_depth", "Ready plus unacknowledged settle messages"),
                &["payflow_namespace", "payflow"],
            )?,
            desired_workers: prometheus::IntGaugeVec::new(
                Opts::new("payflow_operator_scaler_desired_replicas", "Worker replicas the scaler decided"),
                &["payflow_namespace", "payflow"],
            )?,
            fallback: prometheus::IntGaugeVec::new(
                Opts::new("payflow_operator_scaler_fallback", "1 while the scaler runs the fallback count"),
                &["payflow_namespace", "payflow"],
            )?,
            decisions: IntCounterVec::new(
                Opts::new("payflow_operator_scaler_decisions_total", "Scaler decisions by reason"),
                &["payflow_namespace", "payflow", "reason"],
            )?,
            current_workers: prometheus::IntGaugeVec::new(
                Opts::new("payflow_operator_scaler_current_replicas", "Worker replicas when the scaler last looked"),
                &["payflow_namespace", "payflow"],
            )?,
            leader: prometheus::IntGauge::new(
                "payflow_operator_leader",
                "1 while this replica holds the leader Lease",
            )?,
            registry,
        };
        // Known label values start at zero, so rates and alerts see a series before the first error.
        for kind in crate::error::Error::METRIC_LABELS {
            m.failures.with_label_values(&[kind]);
        }
        m.registry.register(Box::new(m.reconciles.clone()))?;
        m.registry.register(Box::new(m.failures.clone()))?;
        m.registry.register(Box::new(m.duration.clone()))?;
        m.registry.register(Box::new(m.applies.clone()))?;
        m.registry.register(Box::new(m.status_writes.clone()))?;
        m.registry.register(Box::new(m.queue_depth.clone()))?;
        m.registry.register(Box::new(m.desired_workers.clone()))?;
        m.registry.register(Box::new(m.fallback.clone()))?;
        m.registry.register(Box::new(m.decisions.clone()))?;
        m.registry.register(Box::new(m.current_workers.clone()))?;
        m.registry.register(Box::new(m.leader.clone()))?;
        Ok(m)
    }

    /// Counts a reconcile and times it until the guard drops.
    pub fn reconcile_started(&self) -> prometheus::HistogramTimer {
        self.reconciles.inc();
        self.duration.start_timer()
    }

    pub fn reconcile_failed(&self, e: &crate::error::Error) {
        self.failures.with_label_values(&[e.metric_label()]).inc();
    }

    pub fn applied(&self, kind: &str) {
        self.applies.with_label_values(&[kind]).inc();
    }

    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Labelled `payflow_namespace` (not `namespace`, which Prometheus gives the scraped target:
    /// the operator's own namespace) and `payflow`, the PayFlow's name.
    pub fn scaler_decision(
        &self,
        namespace: &str,
        payflow: &str,
        current: u32,
        d: &crate::scaler::algorithm::Decision,
    ) {
        if let Some(depth) = d.depth {
            self.queue_depth.with_label_values(&[namespace, payflow]).set(depth as i64);
        }
        self.desired_workers.with_label_values(&[namespace, payflow]).set(i64::from(d.desired));
        self.current_workers.with_label_values(&[namespace, payflow]).set(i64::from(current));
        self.fallback.with_label_values(&[namespace, payflow]).set(i64::from(d.fallback));
        self.decisions.with_label_values(&[namespace, payflow, d.reason.as_str()]).inc();
    }

    /// Drops the scaler gauges of a PayFlow the scaler no longer runs for (deleted, suspended, not
    /// or no longer autoscaled here): a last value such as `fallback` 1 would otherwise stay
    /// exported, and alerted on, until the operator restarts.
    pub fn scaler_stopped(&self, namespace: &str, payflow: &str) {
        for gauge in [&self.queue_depth, &self.desired_workers, &self.current_workers, &self.fallback] {
            // Absent when the scaler never decided for it: nothing to drop.
            let _ = gauge.remove_label_values(&[namespace, payflow]);
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
