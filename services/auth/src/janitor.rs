//! Periodic cleanup of rows that no longer mean anything: throttle records
//! whose window passed, and sessions expired for over a day. Every replica
//! runs it; the deletes are idempotent, so that is harmless.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::state::AppState;
use crate::store::{sessions, throttle};

const INTERVAL: Duration = Duration::from_secs(600);

pub async fn run(state: AppState, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match throttle::purge_stale(&state.pool, state.config.login_lockout_secs).await {
            Ok(n) if n > 0 => tracing::info!(rows = n, "purged stale login throttle records"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "login throttle cleanup failed"),
        }
        match sessions::purge_expired(&state.pool).await {
            Ok(n) if n > 0 => tracing::info!(rows = n, "purged expired sessions and tokens"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "session cleanup failed"),
        }
    }
}
