//! A circuit breaker per upstream: after `threshold` consecutive failures the
//! upstream is skipped (503 at once, no hanging clients) for `open_for`, then
//! one trial request decides whether it closes again. Small enough that a
//! dependency would cost more than it saves.
//!
//! A trial that never reports (its request was dropped: the client went away
//! during a GET) must not keep the breaker half-open for good, which answered
//! 503 for that upstream until the gateway restarted. So a trial is an
//! [`Attempt`] that hands its slot back when dropped without a verdict, and a
//! trial that has not reported within `open_for` makes way for another one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// Trial number `trial` is in flight; after `until` another may start.
    HalfOpen {
        trial: u64,
        until: Instant,
    },
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Numbers trials, so a late verdict or drop of an old one cannot touch a newer one.
    trials: u64,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    inner: Mutex<Inner>,
    threshold: u32,
    open_for: Duration,
}

/// Leave to call the upstream once. Report the outcome with
/// [`Attempt::succeeded`] or [`Attempt::failed`]; dropping it without either
/// (the request was cancelled) gives a trial's slot back, counting nothing.
#[must_use = "report the call's outcome, or drop the attempt when the call was abandoned"]
#[derive(Debug)]
pub struct Attempt<'a> {
    breaker: &'a CircuitBreaker,
    /// The trial number when this is the half-open trial.
    trial: Option<u64>,
    reported: bool,
}

impl Attempt<'_> {
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.record_success();
    }

    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.record_failure();
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let (false, Some(trial)) = (self.reported, self.trial) {
            self.breaker.abandon_trial_at(trial, Instant::now());
        }
    }
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner { state: State::Closed { failures: 0 }, trials: 0 }),
            threshold: threshold.max(1),
            open_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the state is still a valid value.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leave for one call to the upstream now, or `None` while the breaker is open.
    pub fn attempt(&self) -> Option<Attempt<'_>> {
        self.attempt_at(Instant::now())
    }

    fn attempt_at(&self, now: Instant) -> Option<Attempt<'_>> {
        let mut inner = self.lock();
        let trial = match inner.state {
            State::Closed { .. } => None,
            State::Open { until } | State::HalfOpen { until, .. } if now >= until => {
                inner.trials += 1;
                let trial = inner.trials;
                inner.state = State::HalfOpen { trial, until: now + self.open_for };
                Some(trial)
            }
            State::Open { .. } | State::HalfOpen { .. } => return None,
        };
        Some(Attempt { breaker: self, trial, reported: false })
    }

    #[cfg(test)]
    fn allow_at(&self, now: Instant) -> bool {
        // Tests decide the outcome through `record_*`, so the attempt is settled here.
        self.attempt_at(now).map(|mut a| a.reported = true).is_some()
    }

    pub fn record_success(&self) {
        self.lock().state = State::Closed { failures: 0 };
    }

    pub fn record_failure(&self) {
        self.record_failure_at(Instant::now())
    }

    fn record_failure_at(&self, now: Instant) {
        let mut inner = self.lock();
        inner.state = match inner.state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed { failures: failures + 1 },
            _ => State::Open { until: now + self.open_for },
        };
    }

    /// A trial ended without a verdict: the next request may be the trial.
    fn abandon_trial_at(&self, trial: u64, now: Instant) {
        let mut inner = self.lock();
        if matches!(inner.state, State::HalfOpen { trial: t, .. } if t == trial) {
            inner.state = State::Open { until: now };
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.lock().state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_recovers_through_one_trial() {
        let b = CircuitBreaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            b.record_failure_at(t0);
            assert!(b.allow_at(t0));
        }
        b.record_failure_at(t0);
        assert!(!b.allow_at(t0), "open after 3 failures");
        assert!(!b.allow_at(t0 + Duration::from_secs(9)));
        let later = t0 + Duration::from_secs(10);
        assert!(b.allow_at(later), "one trial after the open period");
        assert!(!b.allow_at(later), "only one trial at a time");
        b.record_failure_at(later);
        assert!(!b.allow_at(later + Duration::from_secs(1)), "failed trial reopens");
        let much_later = later + Duration::from_secs(11);
        assert!(b.allow_at(much_later));
        b.record_success();
        assert!(b.allow_at(much_later) && !b.is_open());
    }

    #[test]
    fn success_resets_the_count() {
        let b = CircuitBreaker::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        b.record_failure_at(t0);
        b.record_success();
        b.record_failure_at(t0);
        assert!(b.allow_at(t0));
    }

    fn opened(open_for: Duration, t0: Instant) -> CircuitBreaker {
        let b = CircuitBreaker::new(1, open_for);
        b.record_failure_at(t0);
        b
    }

    /// A trial that never reports (nothing recorded) gives way to another
    /// after `open_for`; it used to leave the breaker half-open for good.
    #[test]
    fn a_trial_that_never_reports_makes_way_for_another_after_the_open_period() {
        let open_for = Duration::from_secs(10);
        let t0 = Instant::now();
        let b = opened(open_for, t0);
        let t = t0 + open_for;
        assert!(b.allow_at(t), "the trial");
        assert!(!b.allow_at(t + Duration::from_secs(9)), "the trial is still running");
        assert!(b.allow_at(t + open_for), "the trial never reported: a new one");
        assert!(!b.allow_at(t + open_for), "one trial at a time still");
    }

    /// The request carrying the trial was dropped (a client that went away
    /// during a GET): its slot is free at once, and nothing is counted.
    #[test]
    fn a_dropped_trial_frees_its_slot() {
        let open_for = Duration::from_secs(10);
        let t0 = Instant::now();
        let b = opened(open_for, t0);
        let t = t0 + open_for;
        let trial = b.attempt_at(t).expect("the trial");
        assert!(b.attempt_at(t).is_none(), "one trial at a time");
        drop(trial);
        let next = b.attempt().expect("a dropped trial gives its slot back");
        next.succeeded();
        assert!(!b.is_open());

        // An attempt dropped while closed changes nothing.
        b.record_failure();
        assert!(b.is_open());
        let b = CircuitBreaker::new(2, open_for);
        drop(b.attempt().expect("closed"));
        b.record_failure();
        assert!(!b.is_open(), "one failure of two");
    }

    /// A late drop of an old trial cannot free the slot of a newer trial.
    #[test]
    fn an_old_trial_cannot_touch_a_newer_one() {
        let open_for = Duration::from_secs(10);
        let t0 = Instant::now();
        let b = opened(open_for, t0);
        let old = b.attempt_at(t0 + open_for).expect("first trial");
        let newer = b.attempt_at(t0 + open_for * 2).expect("the first never reported: second trial");
        drop(old);
        assert!(b.attempt_at(t0 + open_for * 2).is_none(), "the second trial still holds the slot");
        newer.failed();
        assert!(b.is_open());
    }
}
