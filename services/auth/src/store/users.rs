//! `auth.users`.

use chrono::{DateTime, Utc};
use payflow_common::ids::UserId;
use sqlx::PgPool;

use crate::domain::{Email, Role, UserName};

/// A user as the API shows it (never with the password hash).
#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub name: UserName,
    pub role: Role,
    pub wallet_created: bool,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: UserId,
    email: String,
    name: String,
    role: String,
    wallet_created: bool,
    created_at: DateTime<Utc>,
    last_login_at: Option<DateTime<Utc>>,
}

impl TryFrom<UserRow> for User {
    type Error = anyhow::Error;

    fn try_from(r: UserRow) -> anyhow::Result<Self> {
        let role =
            Role::parse(&r.role).ok_or_else(|| anyhow::anyhow!("user {} has unknown role {:?}", r.id, r.role))?;
        Ok(Self {
            id: r.id,
            email: Email::from_trusted(r.email),
            name: UserName::from_trusted(r.name),
            role,
            wallet_created: r.wallet_created,
            created_at: r.created_at,
            last_login_at: r.last_login_at,
        })
    }
}

const COLUMNS: &str = "id, email, name, role, wallet_created, created_at, last_login_at";

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("email already registered")]
    EmailTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A cheap early answer for an obvious duplicate, before spending a password
/// hash on it. The unique constraint still decides (see [`insert`]).
pub async fn email_taken(pool: &PgPool, email: &Email) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM auth.users WHERE email = $1)")
        .bind(email.as_str())
        .fetch_one(pool)
        .await
}

pub async fn insert(
    pool: &PgPool,
    id: UserId,
    email: &Email,
    name: &UserName,
    password_hash: &str,
) -> Result<DateTime<Utc>, InsertError> {
    let res = sqlx::query_scalar(
        "INSERT INTO auth.users (id, email, name, password_hash) VALUES ($1, $2, $3, $4) RETURNING created_at",
    )
    .bind(id)
    .bind(email.as_str())
    .bind(name.as_str())
    .bind(password_hash)
    .fetch_one(pool)
    .await;
    match res {
        Ok(created_at) => Ok(created_at),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() && e.constraint() == Some("users_email_key") => {
            Err(InsertError::EmailTaken)
        }
        Err(e) => Err(e.into()),
    }
}

/// The user with this (normalised) email and their password hash.
pub async fn find_for_login(pool: &PgPool, email: &str) -> anyhow::Result<Option<(User, String)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        user: UserRow,
        password_hash: String,
    }
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS}, password_hash FROM auth.users WHERE email = $1"))
        .bind(email)
        .fetch_optional(pool)
        .await?;
    row.map(|r| Ok((r.user.try_into()?, r.password_hash))).transpose()
}

pub async fn find(pool: &PgPool, id: UserId) -> anyhow::Result<Option<User>> {
    let row: Option<UserRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM auth.users WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.map(User::try_from).transpose()
}

pub async fn mark_wallet_created(pool: &PgPool, id: UserId) -> sqlx::Result<()> {
    sqlx::query("UPDATE auth.users SET wallet_created = true WHERE id = $1 AND NOT wallet_created")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Compensation for a registration whose wallet could not be created. Only a
/// user still without a wallet is removed: if a concurrent login created the
/// wallet meanwhile, the account is complete and stays. True when deleted.
pub async fn delete_without_wallet(pool: &PgPool, id: UserId) -> sqlx::Result<bool> {
    let res = sqlx::query("DELETE FROM auth.users WHERE id = $1 AND NOT wallet_created").bind(id).execute(pool).await?;
    Ok(res.rows_affected() == 1)
}

/// Stamps a successful login and returns its time.
pub async fn record_login(pool: &PgPool, id: UserId) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar("UPDATE auth.users SET last_login_at = now() WHERE id = $1 RETURNING last_login_at")
        .bind(id)
        .fetch_one(pool)
        .await
}
