//! The markdown tables and the verdict against the targets.

use std::fmt::Write;

use crate::db::Settlement;
use crate::load::LoadResult;
use crate::probe::Samples;

/// Everything measured at one concurrency level.
pub struct Level {
    /// Closed loop: the senders; paced: the most requests in flight.
    pub concurrency: usize,
    /// Paced (open loop) at this many requests per second.
    pub paced_rate: Option<f64>,
    pub load: LoadResult,
    pub settlement: Settlement,
    /// PENDING + PROCESSING of this level right when the load stopped.
    pub backlog_at_end: i64,
    /// Same, over the whole database.
    pub backlog_total_at_end: i64,
    /// Seconds from the end of the load until this level's backlog was 0; None: not within the limit.
    pub drained_after: Option<f64>,
    pub samples: Samples,
    pub worker_batch_mean: Option<f64>,
    /// (service method route, requests, mean ms).
    pub http: Vec<(String, f64, f64)>,
    /// Cores used by process name during the load, and idle cores.
    pub cpu: (Vec<(String, f64)>, f64),
    /// Database counters over the level (load and drain).
    pub db: crate::db::Counters,
}

impl Level {
    pub fn secs(&self) -> f64 {
        self.load.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn accepted_per_sec(&self) -> f64 {
        self.load.accepted() as f64 / self.secs()
    }
    pub fn settled_per_sec(&self) -> f64 {
        self.settlement.completed_in_window as f64 / self.secs()
    }
    /// Settlement kept up: the backlog did not grow while the load ran
    /// (less than 5% of the accept rate, or 5/s) and it drained.
    pub fn keeps_up(&self) -> bool {
        let growth = self.samples.backlog_growth().unwrap_or(0.0);
        self.drained_after.is_some() && growth <= (0.05 * self.accepted_per_sec()).max(5.0)
    }
    /// How the level is named in the tables: `16`, or `paced 573/s`.
    pub fn label(&self) -> String {
        match self.paced_rate {
            None => self.concurrency.to_string(),
            Some(rate) => format!("paced {rate:.0}/s"),
        }
    }
    fn accept_ms(&self, q: f64) -> Option<f64> {
        (self.load.accepted() > 0).then(|| self.load.accept_latency.value_at_quantile(q) as f64 / 1e3)
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) if v < 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

fn errors(l: &Level) -> String {
    if l.load.errors.is_empty() {
        return "0".into();
    }
    l.load.errors.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(" ")
}

fn drained(l: &Level, drain_limit: f64) -> String {
    let mut s = match l.drained_after {
        Some(d) => format!("{d:.1} s"),
        None => format!("NO ({} open after {drain_limit:.0} s)", l.settlement.open),
    };
    if l.settlement.failed > 0 {
        let _ = write!(s, ", {} FAILED", l.settlement.failed);
    }
    let lost = l.load.accepted() as i64 - l.settlement.found;
    if lost > 0 {
        let _ = write!(s, ", {lost} MISSING");
    }
    s
}

pub fn main_table(levels: &[Level], drain_limit: f64) -> String {
    let mut out = String::new();
    out.push_str(
        "| conc | accepted/s | errors | accept p50 ms | accept p99 ms | settled/s | settle p50 ms | settle p99 ms | backlog at end | backlog growth/s | drained |\n",
    );
    out.push_str("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for l in levels {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            l.label(),
            l.accepted_per_sec(),
            errors(l),
            ms(l.accept_ms(0.5)),
            ms(l.accept_ms(0.99)),
            l.settled_per_sec(),
            ms(l.settlement.p50.map(|s| s * 1e3)),
            ms(l.settlement.p99.map(|s| s * 1e3)),
            l.backlog_at_end,
            l.samples.backlog_growth().map_or("–".into(), |g| format!("{g:+.0}")),
            drained(l, drain_limit),
        );
    }
    out
}

pub fn diagnostics_table(levels: &[Level]) -> String {
    let mut out = String::new();
    out.push_str(
        "| conc | commits / transfer | WAL flushes / transfer | WAL KB / transfer | worker batch (mean) | outbox unpublished (max) | oldest unpublished (max s) | queue ready / unacked (max) | Postgres sessions, avg non-idle |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
    for l in levels {
        let s = &l.samples;
        let queue = match (s.queue_ready_max, s.queue_unacked_max) {
            (Some(r), Some(u)) => format!("{r} / {u}"),
            _ => "–".into(),
        };
        let sessions = s.top_sessions(4).iter().map(|(k, v)| format!("{k} {v:.1}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {} | {} |",
            l.label(),
            per_transfer(l, l.db.commits as f64, 1),
            per_transfer(l, l.db.wal_syncs as f64, 2),
            per_transfer(l, l.db.wal_bytes / 1024.0, 1),
            l.worker_batch_mean.map_or("–".into(), |b| format!("{b:.1}")),
            s.outbox_unpublished_max,
            s.outbox_age_max,
            queue,
            if sessions.is_empty() { "–".into() } else { sessions },
        );
    }
    out
}

fn per_transfer(l: &Level, v: f64, digits: usize) -> String {
    let n = l.load.accepted();
    if n == 0 {
        return "–".into();
    }
    format!("{:.*}", digits, v / n as f64)
}

/// Cores per process and idle cores of each level, and what the whole
/// machine spent per accepted transfer (load generator included).
pub fn cpu_lines(levels: &[Level], cores: f64) -> String {
    let mut out = String::new();
    for l in levels {
        let (procs, idle) = &l.cpu;
        if procs.is_empty() {
            continue;
        }
        let busy = procs.iter().take(6).map(|(k, c)| format!("{k} {c:.2}")).collect::<Vec<_>>().join(", ");
        let per_transfer = match l.accepted_per_sec() {
            r if r > 0.0 => format!("; {:.2} ms of CPU per transfer", (cores - idle).max(0.0) / r * 1e3),
            _ => String::new(),
        };
        let _ = writeln!(out, "- conc {}: {busy}; idle {idle:.2}{per_transfer}", l.label());
    }
    out
}

pub fn server_latencies(levels: &[Level]) -> String {
    let mut out = String::new();
    for l in levels {
        if l.http.is_empty() {
            continue;
        }
        let routes =
            l.http.iter().take(5).map(|(k, n, m)| format!("{k} {m:.2} ms ×{n:.0}")).collect::<Vec<_>>().join("; ");
        let _ = writeln!(out, "- conc {}: {routes}", l.label());
    }
    out
}

/// The targets, checked against the measured levels.
pub fn verdict(levels: &[Level]) -> String {
    let mut out = String::new();
    if levels.is_empty() {
        return out;
    }
    let behind: Vec<String> = levels
        .iter()
        .filter(|l| !l.keeps_up())
        .map(|l| {
            format!(
                "{} ({:.0} settled/s of {:.0} accepted/s, backlog {:+.0}/s)",
                l.label(),
                l.settled_per_sec(),
                l.accepted_per_sec(),
                l.samples.backlog_growth().unwrap_or(0.0)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "- settlement keeps up (backlog growth under 5% of accepted/s while loaded, drained after): {}",
        if behind.is_empty() { "yes, at every level".to_string() } else { format!("NO at conc {}", behind.join(", ")) }
    );
    let peak_settled = levels.iter().map(Level::settled_per_sec).fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "- at least 1,000 settled/s: {} (peak {peak_settled:.0} settled/s)",
        if peak_settled >= 1000.0 { "yes" } else { "NO" }
    );
    // The open-loop level at half the peak answers this; without it, the closed-loop level nearest.
    let closed: Vec<&Level> = levels.iter().filter(|l| l.paced_rate.is_none()).collect();
    let peak = closed.iter().map(|l| l.accepted_per_sec()).fold(0.0, f64::max);
    let nearest = || {
        closed.iter().copied().filter(|l| l.load.accepted() > 0).min_by(|a, b| {
            (a.accepted_per_sec() - peak / 2.0).abs().total_cmp(&(b.accepted_per_sec() - peak / 2.0).abs())
        })
    };
    // Of several open-loop levels (--paced-rates), the one nearest half the peak.
    let paced = levels
        .iter()
        .filter_map(|l| Some((l, l.paced_rate?)))
        .min_by(|(_, a), (_, b)| (a - peak / 2.0).abs().total_cmp(&(b - peak / 2.0).abs()))
        .map(|(l, _)| l);
    if let Some(h) = paced.or_else(nearest).filter(|_| !closed.is_empty()) {
        let p99 = h.accept_ms(0.99).unwrap_or(f64::INFINITY);
        let how = match h.paced_rate {
            Some(rate) => format!(
                "open loop at {rate:.0}/s, {:.0}/s answered, latency from each request's due time",
                h.accepted_per_sec()
            ),
            None => format!("conc {} ran at {:.0}/s", h.concurrency, h.accepted_per_sec()),
        };
        let _ = writeln!(
            out,
            "- accept p99 under 10 ms at half the peak rate: {} (peak {peak:.0} accepted/s; {how}: p99 {} ms)",
            if p99 < 10.0 { "yes" } else { "NO" },
            ms(Some(p99)),
        );
    }
    out
}
