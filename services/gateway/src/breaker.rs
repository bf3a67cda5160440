//! A circuit breaker per upstream: after `threshold` consecutive failures the
//! upstream is skipped (503 at once, no hanging clients) for `open_for`, then
//! one trial request decides whether it closes again. Small enough that a
//! dependency would cost more than it saves.

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
    /// One trial request is in flight.
    HalfOpen,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    state: Mutex<State>,
    threshold: u32,
    open_for: Duration,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self { state: Mutex::new(State::Closed { failures: 0 }), threshold: threshold.max(1), open_for }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state is still a valid value.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request may go to the upstream now.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *s = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    pub fn record_success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    pub fn record_failure(&self) {
        self.record_failure_at(Instant::now())
    }

    fn record_failure_at(&self, now: Instant) {
        let mut s = self.lock();
        *s = match *s {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed { failures: failures + 1 },
            _ => State::Open { until: now + self.open_for },
        };
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
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
}
