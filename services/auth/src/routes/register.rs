//! POST /api/auth/register.
//!
//! The user row is inserted (the unique email constraint decides duplicates,
//! also under concurrency), then the wallet is created at wallet before the
//! answer. If wallet surely did not create it, the user is deleted again
//! (compensation) and the client may retry. If the outcome is unknown (wallet
//! took the request and did not answer in time), the wallet may exist with
//! its sign-up credit: deleting the user would orphan it, and a retried
//! registration would make a second one. So the user stays, with
//! `wallet_created = false`, and the answer (503) says to log in, which
//! finishes the wallet (idempotent on the user id); a crash in between leaves
//! the same state, repaired the same way.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use payflow_common::error::{ApiError, ApiResult};
use payflow_common::extract::ApiJson;
use payflow_common::ids::UserId;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{open_session, UserView};
use crate::domain::{Registration, Role};
use crate::extract::{ClientIp, Correlation};
use crate::state::AppState;
use crate::store::audit::{self, AuditEvent};
use crate::store::users::{self, InsertError};
use crate::wallet_client::WalletError;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    message: &'static str,
    user_id: UserId,
    user: UserView,
    access_token: String,
    refresh_token: String,
}

fn email_taken() -> ApiError {
    ApiError::conflict("email_taken", "Email already registered")
}

/// The account exists but its wallet may not: the first login finishes it.
fn incomplete() -> ApiError {
    ApiError {
        retry_after: Some(5),
        ..ApiError::unavailable("Account created, but its setup did not finish: log in to complete it")
            .with_code("registration_incomplete")
    }
}

pub async fn register(
    State(state): State<AppState>,
    ip: ClientIp,
    Correlation(correlation_id): Correlation,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<(StatusCode, Json<RegisterResponse>)> {
    let Registration { email, password, name } = Registration::from_json(&body).map_err(ApiError::validation)?;

    // Spares an argon2 hash on an obvious duplicate; not relied on for correctness.
    if users::email_taken(&state.pool, &email).await? {
        return Err(email_taken());
    }
    let hash = state.hasher.hash(&password).await?;
    let user_id = UserId::new();
    match users::insert(&state.pool, user_id, &email, &name, &hash).await {
        Ok(_) => {}
        Err(InsertError::EmailTaken) => return Err(email_taken()),
        Err(InsertError::Db(e)) => return Err(e.into()),
    }

    match state.wallet.create_wallet(user_id, &name, &correlation_id).await {
        Ok(()) => {}
        Err(e @ WalletError::Unknown(_)) => {
            tracing::error!(error = %e, %user_id, "wallet unanswered at registration: user kept, login finishes it");
            return Err(incomplete());
        }
        Err(e @ WalletError::NotCreated(_)) => compensate(&state, user_id, e).await?,
    }
    users::mark_wallet_created(&state.pool, user_id).await?;

    let tokens = open_session(&state, user_id, &email, Role::User).await?;
    audit::record(&state.pool, AuditEvent::Register, Some(user_id), ip.as_deref(), json!({"email": email.as_str()}))
        .await;
    state.auth_metrics.registered();
    tracing::info!(%user_id, "user registered");

    let body = RegisterResponse {
        message: "User registered successfully",
        user_id,
        user: UserView::new(user_id, &email, &name, Role::User),
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// Undoes the user of a registration whose wallet surely was not created.
/// `Ok` when the account is complete after all (a concurrent login created the
/// wallet meanwhile); else the answer for the client.
async fn compensate(state: &AppState, user_id: UserId, e: WalletError) -> ApiResult<()> {
    tracing::error!(error = %e, %user_id, "wallet creation failed during registration");
    match users::delete_without_wallet(&state.pool, user_id).await {
        // Removed: the email is free again and the client can simply retry.
        Ok(true) => Err(ApiError::unavailable("Registration temporarily unavailable")),
        // A concurrent login created the wallet meanwhile: the account is complete.
        Ok(false) => Ok(()),
        Err(db) => {
            // The user stays without a wallet; the next login creates it.
            tracing::error!(error = %db, %user_id, "could not remove user after wallet failure");
            Err(incomplete())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;
    use tokio_util::sync::CancellationToken;
    use uuid::Uuid;

    use crate::test_support::{
        closed_port, config, credentials, fresh_email, never_answers, post, serve_auth, serve_wallet,
    };

    async fn user_row(pool: &sqlx::PgPool, email: &str) -> Option<(Uuid, bool)> {
        sqlx::query_as("SELECT id, wallet_created FROM auth.users WHERE email = $1")
            .bind(email)
            .fetch_optional(pool)
            .await
            .expect("query")
    }

    /// Wallet took the request and never answered, so the wallet may exist
    /// (with its sign-up credit). The user stays: deleting it orphaned that
    /// wallet, and the client's retry made a second one. The answer comes
    /// before the gateway gives up (10 s), says to log in, and the login
    /// finishes the wallet.
    #[tokio::test]
    async fn a_registration_whose_wallet_does_not_answer_is_finished_by_the_first_login() {
        let cancel = CancellationToken::new();
        let silent = never_answers(usize::MAX).await;
        let (state, url) = serve_auth(&config(&[("wallet-url", format!("http://{silent}"))]), &cancel).await;
        let email = fresh_email();
        let started = Instant::now();
        let (status, retry_after, body) = post(&format!("{url}/api/auth/register"), credentials(&email)).await;
        let took = started.elapsed();
        assert_eq!((status, body["code"].as_str()), (503, Some("registration_incomplete")), "{body}");
        assert!(body["error"].as_str().is_some_and(|m| m.contains("log in")), "{body}");
        assert!(retry_after.is_some());
        assert!(took < Duration::from_secs(8), "answered after {took:?}: the gateway gives up at 10 s");
        let (user_id, wallet_created) = user_row(&state.pool, &email).await.expect("the user was kept");
        assert!(!wallet_created);

        // Registering again makes no second account (nor wallet).
        let (status, _, body) = post(&format!("{url}/api/auth/register"), credentials(&email)).await;
        assert_eq!(status, 409, "{body}");

        // Another replica, whose wallet answers: the login completes the account.
        let wallet = serve_wallet(&cancel).await;
        let (_, other) = serve_auth(&config(&[("wallet-url", wallet)]), &cancel).await;
        let (status, _, body) =
            post(&format!("{other}/api/auth/login"), json!({"email": email, "password": "Sup3r-secret"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(user_row(&state.pool, &email).await, Some((user_id, true)));
        let wallets: i64 = sqlx::query_scalar("SELECT count(*) FROM wallet.accounts WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&state.pool)
            .await
            .expect("count");
        assert_eq!(wallets, 1);
        cancel.cancel();
    }

    /// Wallet surely created nothing (its port refuses connections): the user
    /// is removed again, so registering later works.
    #[tokio::test]
    async fn a_registration_whose_wallet_is_unreachable_is_undone() {
        let cancel = CancellationToken::new();
        let refused = closed_port().await;
        let (state, url) = serve_auth(&config(&[("wallet-url", format!("http://{refused}"))]), &cancel).await;
        let email = fresh_email();
        let (status, _, body) = post(&format!("{url}/api/auth/register"), credentials(&email)).await;
        assert_eq!((status, body["error"].as_str()), (503, Some("Registration temporarily unavailable")), "{body}");
        assert_eq!(user_row(&state.pool, &email).await, None);
        cancel.cancel();
    }
}
