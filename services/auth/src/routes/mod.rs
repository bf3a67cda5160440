//! The HTTP routes of auth and what they share: the user's JSON shape,
//! issuing a token pair, and pushing revoked access tokens to Redis.

use axum::routing::{get, post};
use axum::Router;
use payflow_common::error::ApiError;
use payflow_common::health::Readiness;
use payflow_common::ids::UserId;
use payflow_common::server::{with_common_layers, ServiceInfo};
use serde::Serialize;

use crate::domain::{Email, Role, UserName};
use crate::state::{AppState, SERVICE_NAME};
use crate::store::sessions::{self, Issued, RevokedAccessToken, Ttls};
use crate::tokens;

mod jwks;
mod login;
mod logout;
mod me;
mod refresh;
mod register;

/// Seconds of clock skew verifiers accept past `exp` (payflow_common::jwt
/// allows 5); a revocation entry must outlive the token by at least that.
const VERIFY_LEEWAY_SECS: i64 = 5;

/// All auth routes with the common layers (health, metrics, errors, ids).
pub fn router(state: AppState) -> Router {
    let readiness =
        Readiness { db: Some(state.pool.clone()), redis: Some(state.redis.clone()), ..Readiness::default() };
    // One registry for the HTTP metrics and the auth counters.
    let info = ServiceInfo::new(SERVICE_NAME, state.metrics.clone(), readiness);
    let routes = Router::new()
        .route("/api/auth/register", post(register::register))
        .route("/api/auth/login", post(login::login))
        .route("/api/auth/refresh", post(refresh::refresh))
        .route("/api/auth/logout", post(logout::logout))
        .route("/api/auth/me", get(me::me))
        .route("/.well-known/jwks.json", get(jwks::jwks))
        .route("/api/auth/jwks.json", get(jwks::jwks))
        .with_state(state);
    with_common_layers(routes, &info)
}

/// `"user"` in register and login answers.
#[derive(Serialize)]
pub(crate) struct UserView {
    id: UserId,
    email: String,
    name: String,
    role: &'static str,
}

impl UserView {
    pub(crate) fn new(id: UserId, email: &Email, name: &UserName, role: Role) -> Self {
        Self { id, email: email.as_str().to_string(), name: name.as_str().to_string(), role: role.as_str() }
    }
}

pub(crate) struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
}

/// Opens a new session (refresh-token family) and signs its first access token.
pub(crate) async fn open_session(
    state: &AppState,
    user_id: UserId,
    email: &Email,
    role: Role,
) -> Result<TokenPair, ApiError> {
    let issued = sessions::start_family(&state.pool, user_id, ttls(state)).await?;
    sign_pair(state, user_id, email, role, issued)
}

/// The token lifetimes configured now.
pub(crate) fn ttls(state: &AppState) -> Ttls {
    Ttls { refresh: state.config.refresh_token_ttl_secs, access: state.config.access_token_ttl_secs }
}

/// Signs the access token that goes with a freshly stored refresh token.
pub(crate) fn sign_pair(
    state: &AppState,
    user_id: UserId,
    email: &Email,
    role: Role,
    issued: Issued,
) -> Result<TokenPair, ApiError> {
    let claims = tokens::access_claims(
        user_id,
        email,
        role,
        issued.access_jti,
        &state.config.claims,
        issued.access_issued_at,
        issued.access_expires_at,
    );
    let access_token = state.signer.sign(&claims).map_err(ApiError::internal)?;
    Ok(TokenPair { access_token, refresh_token: issued.refresh_token.into_string() })
}

/// Puts access tokens on the shared revocation list (which the gateway reads)
/// until they expire: each for its own remaining lifetime (its `exp`, not the
/// TTL configured now, which may have been lowered since it was issued).
/// Failures here are made good by `revocation_sync`, which pushes every
/// revoked token again every few seconds.
pub(crate) async fn push_revocations(state: &AppState, revoked: &[RevokedAccessToken]) -> redis::RedisResult<()> {
    let now = chrono::Utc::now().timestamp();
    let entries: Vec<(String, u64)> = revoked
        .iter()
        .filter_map(|t| revocation_ttl(t.expires_at.timestamp(), now).map(|secs| (t.jti.to_string(), secs)))
        .collect();
    state.revocations.revoke_many(&entries).await
}

/// How long a revocation entry must live for a token expiring at `exp`
/// (verifiers accept it until `exp` plus their leeway), or `None` when it is
/// past that already.
pub(crate) fn revocation_ttl(exp: i64, now: i64) -> Option<u64> {
    u64::try_from(exp.saturating_sub(now).saturating_add(VERIFY_LEEWAY_SECS)).ok().filter(|s| *s > 0)
}

/// A store error as an answer: database errors keep their mapping (pool
/// exhaustion is a 503), anything else is a logged 500.
pub(crate) fn store_error(e: anyhow::Error) -> ApiError {
    match e.downcast::<sqlx::Error>() {
        Ok(db) => db.into(),
        Err(e) => ApiError::internal(format!("{e:#}")),
    }
}
