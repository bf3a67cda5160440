//! Sessions: refresh-token families (`auth.refresh_token_families`) and
//! their tokens (`auth.refresh_tokens`). Every refresh token is issued
//! together with one access token, whose `jti` is stored next to it.

use chrono::{DateTime, Utc};
use payflow_common::ids::UserId;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::secs;
use crate::domain::{Email, Role};
use crate::tokens::{RefreshToken, RefreshTokenHash};

/// Why a family was revoked (the `revoked_reason` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    Logout,
    Reuse,
}

impl RevokeReason {
    fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Logout => "logout",
            RevokeReason::Reuse => "reuse",
        }
    }
}

/// A newly stored refresh token and the `jti` its access token must carry.
#[derive(Debug)]
pub struct Issued {
    pub family_id: Uuid,
    pub refresh_token: RefreshToken,
    pub access_jti: Uuid,
}

/// Opens a new family (a login or a registration) with its first token.
pub async fn start_family(pool: &PgPool, user_id: UserId, refresh_ttl_secs: u64) -> sqlx::Result<Issued> {
    let family_id = Uuid::now_v7();
    let mut tx = payflow_common::db::begin(pool).await?;
    sqlx::query("INSERT INTO auth.refresh_token_families (id, user_id) VALUES ($1, $2)")
        .bind(family_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let issued = insert_token(&mut tx, family_id, user_id, refresh_ttl_secs).await?;
    tx.commit().await?;
    Ok(issued)
}

async fn insert_token(
    tx: &mut Transaction<'_, Postgres>,
    family_id: Uuid,
    user_id: UserId,
    refresh_ttl_secs: u64,
) -> sqlx::Result<Issued> {
    let refresh_token = RefreshToken::generate();
    let access_jti = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO auth.refresh_tokens (token_hash, family_id, user_id, access_jti, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
    )
    .bind(refresh_token.hash().as_bytes())
    .bind(family_id)
    .bind(user_id)
    .bind(access_jti)
    .bind(secs(refresh_ttl_secs))
    .execute(&mut **tx)
    .await?;
    Ok(Issued { family_id, refresh_token, access_jti })
}

/// The result of presenting a refresh token.
#[derive(Debug)]
pub enum Rotation {
    /// The token was live; it is now used and `issued` replaces it.
    Rotated { user_id: UserId, email: Email, role: Role, issued: Issued },
    /// The token had already been rotated: its family is now revoked, and
    /// `live` are the family's access tokens that may still be in use.
    Reused { user_id: UserId, family_id: Uuid, live: Vec<LiveAccessToken> },
    /// Unknown, expired, or of a revoked family.
    Invalid,
}

/// Rotates a refresh token. The token's row and its family's row are locked
/// first, so two uses of one token are serialised: the first rotates, the
/// second then sees a used token and revokes the family. Logout takes the
/// family lock too, so it cannot miss an access token issued concurrently.
pub async fn rotate(
    pool: &PgPool,
    hash: &RefreshTokenHash,
    refresh_ttl_secs: u64,
    access_ttl_secs: u64,
) -> anyhow::Result<Rotation> {
    #[derive(sqlx::FromRow)]
    struct Row {
        family_id: Uuid,
        user_id: UserId,
        used: bool,
        expired: bool,
        revoked: bool,
    }
    let mut tx = payflow_common::db::begin(pool).await?;
    let row: Option<Row> = sqlx::query_as(
        "SELECT rt.family_id, rt.user_id, rt.used_at IS NOT NULL AS used,
                rt.expires_at <= now() AS expired, f.revoked_at IS NOT NULL AS revoked
         FROM auth.refresh_tokens rt
         JOIN auth.refresh_token_families f ON f.id = rt.family_id
         WHERE rt.token_hash = $1
         FOR UPDATE OF rt, f",
    )
    .bind(hash.as_bytes())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(Rotation::Invalid);
    };
    if row.revoked || row.expired {
        return Ok(Rotation::Invalid);
    }
    if row.used {
        revoke_family_in(&mut tx, row.family_id, RevokeReason::Reuse).await?;
        let live = recent_access_tokens(&mut tx, row.family_id, access_ttl_secs).await?;
        tx.commit().await?;
        return Ok(Rotation::Reused { user_id: row.user_id, family_id: row.family_id, live });
    }
    // Guarded even under the lock: a used token must never rotate twice.
    let updated =
        sqlx::query("UPDATE auth.refresh_tokens SET used_at = now() WHERE token_hash = $1 AND used_at IS NULL")
            .bind(hash.as_bytes())
            .execute(&mut *tx)
            .await?;
    if updated.rows_affected() != 1 {
        return Ok(Rotation::Invalid);
    }
    let (email, role): (String, String) = sqlx::query_as("SELECT email, role FROM auth.users WHERE id = $1")
        .bind(row.user_id)
        .fetch_one(&mut *tx)
        .await?;
    let role = Role::parse(&role).ok_or_else(|| anyhow::anyhow!("user {} has unknown role {role:?}", row.user_id))?;
    let issued = insert_token(&mut tx, row.family_id, row.user_id, refresh_ttl_secs).await?;
    tx.commit().await?;
    Ok(Rotation::Rotated { user_id: row.user_id, email: Email::from_trusted(email), role, issued })
}

