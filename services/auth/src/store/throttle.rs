//! Login throttling per normalised email (`auth.login_throttle`), for known
//! and unknown emails alike, so a lock reveals nothing about accounts.
//!
//! Every attempt is counted when it starts, in one atomic upsert, not after
//! the password check: otherwise a burst of concurrent guesses would all pass
//! the check before the first failure was recorded. A success deletes the
//! row; a failure leaves its count and locks the email once `max` is reached.

use sqlx::PgPool;

use super::secs;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Allowed,
    /// Locked, or the window's budget is taken by attempts still in flight.
    Refused {
        retry_after_secs: u64,
    },
}

/// Counts one attempt. The count restarts once the window has passed and no
/// lock is in force.
pub async fn begin_attempt(pool: &PgPool, email: &str, max_failures: u32, window_secs: u64) -> sqlx::Result<Attempt> {
    let (failures, locked_for, window_left): (i32, Option<i64>, i64) = sqlx::query_as(
        "INSERT INTO auth.login_throttle AS t (email, failures, window_started_at)
         VALUES ($1, 1, now())
         ON CONFLICT (email) DO UPDATE SET
             failures = CASE WHEN t.window_started_at <= now() - make_interval(secs => $2)
                              AND (t.locked_until IS NULL OR t.locked_until <= now())
                             THEN 1 ELSE t.failures + 1 END,
             window_started_at = CASE WHEN t.window_started_at <= now() - make_interval(secs => $2)
                                       AND (t.locked_until IS NULL OR t.locked_until <= now())
                                      THEN now() ELSE t.window_started_at END,
             locked_until = CASE WHEN t.window_started_at <= now() - make_interval(secs => $2)
                                  AND (t.locked_until IS NULL OR t.locked_until <= now())
                                 THEN NULL ELSE t.locked_until END
         RETURNING failures,
             CASE WHEN locked_until > now()
                  THEN ceil(extract(epoch FROM locked_until - now()))::bigint END,
             ceil(extract(epoch FROM window_started_at + make_interval(secs => $2) - now()))::bigint",
    )
    .bind(email)
    .bind(secs(window_secs))
    .fetch_one(pool)
    .await?;
    Ok(decide(failures, locked_for, window_left, max_failures))
}

/// The decision on the counters `begin_attempt` returns (pure, for tests).
fn decide(failures: i32, locked_for: Option<i64>, window_left: i64, max_failures: u32) -> Attempt {
    if let Some(left) = locked_for {
        return Attempt::Refused { retry_after_secs: left.max(1) as u64 };
    }
    if i64::from(failures) > i64::from(max_failures) {
        return Attempt::Refused { retry_after_secs: window_left.max(1) as u64 };
    }
    Attempt::Allowed
}

/// After a failed attempt: locks the email when the window's failures reach
/// `max_failures`. Returns the lock's length in seconds when this call set it.
pub async fn lock_if_exhausted(
    pool: &PgPool,
    email: &str,
    max_failures: u32,
    lockout_secs: u64,
) -> sqlx::Result<Option<u64>> {
    let locked: Option<i32> = sqlx::query_scalar(
        "UPDATE auth.login_throttle SET locked_until = now() + make_interval(secs => $3)
         WHERE email = $1 AND failures >= $2 AND (locked_until IS NULL OR locked_until <= now())
         RETURNING 1",
    )
    .bind(email)
    .bind(i64::from(max_failures))
    .bind(secs(lockout_secs))
    .fetch_optional(pool)
    .await?;
    Ok(locked.map(|_| lockout_secs))
}

/// A successful login clears the record.
pub async fn reset(pool: &PgPool, email: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM auth.login_throttle WHERE email = $1").bind(email).execute(pool).await?;
    Ok(())
}

/// Removes records whose window has passed and which hold no lock: they
/// would restart at the next attempt anyway, and unknown emails would
/// otherwise accumulate forever.
pub async fn purge_stale(pool: &PgPool, window_secs: u64) -> sqlx::Result<u64> {
    let res = sqlx::query(
        "DELETE FROM auth.login_throttle
         WHERE window_started_at <= now() - make_interval(secs => $1)
           AND (locked_until IS NULL OR locked_until <= now())",
    )
    .bind(secs(window_secs))
    .execute(pool)
    .await?;
    Ok(res.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_up_to_the_limit_are_allowed() {
        for n in 1..=5 {
            assert_eq!(decide(n, None, 900, 5), Attempt::Allowed);
        }
        assert_eq!(decide(6, None, 300, 5), Attempt::Refused { retry_after_secs: 300 });
    }

    #[test]
    fn a_lock_wins_and_reports_its_remaining_time() {
        assert_eq!(decide(1, Some(42), 900, 5), Attempt::Refused { retry_after_secs: 42 });
        assert_eq!(decide(9, Some(0), 0, 5), Attempt::Refused { retry_after_secs: 1 });
    }

    #[test]
    fn retry_after_is_never_zero_or_negative() {
        assert_eq!(decide(7, None, -3, 5), Attempt::Refused { retry_after_secs: 1 });
    }
}
