//! `POST /api/transactions`, `GET /api/transactions`, `GET /api/transactions/:id`.

mod create;
mod read;

use axum::routing::get;
use axum::Router;
use payflow_common::health::Readiness;
use payflow_common::server::{with_common_layers, ServiceInfo};

use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let info = ServiceInfo::new(
        crate::SERVICE_NAME,
        state.metrics.clone(),
        Readiness::postgres(state.pool.clone()).with_keys(state.verifier.clone()),
    );
    let api = Router::new()
        .route("/api/transactions", get(read::list).post(create::create))
        .route("/api/transactions/{id}", get(read::get_one))
        .with_state(state);
    with_common_layers(api, &info)
}
