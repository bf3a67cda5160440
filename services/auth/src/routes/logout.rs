//! POST /api/auth/logout (Bearer), optional body `{"refreshToken"}`.
//!
//! Ends the caller's session: the access token's `jti` goes on the
//! revocation list, and the refresh-token family is revoked. Which family:
//! the one that issued the presented access token (every access token is
//! issued with a refresh token, so this is "this device"), plus the family
//! of `refreshToken` when it is given and belongs to the caller. Other
//! sessions of the user (other devices) stay open; a refresh token of
//! another user is ignored, not revoked. Access tokens issued earlier in a
//! revoked family are listed as revoked too.
//!
//! The database is written first: it is the durable record (auth checks the
//! session on every Bearer request, and `auth.revoked_access_tokens` holds the
//! revoked tokens until they expire). Redis, which the gateway reads, comes
//! second. A Redis failure is logged, not answered as an error: the client is
//! logged out, and `revocation_sync` puts the tokens in Redis within seconds.

use axum::extract::State;
use axum::Json;
use payflow_common::error::{ApiError, ApiResult, FieldError};
use serde_json::{json, Map, Value};

use super::{push_revocations, revocation_ttl};
use crate::extract::{AuthUser, ClientIp, OptionalJson};
use crate::state::AppState;
use crate::store::audit::{self, AuditEvent};
use crate::store::sessions::{self, RevokeReason};
use crate::tokens;

pub async fn logout(
    State(state): State<AppState>,
    caller: AuthUser,
    ip: ClientIp,
    OptionalJson(body): OptionalJson<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    let presented = match body.as_ref().and_then(|b| b.get("refreshToken")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(ApiError::validation(vec![FieldError::new("refreshToken", "must be a string")]));
        }
    };

    let mut families = Vec::new();
    if let Some(f) = sessions::family_of_access_token(&state.pool, caller.jti, caller.user_id).await? {
        families.push(f);
    }
    let mut refresh_token_ignored = false;
    if let Some(token) = presented {
        let family = match tokens::hash_presented(token) {
            Some(hash) => sessions::family_of_refresh_token(&state.pool, &hash, caller.user_id).await?,
            None => None,
        };
        match family {
            Some(f) if !families.contains(&f) => families.push(f),
            Some(_) => {}
            None => refresh_token_ignored = true,
        }
    }

    sessions::list_revoked(&state.pool, caller.jti, caller.exp).await?;
    let mut live = Vec::new();
    for family in &families {
        live.extend(
            sessions::revoke_family(&state.pool, *family, RevokeReason::Logout, state.config.access_token_ttl_secs)
                .await?,
        );
    }

    let own_ttl = revocation_ttl(caller.exp, chrono::Utc::now().timestamp()).unwrap_or(1);
    let listed = async {
        state.revocations.revoke(&caller.jti.to_string(), own_ttl).await?;
        push_revocations(&state, &live).await
    }
    .await;
    if let Err(e) = listed {
        tracing::error!(
            error = %e,
            user_id = %caller.user_id,
            "logout: could not list revoked access tokens in Redis; the revocation sync will retry"
        );
    }

    audit::record(
        &state.pool,
        AuditEvent::Logout,
        Some(caller.user_id),
        ip.as_deref(),
        json!({"familiesRevoked": families.len(), "refreshTokenIgnored": refresh_token_ignored}),
    )
    .await;
    Ok(Json(json!({"message": "Logout successful"})))
}
