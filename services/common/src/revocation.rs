//! Revoked access tokens (`jti`), kept in Redis until the token would have
//! expired anyway. Auth writes on logout; the gateway reads on every request.

use crate::redis_conn::Redis;
use redis::AsyncCommands;

fn key(jti: &str) -> String {
    format!("payflow:revoked-jti:{jti}")
}

#[derive(Clone)]
pub struct RevocationList {
    redis: Redis,
}

impl RevocationList {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    pub async fn revoke(&self, jti: &str, ttl_secs: u64) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        conn.set_ex::<_, _, ()>(key(jti), 1, ttl_secs.max(1)).await
    }

    /// Many revocations in pipelined round trips of a few hundred each (one call each would
    /// take a round trip per token: slow when auth writes back every live revocation).
    pub async fn revoke_many(&self, entries: &[(String, u64)]) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        for chunk in entries.chunks(500) {
            let mut pipe = redis::pipe();
            for (jti, ttl_secs) in chunk {
                pipe.set_ex(key(jti), 1, (*ttl_secs).max(1)).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        Ok(())
    }

    pub async fn is_revoked(&self, jti: &str) -> redis::RedisResult<bool> {
        let mut conn = self.redis.clone();
        conn.exists(key(jti)).await
    }
}
