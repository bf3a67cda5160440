//! POST /api/auth/refresh: rotates a refresh token (see `store::sessions::rotate`).

use axum::extract::State;
use axum::Json;
use payflow_common::error::{ApiError, ApiResult};
use payflow_common::extract::ApiJson;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{push_revocations, sign_pair, store_error, ttls};
use crate::domain::field;
use crate::extract::ClientIp;
use crate::metrics::RefreshResult;
use crate::state::AppState;
use crate::store::audit::{self, AuditEvent};
use crate::store::sessions::{self, Rotation};
use crate::tokens;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshResponse {
    access_token: String,
    refresh_token: String,
}

pub async fn refresh(
    State(state): State<AppState>,
    ip: ClientIp,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<Json<RefreshResponse>> {
    let mut errors = Vec::new();
    let presented = field(&body, "refreshToken", &mut errors).ok_or_else(|| ApiError::validation(errors))?;

    let Some(hash) = tokens::hash_presented(presented) else {
        state.auth_metrics.refresh(RefreshResult::Invalid);
        return Err(ApiError::invalid_token());
    };
    let rotation = sessions::rotate(&state.pool, &hash, ttls(&state)).await.map_err(store_error)?;
    match rotation {
        Rotation::Rotated { user_id, email, role, issued } => {
            let family_id = issued.family_id;
            let pair = sign_pair(&state, user_id, &email, role, issued)?;
            audit::record(
                &state.pool,
                AuditEvent::Refresh,
                Some(user_id),
                ip.as_deref(),
                json!({"familyId": family_id}),
            )
            .await;
            state.auth_metrics.refresh(RefreshResult::Success);
            Ok(Json(RefreshResponse { access_token: pair.access_token, refresh_token: pair.refresh_token }))
        }
        Rotation::Reused { user_id, family_id, live } => {
            // Either the client or a thief holds a stolen copy; ending the whole
            // session (including its access tokens) stops both.
            tracing::warn!(%user_id, %family_id, "rotated refresh token presented again: session revoked");
            if let Err(e) = push_revocations(&state, &live).await {
                // Auth itself refuses them (the session check), and the revocation
                // sync puts them in Redis for the gateway within seconds.
                tracing::error!(error = %e, %family_id, "could not list revoked access tokens in Redis");
            }
            audit::record(
                &state.pool,
                AuditEvent::RefreshReuse,
                Some(user_id),
                ip.as_deref(),
                json!({"familyId": family_id, "accessTokensRevoked": live.len()}),
            )
            .await;
            state.auth_metrics.refresh(RefreshResult::Reused);
            Err(ApiError::invalid_token())
        }
        Rotation::Invalid => {
            state.auth_metrics.refresh(RefreshResult::Invalid);
            Err(ApiError::invalid_token())
        }
    }
}
