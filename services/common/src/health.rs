//! `/healthz` (alive), `/readyz` (dependencies answer), `/health` (the shape
//! the original Node.js clients read) and `/metrics`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::metrics::{self, Metrics};

/// A check of the process's own state, answered at once without I/O: e.g. whether RabbitMQ
/// accepted the topology this process declares.
pub type StateCheck = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The dependencies a service needs before it can serve.
#[derive(Clone, Default)]
pub struct Readiness {
    pub db: Option<sqlx::PgPool>,
    pub redis: Option<crate::redis_conn::Redis>,
    /// For services that verify access tokens: not ready before auth's keys
    /// are loaded, or every request would be a 503.
    pub keys: Option<crate::jwt::JwtVerifier>,
    pub state: Option<StateCheck>,
}

impl Readiness {
    /// Ready when Postgres answers (the services without Redis).
    pub fn postgres(pool: sqlx::PgPool) -> Self {
        Self { db: Some(pool), ..Self::default() }
    }

    /// Also ready only once `verifier` has signing keys.
    pub fn with_keys(mut self, verifier: crate::jwt::JwtVerifier) -> Self {
        self.keys = Some(verifier);
        self
    }

    /// Also ready only while `check` passes.
    pub fn with_state_check(mut self, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.state = Some(std::sync::Arc::new(check));
        self
    }

    /// Checks each dependency with a short deadline.
    pub async fn check(&self) -> Result<(), String> {
        if let Some(state) = &self.state {
            state()?;
        }
        let deadline = Duration::from_secs(2);
        if let Some(db) = &self.db {
            match tokio::time::timeout(deadline, sqlx::query("SELECT 1").execute(db)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("postgres: {e}")),
                Err(_) => return Err("postgres: timed out".into()),
            }
        }
        if let Some(redis) = &self.redis {
            let mut conn = redis.clone();
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            match tokio::time::timeout(deadline, ping).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("redis: {e}")),
                Err(_) => return Err("redis: timed out".into()),
            }
        }
        if let Some(keys) = &self.keys {
            match tokio::time::timeout(deadline, keys.ensure_keys()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("signing keys: {e}")),
                Err(_) => return Err("signing keys: timed out".into()),
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
struct HealthState {
    service: &'static str,
    readiness: Readiness,
}

/// Routes for health and metrics, to be merged into a service's router.
pub fn routes(service: &'static str, readiness: Readiness, metrics: Metrics) -> Router {
    let health = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status":"ok"})) }))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/api/health", get(health))
        .with_state(HealthState { service, readiness });
    let scrape = Router::new().route("/metrics", get(metrics::handler)).with_state(metrics);
    health.merge(scrape)
}

async fn readyz(State(s): State<HealthState>) -> Response {
    match s.readiness.check().await {
        Ok(()) => Json(json!({"status":"ready"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status":"not ready","error":e}))).into_response()
        }
    }
}

async fn health(State(s): State<HealthState>) -> Response {
    let (status, word) = match s.readiness.check().await {
        Ok(()) => (StatusCode::OK, "healthy"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy"),
    };
    let body = json!({
        "status": word,
        "service": s.service,
        "timestamp": crate::telemetry::now_rfc3339(),
        "version": crate::VERSION,
    });
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwtClaimArgs;
    use crate::jwt::{JwtSigner, JwtVerifier};

    #[tokio::test]
    async fn not_ready_to_verify_tokens_before_the_keys_are_loaded() {
        // Port 9 (discard) is closed here: auth not up yet.
        let unreachable =
            JwtVerifier::from_jwks_url("http://127.0.0.1:9/.well-known/jwks.json", &JwtClaimArgs::default());
        let err = Readiness::default().with_keys(unreachable).check().await.expect_err("not ready");
        assert!(err.starts_with("signing keys:"), "{err}");

        let signer = JwtSigner::generate().expect("key");
        let loaded = signer.verifier(&JwtClaimArgs::default());
        assert_eq!(Readiness::default().with_keys(loaded).check().await, Ok(()));
    }
}
