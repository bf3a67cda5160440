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

/// A newly stored refresh token and the `jti`, `iat` and `exp` (Unix seconds)
/// its access token must carry.
#[derive(Debug)]
pub struct Issued {
    pub family_id: Uuid,
    pub refresh_token: RefreshToken,
    pub access_jti: Uuid,
    pub access_issued_at: i64,
    pub access_expires_at: i64,
}

/// Lifetimes of the two tokens of a pair, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    pub refresh: u64,
    pub access: u64,
}

/// Opens a new family (a login or a registration) with its first token.
pub async fn start_family(pool: &PgPool, user_id: UserId, ttls: Ttls) -> sqlx::Result<Issued> {
    let family_id = Uuid::now_v7();
    let mut tx = payflow_common::db::begin(pool).await?;
    sqlx::query("INSERT INTO auth.refresh_token_families (id, user_id) VALUES ($1, $2)")
        .bind(family_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let issued = insert_token(&mut tx, family_id, user_id, ttls).await?;
    tx.commit().await?;
    Ok(issued)
}

async fn insert_token(
    tx: &mut Transaction<'_, Postgres>,
    family_id: Uuid,
    user_id: UserId,
    ttls: Ttls,
) -> sqlx::Result<Issued> {
    let refresh_token = RefreshToken::generate();
    let access_jti = Uuid::new_v4();
    // The access token's times are fixed here, by this process's clock (which
    // signs them), so its revocation can later last exactly as long as it does.
    let access_issued_at = Utc::now().timestamp();
    let access_expires_at = access_issued_at.saturating_add(i64::try_from(ttls.access).unwrap_or(i64::MAX));
    sqlx::query(
        "INSERT INTO auth.refresh_tokens (token_hash, family_id, user_id, access_jti, expires_at, access_expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), to_timestamp($6))",
    )
    .bind(refresh_token.hash().as_bytes())
    .bind(family_id)
    .bind(user_id)
    .bind(access_jti)
    .bind(secs(ttls.refresh))
    .bind(access_expires_at as f64)
    .execute(&mut **tx)
    .await?;
    Ok(Issued { family_id, refresh_token, access_jti, access_issued_at, access_expires_at })
}

/// The result of presenting a refresh token.
#[derive(Debug)]
pub enum Rotation {
    /// The token was live; it is now used and `issued` replaces it.
    Rotated { user_id: UserId, email: Email, role: Role, issued: Issued },
    /// The token had already been rotated: its family is now revoked, and
    /// `live` are the family's access tokens that may still be in use.
    Reused { user_id: UserId, family_id: Uuid, live: Vec<RevokedAccessToken> },
    /// Unknown, expired, or of a revoked family.
    Invalid,
}

/// Rotates a refresh token. The token's row and its family's row are locked
/// first, so two uses of one token are serialised: the first rotates, the
/// second then sees a used token and revokes the family. Logout takes the
/// family lock too, so it cannot miss an access token issued concurrently.
pub async fn rotate(pool: &PgPool, hash: &RefreshTokenHash, ttls: Ttls) -> anyhow::Result<Rotation> {
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
        let live = list_family_access_tokens(&mut tx, row.family_id, ttls.access).await?;
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
    let issued = insert_token(&mut tx, row.family_id, row.user_id, ttls).await?;
    tx.commit().await?;
    Ok(Rotation::Rotated { user_id: row.user_id, email: Email::from_trusted(email), role, issued })
}

/// A revoked access token that may still be valid: on the revocation list
/// (`auth.revoked_access_tokens`, and Redis for the gateway) until it expires.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RevokedAccessToken {
    pub jti: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// Revokes a family (a no-op if it already is) and lists its access tokens
/// that may still be in use as revoked; returns them.
pub async fn revoke_family(
    pool: &PgPool,
    family_id: Uuid,
    reason: RevokeReason,
    access_ttl_secs: u64,
) -> sqlx::Result<Vec<RevokedAccessToken>> {
    let mut tx = payflow_common::db::begin(pool).await?;
    revoke_family_in(&mut tx, family_id, reason).await?;
    let live = list_family_access_tokens(&mut tx, family_id, access_ttl_secs).await?;
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

/// Puts the family's access tokens that have not expired on the revocation
/// list and returns them. A token issued before its expiry was stored (no
/// `access_expires_at`) is taken to live `access_ttl_secs` from its row.
async fn list_family_access_tokens(
    tx: &mut Transaction<'_, Postgres>,
    family_id: Uuid,
    access_ttl_secs: u64,
) -> sqlx::Result<Vec<RevokedAccessToken>> {
    sqlx::query_as(
        "WITH live AS (
             SELECT access_jti AS jti,
                    COALESCE(access_expires_at, created_at + make_interval(secs => $2)) AS expires_at
             FROM auth.refresh_tokens WHERE family_id = $1),
         listed AS (
             INSERT INTO auth.revoked_access_tokens (jti, expires_at)
             SELECT jti, expires_at FROM live WHERE expires_at > now() - interval '1 minute'
             ON CONFLICT (jti) DO NOTHING)
         SELECT jti, expires_at FROM live WHERE expires_at > now() - interval '1 minute'",
    )
    .bind(family_id)
    // A margin for clock differences between Postgres and the process that signed.
    .bind(secs(access_ttl_secs + 60))
    .fetch_all(&mut **tx)
    .await
}

/// Lists one access token as revoked until `expires_at` (its `exp`).
pub async fn list_revoked(pool: &PgPool, jti: Uuid, expires_at: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO auth.revoked_access_tokens (jti, expires_at) VALUES ($1, to_timestamp($2))
         ON CONFLICT (jti) DO UPDATE SET expires_at = GREATEST(revoked_access_tokens.expires_at, EXCLUDED.expires_at)",
    )
    .bind(jti)
    .bind(expires_at as f64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every revoked access token that may still be valid (there are few: the
/// logouts and reuses of the last access-token lifetime).
pub async fn unexpired_revocations(pool: &PgPool) -> sqlx::Result<Vec<RevokedAccessToken>> {
    sqlx::query_as(
        "SELECT jti, expires_at FROM auth.revoked_access_tokens WHERE expires_at > now() - interval '1 minute'",
    )
    .fetch_all(pool)
    .await
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

/// Drops sessions whose every token expired more than a day ago, the
/// rotated tokens of live sessions once they have expired (an expired token
/// is refused anyway, so keeping it adds no reuse detection, and its access
/// token is long dead), and revocations of access tokens expired an hour
/// ago. Returns how many rows went.
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
    let revoked = sqlx::query("DELETE FROM auth.revoked_access_tokens WHERE expires_at < now() - interval '1 hour'")
        .execute(pool)
        .await?;
    Ok(families.rows_affected() + tokens.rows_affected() + revoked.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserName;
    use crate::store::users;

    async fn pool_with_user() -> (PgPool, UserId) {
        let pool = PgPool::connect(&crate::test_support::database_url()).await.expect("connect");
        crate::migrate(&pool).await.expect("migrate");
        let user = UserId::new();
        let email = Email::parse(&crate::test_support::fresh_email()).expect("email");
        users::insert(&pool, user, &email, &UserName::from_trusted("Test User".into()), "not-a-real-hash")
            .await
            .expect("user");
        (pool, user)
    }

    /// A revocation lasts until the token's own `exp`, even after the
    /// access-token TTL setting was lowered (it used to be computed from the
    /// setting at revocation time, so older tokens dropped off the list early).
    #[tokio::test]
    async fn a_revocation_lasts_until_the_tokens_own_expiry() {
        let (pool, user) = pool_with_user().await;
        let issued = start_family(&pool, user, Ttls { refresh: 3_600, access: 900 }).await.expect("family");
        assert_eq!(issued.access_expires_at - issued.access_issued_at, 900);

        // The setting is 60 s by the time of the logout.
        let revoked = revoke_family(&pool, issued.family_id, RevokeReason::Logout, 60).await.expect("revoke");
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].jti, issued.access_jti);
        assert_eq!(revoked[0].expires_at.timestamp(), issued.access_expires_at);

        // Durable: listed until it expires, for the sync to push to Redis again.
        let listed = unexpired_revocations(&pool).await.expect("list");
        assert!(listed.contains(&revoked[0]), "{listed:?}");
        assert!(!access_token_active(&pool, issued.access_jti, user).await.expect("check"));
    }
}
