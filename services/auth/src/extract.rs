//! Extractors for the auth routes: the authenticated caller, the client's
//! address for the audit log, the correlation id, and an optional JSON body.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use payflow_common::correlation::CorrelationId;
use payflow_common::error::ApiError;
use payflow_common::extract::{parse_json, read_body, PeerAddr};
use payflow_common::ids::UserId;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::state::AppState;
use crate::store::sessions;

/// The caller of a Bearer-protected route: a valid access token whose `jti`
/// is neither on the revocation list nor of a closed session.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: UserId,
    pub jti: Uuid,
    /// Expiry of the token (Unix seconds), for revoking it just long enough.
    pub exp: i64,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).ok_or_else(ApiError::authentication_required)?;
        let claims = state.verifier.verify(token).await.map_err(|e| {
            tracing::debug!(error = %e, "access token refused");
            ApiError::invalid_token()
        })?;
        // Every access token auth issues has a UUID jti; anything else is not ours.
        let jti = Uuid::parse_str(&claims.jti).map_err(|_| ApiError::invalid_token())?;
        match state.revocations.is_revoked(&claims.jti).await {
            Ok(true) => return Err(ApiError::invalid_token()),
            Ok(false) => {}
            // The database check below still holds, so Redis trouble does not lock everyone out.
            Err(e) => {
                tracing::warn!(error = %e, "revocation list unavailable, relying on the session check")
            }
        }
        if !sessions::access_token_active(&state.pool, jti, claims.sub).await? {
            return Err(ApiError::invalid_token());
        }
        Ok(Self { user_id: claims.sub, jti, exp: claims.exp })
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme
/// case-insensitive), or `None` when the header is missing or malformed.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' ')).then_some(token)
}

/// The client's address for the audit log: the first `X-Forwarded-For`
/// entry (the gateway forwards it) when it is an IP address, else the peer.
/// Only recorded, never used for a decision, so a spoofed value costs nothing.
#[derive(Debug, Clone)]
pub struct ClientIp(pub Option<String>);

impl ClientIp {
    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let PeerAddr(peer) = PeerAddr::from_request_parts(parts, state).await?;
        Ok(ClientIp(client_ip(&parts.headers, peer).map(|ip| ip.to_string())))
    }
}

fn client_ip(headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
    let forwarded = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .and_then(|first| first.parse::<IpAddr>().ok().or_else(|| first.parse::<SocketAddr>().ok().map(|s| s.ip())));
    forwarded.or(peer.map(|p| p.ip()))
}

/// The request's correlation id (set by the common middleware), for calls to wallet.
#[derive(Debug, Clone)]
pub struct Correlation(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Correlation {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let id = parts
            .extensions
            .get::<CorrelationId>()
            .cloned()
            .unwrap_or_else(|| CorrelationId::from_header(parts.headers.get(&payflow_common::correlation::HEADER)));
        Ok(Correlation(id.0))
    }
}

/// A JSON body that may be absent: an empty (or all-whitespace) body gives
/// `None`; anything else must be valid JSON of `T`, within the 10 KB limit.
pub struct OptionalJson<T>(pub Option<T>);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let body = read_body(req).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        parse_json(&body).map(|v| OptionalJson(Some(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_token_parsing() {
        assert_eq!(bearer_token(&headers(&[("authorization", "Bearer abc.def")])), Some("abc.def"));
        assert_eq!(bearer_token(&headers(&[("authorization", "bearer  abc")])), Some("abc"));
        assert_eq!(bearer_token(&headers(&[])), None);
        assert_eq!(bearer_token(&headers(&[("authorization", "Bearer")])), None);
        assert_eq!(bearer_token(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(bearer_token(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer_token(&headers(&[("authorization", "Bearer a b")])), None);
        assert_eq!(bearer_token(&headers(&[("authorization", "abc")])), None);
    }

    #[test]
    fn client_ip_prefers_the_first_forwarded_entry() {
        let peer: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.7, 10.0.0.2")]);
        assert_eq!(client_ip(&h, Some(peer)), Some("203.0.113.7".parse().unwrap()));
        let h = headers(&[("x-forwarded-for", "2001:db8::1")]);
        assert_eq!(client_ip(&h, Some(peer)), Some("2001:db8::1".parse().unwrap()));
        let h = headers(&[("x-forwarded-for", "203.0.113.7:443")]);
        assert_eq!(client_ip(&h, None), Some("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn client_ip_falls_back_to_the_peer() {
        let peer: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        assert_eq!(client_ip(&headers(&[]), Some(peer)), Some(peer.ip()));
        let junk = headers(&[("x-forwarded-for", "<script>, 1.2.3.4")]);
        assert_eq!(client_ip(&junk, Some(peer)), Some(peer.ip()));
        assert_eq!(client_ip(&headers(&[]), None), None);
    }
}
