//! POST /api/auth/register.
//!
//! The user row is inserted (the unique email constraint decides duplicates,
//! also under concurrency), then the wallet is created at wallet before the
//! answer. If wallet fails, the user is deleted again (compensation) and the
//! client may retry; a crash in between leaves `wallet_created = false`,
//! which the next login repairs.

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
    let hash = state.hasher.hash(&password).await.map_err(ApiError::internal)?;
    let user_id = UserId::new();
    match users::insert(&state.pool, user_id, &email, &name, &hash).await {
        Ok(_) => {}
        Err(InsertError::EmailTaken) => return Err(email_taken()),
        Err(InsertError::Db(e)) => return Err(e.into()),
    }

    if let Err(e) = state.wallet.create_wallet(user_id, &name, &correlation_id).await {
        tracing::error!(error = %e, %user_id, "wallet creation failed during registration");
        match users::delete_without_wallet(&state.pool, user_id).await {
            // Removed: the email is free again and the client can simply retry.
            Ok(true) => return Err(ApiError::unavailable("Registration temporarily unavailable")),
            // A concurrent login created the wallet meanwhile: the account is complete.
            Ok(false) => {}
            Err(db) => {
                // The user stays without a wallet; the next login creates it.
                tracing::error!(error = %db, %user_id, "could not remove user after wallet failure");
                return Err(ApiError::unavailable("Registration temporarily unavailable"));
            }
        }
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
