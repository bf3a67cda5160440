//! GET /api/auth/me: the caller's profile.

use axum::extract::State;
use axum::Json;
use payflow_common::error::{ApiError, ApiResult};
use payflow_common::ids::UserId;
use payflow_common::telemetry::rfc3339;
use serde::Serialize;

use super::store_error;
use crate::extract::AuthUser;
use crate::state::AppState;
use crate::store::users;

#[derive(Serialize)]
pub struct MeResponse {
    id: UserId,
    email: String,
    name: String,
    role: &'static str,
    created_at: String,
    last_login_at: Option<String>,
}

pub async fn me(State(state): State<AppState>, caller: AuthUser) -> ApiResult<Json<MeResponse>> {
    // A valid token of a deleted user is as good as revoked.
    let user =
        users::find(&state.pool, caller.user_id).await.map_err(store_error)?.ok_or_else(ApiError::invalid_token)?;
    Ok(Json(MeResponse {
        id: user.id,
        email: user.email.as_str().to_string(),
        name: user.name.as_str().to_string(),
        role: user.role.as_str(),
        created_at: rfc3339(user.created_at),
        last_login_at: user.last_login_at.map(rfc3339),
    }))
}
