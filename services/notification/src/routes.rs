//! The public API: a user's notifications and marking one read.

use axum::extract::State;
use axum::routing::{get, put};
use axum::{Json, Router};
use payflow_common::bearer::AuthUser;
use payflow_common::error::{ApiError, ApiResult};
use payflow_common::extract::{parse_path_id, PathParam};
use payflow_common::health::Readiness;
use payflow_common::ids::UserId;
use payflow_common::server::{with_common_layers, ServiceInfo};
use serde_json::Value;
use uuid::Uuid;

use crate::state::AppState;
use crate::store::{self, MarkRead};

pub fn router(state: AppState) -> Router {
    let info = ServiceInfo::new(
        crate::SERVICE_NAME,
        state.metrics.clone(),
        // Not ready while RabbitMQ refuses the consumer's topology (a queue exists with other
        // arguments): the consumer cannot take a single event then.
        Readiness::postgres(state.pool.clone())
            .with_keys(state.verifier.clone())
            .with_state_check(payflow_messaging::declared::readiness_check(&state.prefix)),
    );
    let api = Router::new()
        .route("/api/notifications/{user_id}", get(list))
        .route("/api/notifications/{id}/read", put(mark_read))
        .with_state(state);
    with_common_layers(api, &info)
}

/// `GET /api/notifications/:userId`: the caller's own, newest first.
async fn list(State(state): State<AppState>, user: AuthUser, PathParam(raw): PathParam) -> ApiResult<Json<Value>> {
    let owner: UserId = parse_path_id(&raw, "userId")?;
    user.require_self(owner)?;
    let rows = store::list_for_user(&state.pool, owner, store::LIST_LIMIT).await?;
    Ok(Json(Value::Array(rows.iter().map(|n| n.to_json()).collect())))
}

/// `PUT /api/notifications/:id/read`: idempotent; answers the notification.
async fn mark_read(State(state): State<AppState>, user: AuthUser, PathParam(raw): PathParam) -> ApiResult<Json<Value>> {
    let id: Uuid = parse_path_id(&raw, "id")?;
    match store::mark_read(&state.pool, id, user.id()).await? {
        MarkRead::Done(n) => Ok(Json(n.to_json())),
        MarkRead::NotYours => Err(ApiError::forbidden()),
        MarkRead::NotFound => Err(ApiError::not_found("Notification not found")),
    }
}