/// An access token that may still be valid, to be put on the revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveAccessToken {
    pub jti: Uuid,
    pub issued_at: DateTime<Utc>,
}

/// Revokes a family (a no-op if it already is) and returns the access tokens
/// issued in it within `access_ttl_secs`, which may still be in use.
pub async fn revoke_family(
    pool: &PgPool,
    family_id: Uuid,
    reason: RevokeReason,
    access_ttl_secs: u64,
) -> sqlx::Result<Vec<LiveAccessToken>> {
    let mut tx = payflow_common::db::begin(pool).await?;
    revoke_family_in(&mut tx, family_id, reason).await?;
    let live = recent_access_tokens(&mut tx, family_id, access_ttl_secs).await?;
    tx.commit().await?;
    Ok(live)
}

async fn revoke_family_in(
    tx: &mut Transaction<'_, Postgres>,
    family_id: Uuid,
    reason: RevokeReason,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE auth.refresh_token_families SET revoked_at = now(), revoked_reason = $2
         WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(family_id)
    .bind(reason.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn recent_access_tokens(
    tx: &mut Transaction<'_, Postgres>,
    family_id: Uuid,
    access_ttl_secs: u64,
) -> sqlx::Result<Vec<LiveAccessToken>> {
    let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT access_jti, created_at FROM auth.refresh_tokens
         WHERE family_id = $1 AND created_at > now() - make_interval(secs => $2)",
    )
    .bind(family_id)
    // A margin for clock differences between Postgres and this process.
    .bind(secs(access_ttl_secs + 60))
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(jti, issued_at)| LiveAccessToken { jti, issued_at }).collect())
}

/// The family that issued an access token, if it is the user's.
pub async fn family_of_access_token(pool: &PgPool, jti: Uuid, user_id: UserId) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("SELECT family_id FROM auth.refresh_tokens WHERE access_jti = $1 AND user_id = $2")
        .bind(jti)
        .bind(user_id)
        .fetch_optional(pool)
        .await
}

/// The family of a refresh token, if it is the user's.
pub async fn family_of_refresh_token(
    pool: &PgPool,
    hash: &RefreshTokenHash,
    user_id: UserId,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("SELECT family_id FROM auth.refresh_tokens WHERE token_hash = $1 AND user_id = $2")
        .bind(hash.as_bytes())
        .bind(user_id)
        .fetch_optional(pool)
        .await
}

/// Whether the session that issued this access token is still open. The
/// durable twin of the Redis revocation list: it holds even if Redis lost
/// its data, and it also ends access tokens of a family revoked for reuse.
pub async fn access_token_active(pool: &PgPool, jti: Uuid, user_id: UserId) -> sqlx::Result<bool> {
    let active: Option<bool> = sqlx::query_scalar(
        "SELECT f.revoked_at IS NULL
         FROM auth.refresh_tokens rt
         JOIN auth.refresh_token_families f ON f.id = rt.family_id
         WHERE rt.access_jti = $1 AND rt.user_id = $2",
    )
    .bind(jti)
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    Ok(active.unwrap_or(false))
}

/// Drops sessions whose every token expired more than a day ago, and the
/// rotated tokens of live sessions once they have expired (an expired token
/// is refused anyway, so keeping it adds no reuse detection, and its access
/// token is long dead). Returns how many rows went.
pub async fn purge_expired(pool: &PgPool) -> sqlx::Result<u64> {
    let families = sqlx::query(
        "DELETE FROM auth.refresh_token_families f
         WHERE f.created_at < now() - interval '1 day'
           AND NOT EXISTS (
               SELECT 1 FROM auth.refresh_tokens rt
               WHERE rt.family_id = f.id AND rt.expires_at > now() - interval '1 day')",
    )
    .execute(pool)
    .await?;
    let tokens = sqlx::query(
        "DELETE FROM auth.refresh_tokens
         WHERE used_at IS NOT NULL AND expires_at < now() - interval '1 day'",
    )
    .execute(pool)
    .await?;
    Ok(families.rows_affected() + tokens.rows_affected())
}
