//! Token buckets in Redis. One Lua script refills and takes a token
//! atomically, using Redis' clock so every gateway replica agrees.

use payflow_common::redis_conn::Redis;
use redis::Script;

const TOKEN_BUCKET: &str = r#"
local capacity = tonumber(ARGV[1])
local per_sec = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) / 1000 * per_sec)
local allowed = 0
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) / per_sec * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / per_sec * 1000) + 1000)
return {allowed, wait_ms}
"#;

/// A bucket of `per_minute` tokens that refills continuously.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub per_minute: u32,
}

pub enum Decision {
    Allowed,
    /// Denied; retry after this many seconds (at least 1).
    Denied(u64),
}

#[derive(Clone)]
pub struct RateLimiter {
    redis: Redis,
    script: std::sync::Arc<Script>,
}

impl RateLimiter {
    pub fn new(redis: Redis) -> Self {
        Self { redis, script: std::sync::Arc::new(Script::new(TOKEN_BUCKET)) }
    }

    /// Takes one token from `key`'s bucket. A limit of 0 disables it.
    pub async fn check(&self, key: &str, limit: Limit) -> redis::RedisResult<Decision> {
        if limit.per_minute == 0 {
            return Ok(Decision::Allowed);
        }
        let mut conn = self.redis.clone();
        let per_sec = f64::from(limit.per_minute) / 60.0;
        let (allowed, wait_ms): (i64, i64) = self
            .script
            .key(format!("payflow:rl:{key}"))
            .arg(limit.per_minute)
            .arg(per_sec)
            .invoke_async(&mut conn)
            .await?;
        Ok(if allowed == 1 { Decision::Allowed } else { Decision::Denied((wait_ms.max(1) as u64).div_ceil(1000)) })
    }
}
