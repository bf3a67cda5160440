//! POST /api/auth/login.
//!
//! Unknown emails and wrong passwords get the same answer after the same
//! work (an argon2 verification, against a dummy hash for unknown emails).
//! Attempts are throttled per normalised email (see `store::throttle`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use payflow_common::error::{ApiError, ApiResult};
use payflow_common::extract::ApiJson;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{open_session, store_error, UserView};
use crate::domain::LoginRequest;
use crate::extract::{ClientIp, Correlation};
use crate::metrics::LoginResult;
use crate::state::AppState;
use crate::store::audit::{self, AuditEvent};
use crate::store::throttle::{self, Attempt};
use crate::store::users;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    message: &'static str,
    user: UserView,
    access_token: String,
    refresh_token: String,
}

fn invalid_credentials() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "Invalid credentials")
}

pub async fn login(
    State(state): State<AppState>,
    ip: ClientIp,
    Correlation(correlation_id): Correlation,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<Json<LoginResponse>> {
    let request = LoginRequest::from_json(&body).map_err(ApiError::validation)?;
    let cfg = &state.config;

    // Same answer and the same hashing work as any unknown email, but no
    // throttle record: no account can have such an email.
    if !request.email_is_plausible() {
        state.hasher.verify(&request.password, None).await?;
        audit::record(&state.pool, AuditEvent::LoginFailure, None, ip.as_deref(), json!({"reason": "malformed_email"}))
            .await;
        state.auth_metrics.login(LoginResult::Invalid);
        return Err(invalid_credentials());
    }
    let LoginRequest { email, password } = request;

    if let Attempt::Refused { retry_after_secs } =
        throttle::begin_attempt(&state.pool, email.as_str(), cfg.login_max_failures, cfg.login_lockout_secs).await?
    {
        tracing::warn!(retry_after_secs, "login refused: too many failures for this email");
        state.auth_metrics.login(LoginResult::Locked);
        // The contract's 429 text, so clients handle it like any other; the code tells it apart.
        return Err(ApiError::too_many_requests("Too many requests", retry_after_secs).with_code("login_locked"));
    }

    let found = users::find_for_login(&state.pool, email.as_str()).await.map_err(store_error)?;
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    let matched = state.hasher.verify(&password, hash.as_deref()).await?;

    let user = match user {
        Some(user) if matched => user,
        user => {
            let user_id = user.as_ref().map(|u| u.id);
            let reason = if user_id.is_some() { "wrong_password" } else { "unknown_email" };
            let locked = throttle::lock_if_exhausted(
                &state.pool,
                email.as_str(),
                cfg.login_max_failures,
                cfg.login_lockout_secs,
            )
            .await?;
            audit::record(
                &state.pool,
                AuditEvent::LoginFailure,
                user_id,
                ip.as_deref(),
                json!({"email": email.as_str(), "reason": reason}),
            )
            .await;
            if let Some(secs) = locked {
                tracing::warn!(lock_secs = secs, "login locked after repeated failures");
                audit::record(
                    &state.pool,
                    AuditEvent::LoginLockout,
                    user_id,
                    ip.as_deref(),
                    json!({"email": email.as_str(), "lockSecs": secs}),
                )
                .await;
            }
            state.auth_metrics.login(LoginResult::Invalid);
            return Err(invalid_credentials());
        }
    };

    throttle::reset(&state.pool, email.as_str()).await?;

    // A crash during registration can leave a user without a wallet; wallet
    // creation is idempotent, so finishing it here is safe.
    if !user.wallet_created {
        if let Err(e) = state.wallet.create_wallet(user.id, &user.name, &correlation_id).await {
            tracing::error!(error = %e, user_id = %user.id, "wallet creation failed during login");
            return Err(ApiError::unavailable("Login temporarily unavailable"));
        }
        users::mark_wallet_created(&state.pool, user.id).await?;
        tracing::info!(user_id = %user.id, "created missing wallet at login");
    }

    users::record_login(&state.pool, user.id).await?;
    let tokens = open_session(&state, user.id, &user.email, user.role).await?;
    audit::record(&state.pool, AuditEvent::LoginSuccess, Some(user.id), ip.as_deref(), json!({})).await;
    state.auth_metrics.login(LoginResult::Success);

    Ok(Json(LoginResponse {
        message: "Login successful",
        user: UserView::new(user.id, &user.email, &user.name, user.role),
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
    }))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use crate::test_support::{config, fresh_email, post, serve_auth};

    /// A burst of sign-ins holds every hashing slot: a login waits a bounded
    /// time for one, then answers 503 with Retry-After. It used to queue
    /// without limit, hashing long after the gateway (10 s) had given up.
    #[tokio::test]
    async fn a_login_that_gets_no_hashing_slot_answers_503_quickly() {
        let cancel = CancellationToken::new();
        let (state, url) = serve_auth(&config(&[("hash-concurrency", "1".into())]), &cancel).await;
        let login = format!("{url}/api/auth/login");
        let attempt = json!({"email": fresh_email(), "password": "Sup3r-secret"});
        let held = state.hasher.occupy_all().await;
        let started = Instant::now();
        let (status, retry_after, body) = post(&login, attempt.clone()).await;
        let took = started.elapsed();
        assert_eq!((status, body["code"].as_str()), (503, Some("auth_busy")), "{body}");
        assert!(body["error"].is_string(), "{body}");
        assert_eq!(retry_after.as_deref(), Some("2"));
        assert!(took < Duration::from_secs(4), "answered after {took:?}");

        drop(held);
        let (status, _, body) = post(&login, attempt).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("Invalid credentials")), "hashing again");
        cancel.cancel();
    }
}
