use axum::extract::State;
use axum::Json;
use payflow_common::bearer::AuthUser;
use payflow_common::error::{ApiError, ApiResult};
use payflow_common::extract::{parse_path_id, PathParam};
use payflow_common::ids::UserId;
use serde_json::{json, Value};

use super::views::wallet_json;
use crate::ledger;
use crate::state::AppState;

/// Most payees the directory lists.
const DIRECTORY_LIMIT: i64 = 1000;

/// `GET /api/wallets`: who can be paid (names only, never balances).
pub async fn directory(State(state): State<AppState>, _user: AuthUser) -> ApiResult<Json<Value>> {
    let rows = ledger::directory(&state.pool, DIRECTORY_LIMIT).await?;
    Ok(Json(Value::Array(rows.into_iter().map(|(id, name)| json!({"user_id": id, "name": name})).collect())))
}

/// `GET /api/wallets/:userId`: the caller's own wallet only.
pub async fn get_wallet(
    State(state): State<AppState>,
    user: AuthUser,
    PathParam(raw): PathParam,
) -> ApiResult<Json<Value>> {
    let owner: UserId = parse_path_id(&raw, "userId")?;
    user.require_self(owner)?;
    let wallet =
        ledger::get_wallet(&state.pool, owner).await?.ok_or_else(|| ApiError::not_found("Wallet not found"))?;
    Ok(Json(wallet_json(&wallet)))
}
