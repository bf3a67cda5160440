//! A reconnecting Redis connection shared by all requests, with a time bound
//! on each call through it.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::config::RedisArgs;

/// The longest a request waits for one Redis call, reconnecting included.
/// Redis only speeds things up (or, for revocations, fails closed), so a slow
/// or restarting Redis must cost a request this much at most, never a hang.
pub const CALL_LIMIT: Duration = Duration::from_secs(1);

pub async fn connect(args: &RedisArgs) -> anyhow::Result<Redis> {
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
    Ok(Redis(ConnectionManager::new_with_config(client, config).await?))
}

/// The shared connection; every command through it gives up after
/// [`CALL_LIMIT`] (the manager's own response timeout does not cover the wait
/// for a reconnect).
#[derive(Clone)]
pub struct Redis(ConnectionManager);

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(bounded(self.0.req_packed_command(cmd)))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(bounded(self.0.req_packed_commands(cmd, offset, count)))
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

async fn bounded<T>(call: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
    tokio::time::timeout(CALL_LIMIT, call)
        .await
        .unwrap_or_else(|_| Err(RedisError::from((ErrorKind::IoError, "Redis did not answer in time"))))
}
