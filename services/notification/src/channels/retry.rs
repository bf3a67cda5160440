//! Later attempts of queued deliveries: those that failed (after their
//! backoff) and those whose process died before it recorded an outcome
//! (after their lease). Every notification process runs this loop; claims
//! skip rows another process holds, so replicas share the work.
//!
//! One loop per channel, each claiming only as many deliveries as its channel
//! has room for (the room first attempts share) and claiming again as soon as
//! some frees up: a receiver that hangs holds its own channel's retries, never
//! another channel's.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{attempt, Job, DELIVERY_DEADLINE};
use crate::state::AppState;
use crate::store;

/// How long a claimed delivery belongs to the process that claimed it: its
/// attempt ends within [`DELIVERY_DEADLINE`], then the outcome is recorded.
pub const LEASE: Duration = Duration::from_secs(DELIVERY_DEADLINE.as_secs() + 30);

/// The longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Most deliveries claimed at once, and under way at once through a channel
/// without a bound of its own.
const CLAIM_LIMIT: usize = 50;

/// How often failed deliveries are tried again, and how many times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retries.
    pub attempts: u32,
    /// Wait after the first failure; it doubles with every further one, up to [`MAX_DELAY`].
    pub first_delay: Duration,
}

impl RetryPolicy {
    /// After `made` attempts that all failed: the wait before the next one,
    /// or `None` to give up. Spread by ±20% (from the notification id, so
    /// stable per notification) so that what failed together is not retried
    /// in one burst.
    pub fn next(&self, made: i32, id: Uuid) -> Option<Duration> {
        let made = u32::try_from(made).ok().filter(|m| *m >= 1)?;
        if made >= self.attempts {
            return None;
        }
        let doubled = self.first_delay.saturating_mul(1u32.checked_shl(made - 1).unwrap_or(u32::MAX));
        let base = doubled.min(MAX_DELAY);
        let spread = f64::from(u16::from_le_bytes([id.as_bytes()[15], id.as_bytes()[14]])) / f64::from(u16::MAX);
        Some(base.mul_f64(0.8 + 0.4 * spread))
    }

    /// How often the retry loop looks for due deliveries.
    fn poll(&self) -> Duration {
        self.first_delay.clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// Attempts due deliveries until `cancel`, then lets those under way finish;
/// first attempts that have not started by then are left to their lease.
/// Returns at once when this process has no queued channel.
pub async fn run(state: AppState, cancel: CancellationToken) {
    let loops = state.channels.queued().iter().map(|channel| run_channel(&state, channel, &cancel));
    futures::future::join_all(loops).await;
}

/// The retry loop of one channel.
async fn run_channel(state: &AppState, channel: &'static str, cancel: &CancellationToken) {
    let poll = state.retry.poll();
    let room = state.channels.in_flight(channel).unwrap_or_else(|| Arc::new(Semaphore::new(CLAIM_LIMIT)));
    let names = [channel];
    let queue = store::Queue { channels: &names, prefix: &state.prefix, lease: LEASE };
    let mut running = JoinSet::new();
    loop {
        while let Some(done) = running.try_join_next() {
            log_panic(done);
        }
        // Room first, then no more claims than can start now: a claimed row's
        // lease runs from the claim, so its attempt must not queue for a permit.
        let first = tokio::select! {
            permit = room.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = cancel.cancelled() => break,
        };
        let mut permits = vec![first];
        while permits.len() < CLAIM_LIMIT {
            match room.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let claimed = match store::claim_due(&state.pool, &queue, permits.len() as i64).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, channel, "could not look for due notification deliveries");
                Vec::new()
            }
        };
        let more = claimed.len() == permits.len();
        permits.truncate(claimed.len());
        if !claimed.is_empty() {
            // Not awaited here: the next claim goes out as soon as a permit frees up.
            running.spawn(attempt_claimed(state.clone(), claimed, permits));
        }
        if !more {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = cancel.cancelled() => break,
            }
        }
    }
    // First attempts still waiting for room start no more (their rows wait out
    // their lease), so stopping takes one delivery at most; attempts under way
    // finish and are recorded: cut short, they would wait out their lease too.
    room.close();
    while let Some(done) = running.join_next().await {
        log_panic(done);
    }
}

/// Attempts claimed deliveries, each with the permit taken for it, and records them together.
async fn attempt_claimed(state: AppState, claimed: Vec<store::Due>, permits: Vec<OwnedSemaphorePermit>) {
    let jobs: Vec<Job> = claimed
        .iter()
        .zip(permits)
        .filter_map(|(due, permit)| {
            let channel = state.channels.get(&due.channel)?;
            let span = tracing::info_span!(
                "delivery retry",
                correlation_id = %due.correlation_id,
                notification_id = %due.notification.id,
                channel = channel.channel.name(),
                attempt = due.attempts + 1,
            );
            Some(Job {
                notification: &due.notification,
                channel,
                correlation_id: &due.correlation_id,
                span,
                made: due.attempts,
                permit: Some(permit),
            })
        })
        .collect();
    attempt(&state, jobs).await;
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "notification delivery retry task failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_spread_and_ends() {
        let policy = RetryPolicy { attempts: 20, first_delay: Duration::from_secs(5) };
        // The two ends of the spread: factor 0.8 and 1.2.
        let low = Uuid::from_bytes([0; 16]);
        let high = Uuid::from_bytes([0xff; 16]);
        assert_eq!(policy.next(1, low), Some(Duration::from_secs(4)));
        assert_eq!(policy.next(1, high), Some(Duration::from_secs(6)));
        assert_eq!(policy.next(2, low), Some(Duration::from_secs(8)));
        assert_eq!(policy.next(3, high), Some(Duration::from_secs(24)));
        assert_eq!(policy.next(19, low), Some(MAX_DELAY.mul_f64(0.8)));
        assert_eq!(policy.next(20, low), None, "the last attempt failed");
        assert_eq!(policy.next(0, low), None);
        assert_eq!(RetryPolicy { attempts: 1, ..policy }.next(1, low), None, "no retries");
        // Far past any shift: capped, not overflowing.
        assert_eq!(RetryPolicy { attempts: 100, ..policy }.next(90, high), Some(MAX_DELAY.mul_f64(1.2)));
    }
}
