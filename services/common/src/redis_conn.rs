//! A reconnecting Redis connection shared by all requests.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisArgs;

pub async fn connect(args: &RedisArgs) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(args.redis_url.as_str())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(2);
    Ok(ConnectionManager::new_with_config(client, config).await?)
}
