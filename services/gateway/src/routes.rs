//! The public route table. Only these paths reach a service; internal
//! endpoints are never routed, and everything else is a JSON 404.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use payflow_common::bearer::{bearer_token, AuthUser};
use payflow_common::error::ApiError;
use payflow_common::extract::{parse_path_id, PathParam};
use payflow_common::ids::{TransferId, UserId};
use payflow_common::jwt::TokenError;
use payflow_common::server::{with_common_layers, ServiceInfo};
use tower::ServiceExt;
use uuid::Uuid;

use crate::client_ip::limit_key;
use crate::proxy::{forward, ClientIp};
use crate::rate_limit::{Decision, Limit};
use crate::state::{AppState, Upstream};

pub fn router(state: AppState) -> Router {
    let info = ServiceInfo::new(
        crate::SERVICE_NAME,
        state.metrics.clone(),
        payflow_common::health::Readiness {
            redis: Some(state.redis.clone()),
            keys: Some(state.verifier.clone()),
            ..Default::default()
        },
    )
    .with_cors(state.cors.layer());

    // Anonymous calls that guess passwords or mint tokens get a tighter limit.
    let auth_public = Router::new()
        .route("/api/auth/register", post(to_auth))
        .route("/api/auth/login", post(to_auth))
        .route("/api/auth/refresh", post(to_auth))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth_limit));
    let keys = Router::new().route("/.well-known/jwks.json", get(to_auth));
    let protected = Router::new()
        .route("/api/auth/logout", post(to_auth))
        .route("/api/auth/me", get(to_auth))
        .route("/api/wallets", get(to_wallet))
        .route("/api/wallets/{user_id}", get(own_wallet))
        .route("/api/transactions", get(to_transaction).post(crate::payments::create))
        .route("/api/transactions/{id}", get(one_transaction))
        .route("/api/notifications/{user_id}", get(own_notifications))
        .route("/api/notifications/{id}/read", put(read_notification))
        .route("/api/metrics", get(crate::status::services))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_user));

    let api = auth_public
        .merge(keys)
        .merge(protected)
        .layer(middleware::from_fn_with_state(state.clone(), ip_limit))
        .with_state(state.clone());
    // Outside the route table, since routing happens before any of its layers run.
    let app = with_common_layers(api, &info).map_request(crate::legacy_paths::normalize);
    Router::new().fallback_service(app)
}

async fn to_auth(State(s): State<AppState>, req: Request) -> Response {
    forward(&s, &s.upstreams.auth, req).await
}

async fn to_wallet(State(s): State<AppState>, req: Request) -> Response {
    forward(&s, &s.upstreams.wallet, req).await
}

async fn to_transaction(State(s): State<AppState>, req: Request) -> Response {
    forward(&s, &s.upstreams.transaction, req).await
}

/// The path is forwarded as sent, and the upstream's HTTP client resolves dot
/// segments: `/api/transactions/..` (or `%2e%2e`) would reach the service as
/// `/api/`. So an `{id}` is checked here, with the services' own answer for a
/// malformed one (400 at `id`).
async fn one_transaction(State(s): State<AppState>, PathParam(raw): PathParam, req: Request) -> Response {
    match parse_path_id::<TransferId>(&raw, "id") {
        Ok(_) => forward(&s, &s.upstreams.transaction, req).await,
        Err(e) => e.into_response(),
    }
}

async fn read_notification(State(s): State<AppState>, PathParam(raw): PathParam, req: Request) -> Response {
    match parse_path_id::<Uuid>(&raw, "id") {
        Ok(_) => forward(&s, &s.upstreams.notification, req).await,
        Err(e) => e.into_response(),
    }
}

async fn own_notifications(
    State(s): State<AppState>,
    user: AuthUser,
    PathParam(raw): PathParam,
    req: Request,
) -> Response {
    forward_if_own(&s, &s.upstreams.notification, &user, &raw, req).await
}

/// Object-level check at the edge too: another user's wallet never leaves the gateway.
async fn own_wallet(State(s): State<AppState>, user: AuthUser, PathParam(raw): PathParam, req: Request) -> Response {
    forward_if_own(&s, &s.upstreams.wallet, &user, &raw, req).await
}

/// Forwards only when the `userId` path segment is the caller.
async fn forward_if_own(s: &AppState, upstream: &Upstream, user: &AuthUser, raw: &str, req: Request) -> Response {
    let owner: UserId = match parse_path_id(raw, "userId") {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = user.require_self(owner) {
        return e.into_response();
    }
    forward(s, upstream, req).await
}

fn too_many(state: &AppState, scope: &str, retry_after: u64) -> Response {
    state.gateway_metrics.rate_limited.with_label_values(&[scope]).inc();
    ApiError::too_many_requests("Too many requests", retry_after).into_response()
}

/// Takes a token; Redis trouble lets the request through (a limit is a
/// courtesy, not a guard of money) and is logged.
async fn take(state: &AppState, key: &str, limit: Limit, scope: &str) -> Option<Response> {
    match state.limiter.check(key, limit).await {
        Ok(Decision::Allowed) => None,
        Ok(Decision::Denied(secs)) => Some(too_many(state, scope, secs)),
        Err(e) => {
            tracing::warn!(error = %e, "rate limiter unavailable, allowing request");
            None
        }
    }
}

/// Per-address limit on every API route; also records the client address.
async fn ip_limit(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let ip = s.trusted_proxies.client_ip(peer, req.headers());
    req.extensions_mut().insert(ClientIp(ip));
    if let Some(denied) = take(&s, &format!("ip:{}", limit_key(ip)), s.limits.ip, "ip").await {
        return denied;
    }
    next.run(req).await
}

async fn auth_limit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let ip = req.extensions().get::<ClientIp>().map(|c| limit_key(c.0)).unwrap_or_default();
    if let Some(denied) = take(&s, &format!("auth:{ip}"), s.limits.auth, "auth").await {
        return denied;
    }
    next.run(req).await
}

/// Verifies the access token (pinned algorithm, iss, aud, exp, nbf), refuses
/// revoked ones, applies the per-user limit and hands the caller to handlers.
async fn require_user(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let token = match bearer_token(&parts) {
        Ok(t) => t.to_string(),
        Err(e) => return e.into_response(),
    };
    let claims = match s.verifier.verify(&token).await {
        Ok(c) => c,
        Err(TokenError::Invalid(reason)) => {
            tracing::debug!(%reason, "token refused");
            return ApiError::invalid_token().into_response();
        }
        Err(TokenError::KeysUnavailable(reason)) => {
            tracing::warn!(%reason, "signing keys unavailable");
            return ApiError::unavailable("Authentication temporarily unavailable").into_response();
        }
    };
    // Revocation is the only guard against a logged-out token, so fail closed.
    match s.revocations.is_revoked(&claims.jti).await {
        Ok(false) => {}
        Ok(true) => return ApiError::invalid_token().into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check token revocation");
            return ApiError::unavailable("Authentication temporarily unavailable").into_response();
        }
    }
    if let Some(denied) = take(&s, &format!("user:{}", claims.sub), s.limits.user, "user").await {
        return denied;
    }
    parts.extensions.insert(AuthUser(claims));
    next.run(Request::from_parts(parts, body)).await
}
