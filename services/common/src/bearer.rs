//! The `Authorization: Bearer <access token>` extractor for public routes.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::ids::UserId;
use crate::jwt::{AccessClaims, JwtVerifier, TokenError};

/// A caller whose access token verified. Refresh tokens are opaque, never JWTs,
/// so one presented here fails verification like any other garbage.
#[derive(Debug, Clone)]
pub struct AuthUser(pub AccessClaims);

impl AuthUser {
    pub fn id(&self) -> UserId {
        self.0.sub
    }

    /// Object-level authorization: the caller may only touch their own resources.
    pub fn require_self(&self, owner: UserId) -> Result<(), ApiError> {
        if self.0.sub == owner {
            Ok(())
        } else {
            Err(ApiError::forbidden())
        }
    }
}

/// The token text of an `Authorization: Bearer` header, if well-formed.
pub fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(AUTHORIZATION).ok_or_else(ApiError::authentication_required)?;
    let value = value.to_str().map_err(|_| ApiError::authentication_required())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(ApiError::authentication_required)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::authentication_required());
    }
    Ok(token.trim())
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    JwtVerifier: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(user.clone());
        }
        let token = bearer_token(parts)?;
        let verifier = JwtVerifier::from_ref(state);
        match verifier.verify(token).await {
            Ok(claims) => Ok(AuthUser(claims)),
            Err(TokenError::Invalid(reason)) => {
                tracing::debug!(%reason, "token refused");
                Err(ApiError::invalid_token())
            }
            Err(TokenError::KeysUnavailable(reason)) => {
                tracing::warn!(%reason, "cannot verify tokens: signing keys unavailable");
                Err(ApiError::unavailable("Authentication temporarily unavailable"))
            }
        }
    }
}
