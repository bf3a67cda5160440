use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use payflow_common::bearer::AuthUser;
use payflow_common::error::{ApiError, ApiResult, FieldError};
use payflow_common::extract::{parse_path_id, PathParam};
use payflow_common::ids::TransferId;
use serde_json::Value;
use uuid::Uuid;

use crate::model::Status;
use crate::state::AppState;
use crate::store;

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 100;

/// Query of the list, parsed once.
struct ListQuery {
    status: Option<Status>,
    limit: i64,
    cursor: Option<Uuid>,
    offset: i64,
}

fn parse_query(q: &HashMap<String, String>, caller: &AuthUser) -> ApiResult<ListQuery> {
    // An empty value (`?status=`) means the parameter was not given, as the
    // older PayFlow read it.
    let get = |name: &str| q.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let mut details = Vec::new();
    let limit = match get("limit").map(|l| l.parse::<i64>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(l)) if (1..=MAX_LIMIT).contains(&l) => l,
        Some(_) => {
            details.push(FieldError::new("limit", format!("must be an integer from 1 to {MAX_LIMIT}")));
            DEFAULT_LIMIT
        }
    };
    let status = match get("status") {
        None => None,
        Some(s) => match Status::parse(s) {
            Some(st) => Some(st),
            None => {
                details.push(FieldError::new("status", "must be PENDING, PROCESSING, COMPLETED or FAILED"));
                None
            }
        },
    };
    let cursor = match get("cursor").map(Uuid::parse_str) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(_)) => {
            details.push(FieldError::new("cursor", "must be the id of a transaction"));
            None
        }
    };
    let offset = match get("page").map(|p| p.parse::<i64>()) {
        None => 0,
        Some(Ok(p)) if (1..=10_000).contains(&p) => (p - 1) * limit,
        Some(_) => {
            details.push(FieldError::new("page", "must be an integer from 1"));
            0
        }
    };
    if get("cursor").is_some() && get("page").is_some() {
        details.push(FieldError::new("page", "cannot be combined with cursor"));
    }
    if !details.is_empty() {
        return Err(ApiError::validation(details));
    }
    // Older clients send their own id; anyone else's is refused.
    if let Some(user) = get("userId") {
        if Uuid::parse_str(user).ok() != Some(caller.id().0) {
            return Err(ApiError::forbidden());
        }
    }
    Ok(ListQuery { status, limit, cursor, offset })
}

/// The caller's transactions, newest first. `X-Next-Cursor` names the cursor
/// of the next page when there may be one.
pub async fn list(
    State(s): State<AppState>,
    user: AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let q = parse_query(&q, &user)?;
    let rows = store::list(&s.pool, user.id().0, q.status, q.cursor, q.offset, q.limit).await?;
    let next = (rows.len() as i64 == q.limit).then(|| rows.last().map(|t| t.id)).flatten();
    let body: Vec<Value> = rows.iter().map(|t| t.to_json()).collect();
    let mut res = Json(body).into_response();
    if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n.to_string()).ok()) {
        res.headers_mut().insert("x-next-cursor", next);
    }
    Ok(res)
}

/// One transaction, to its parties only; to anyone else it does not exist.
pub async fn get_one(State(s): State<AppState>, user: AuthUser, PathParam(raw): PathParam) -> ApiResult<Json<Value>> {
    let id: TransferId = parse_path_id(&raw, "id")?;
    let t = store::get(&s.pool, id.0)
        .await?
        .filter(|t| t.from_user_id == user.id().0 || t.to_user_id == user.id().0)
        .ok_or_else(|| ApiError::not_found("Transaction not found"))?;
    Ok(Json(t.to_json()))
}
