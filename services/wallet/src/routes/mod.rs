//! HTTP routes: the public wallet API (bearer tokens) and the internal API
//! (service credential), which the gateway never routes.

mod internal;
mod public;
mod views;

use axum::routing::{get, post};
use axum::{middleware, Router};
use payflow_common::health::Readiness;
use payflow_common::server::{with_common_layers, ServiceInfo};
use payflow_common::service_token;

use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let info = ServiceInfo::new(
        crate::SERVICE_NAME,
        state.metrics.clone(),
        Readiness::postgres(state.pool.clone()).with_keys(state.verifier.clone()),
    );
    let internal = Router::new()
        .route("/internal/wallets", post(internal::create_wallet))
        .route("/internal/wallets/{user_id}", get(internal::get_wallet))
        .route("/internal/transfers", post(internal::create_transfer))
        .route("/internal/transfers/{id}", get(internal::get_transfer))
        .route("/internal/transfers/hold-batch", post(internal::hold_batch))
        .route("/internal/transfers/post-batch", post(internal::post_batch))
        .route("/internal/transfers/{id}/post", post(internal::post_transfer))
        .route("/internal/transfers/{id}/void", post(internal::void_transfer))
        .route_layer(middleware::from_fn_with_state(state.service_token.clone(), service_token::require));
    let public = Router::new()
        .route("/api/wallets", get(public::directory))
        .route("/api/wallets/{user_id}", get(public::get_wallet));
    with_common_layers(public.merge(internal).with_state(state), &info)
}
