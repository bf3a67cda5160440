//! Keeps the Redis revocation list (which the gateway reads, and fails closed
//! on) complete: at start and every few seconds, every revoked access token
//! that has not expired (`auth.revoked_access_tokens`) is written to Redis
//! again, each until its own expiry. Logout writes Redis too, but only once:
//! a failed write there, or a Redis that restarted without its data, would
//! otherwise let a logged-out token through the gateway until it expired.
//! There are few such tokens (the logouts of one access-token lifetime), and
//! the writes are idempotent, so every replica doing it is harmless.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::routes::push_revocations;
use crate::state::AppState;
use crate::store::sessions;

/// How long a revoked token may pass the gateway after Redis lost it.
pub const INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(state: AppState, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Logged once per outage, not every few seconds.
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sync_once(&state).await {
            Ok(n) => {
                if failing {
                    tracing::info!(tokens = n, "revoked access tokens are in Redis again");
                }
                failing = false;
            }
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot put revoked access tokens in Redis; retrying every {INTERVAL:?}");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Writes every unexpired revocation to Redis; returns how many.
async fn sync_once(state: &AppState) -> anyhow::Result<usize> {
    let revoked = sessions::unexpired_revocations(&state.pool).await?;
    push_revocations(state, &revoked).await?;
    Ok(revoked.len())
}
