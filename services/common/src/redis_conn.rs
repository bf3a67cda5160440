//! A reconnecting Redis connection shared by all requests, and the time bound
//! on each call through it.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, RedisResult};

use crate::config::RedisArgs;

/// The longest a request waits for one Redis call, reconnecting included.
/// Redis only speeds things up (or, for revocations, fails closed), so a slow
/// or restarting Redis must cost a request this much at most, never a hang.
pub const CALL_LIMIT: Duration = Duration::from_secs(1);

pub async fn connect(args: &RedisArgs) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(args.redis_url.as_str())?;
    // redis 0.32 hands `factor` to its backoff (backon) as the growth of the
    // delay from a 1 s start; its default, 100, made the second reconnect
    // attempt wait 60-120 s (backon's 60 s cap plus jitter), and every command
    // waited for it: a Redis restart of 2 s kept the gateway answering 504 for
    // two minutes. Now the attempts come 1-2 s, then at most 1 s apart.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(2)
        .set_factor(2)
        .set_max_delay(500);
    Ok(ConnectionManager::new_with_config(client, config).await?)
}

/// `call`, or an I/O error once it has taken [`CALL_LIMIT`].
pub async fn bounded<T>(call: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
    tokio::time::timeout(CALL_LIMIT, call)
        .await
        .unwrap_or_else(|_| Err(RedisError::from((ErrorKind::IoError, "Redis did not answer in time"))))
}
