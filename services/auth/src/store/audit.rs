//! The security audit trail (`auth.audit_log`).

use payflow_common::ids::UserId;
use sqlx::PgPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditEvent {
    Register,
    LoginSuccess,
    LoginFailure,
    LoginLockout,
    Refresh,
    RefreshReuse,
    Logout,
}

impl AuditEvent {
    /// The stored name; the table's CHECK constraint lists the same set.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::Register => "register",
            AuditEvent::LoginSuccess => "login_success",
            AuditEvent::LoginFailure => "login_failure",
            AuditEvent::LoginLockout => "login_lockout",
            AuditEvent::Refresh => "refresh",
            AuditEvent::RefreshReuse => "refresh_reuse",
            AuditEvent::Logout => "logout",
        }
    }
}

/// Writes one event. A failure is logged and swallowed: the request it
/// describes has already taken effect, and refusing it now would not undo it.
pub async fn record(
    pool: &PgPool,
    event: AuditEvent,
    user_id: Option<UserId>,
    ip: Option<&str>,
    detail: serde_json::Value,
) {
    let res =
        sqlx::query("INSERT INTO auth.audit_log (user_id, event, ip, detail) VALUES ($1, $2, $3, $4::text::jsonb)")
            .bind(user_id)
            .bind(event.as_str())
            .bind(ip)
            .bind(detail.to_string())
            .execute(pool)
            .await;
    if let Err(e) = res {
        tracing::error!(error = %e, event = event.as_str(), "audit log write failed");
    }
}
