//! GET /.well-known/jwks.json (and /api/auth/jwks.json): the public signing keys.

use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::response::IntoResponse;
use axum::Json;

use crate::state::AppState;

pub async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    // Short caching: verifiers refetch on an unknown kid anyway, so a rotation
    // is picked up without waiting for the cache to expire.
    ([(CACHE_CONTROL, "public, max-age=300")], Json(state.signer.jwks()))
}
