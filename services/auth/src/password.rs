//! Password hashing with argon2id. Each hash takes a core for tens of
//! milliseconds, so it runs on the blocking pool behind a semaphore: a burst
//! of logins queues instead of starving the async runtime. The queue is
//! short: a request that cannot start its hash within [`PERMIT_WAIT`] is
//! answered 503 with `Retry-After`. Requests that write run to completion on
//! their own task, so without that bound a burst kept hashing for clients the
//! gateway had long answered (it gives up after 10 s).

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::Argon2;
use payflow_common::error::ApiError;
use rand::rngs::OsRng;
use tokio::sync::Semaphore;

use crate::domain::Password;

/// The longest a request waits for a hashing slot.
pub const PERMIT_WAIT: Duration = Duration::from_secs(2);
/// `Retry-After` of the answer when none came free.
const RETRY_AFTER_SECS: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("every password hashing slot stayed busy for {PERMIT_WAIT:?}")]
    Busy,
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl From<HashError> for ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => {
                tracing::warn!("password hashing saturated: answering 503");
                ApiError {
                    retry_after: Some(RETRY_AFTER_SECS),
                    ..ApiError::unavailable("Too many sign-ins at once, please retry shortly").with_code("auth_busy")
                }
            }
            HashError::Failed(e) => ApiError::internal(format!("{e:#}")),
        }
    }
}

#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// Verified against when the email is unknown, so that answer takes as
    /// long as a wrong password for a real account.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub async fn new(concurrency: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(concurrency >= 1, "hash concurrency must be at least 1");
        let dummy_hash = tokio::task::spawn_blocking(|| {
            let mut secret = [0u8; 24];
            rand::RngCore::fill_bytes(&mut OsRng, &mut secret);
            hash_blocking(&secret)
        })
        .await??;
        Ok(Self { permits: Arc::new(Semaphore::new(concurrency)), dummy_hash: dummy_hash.into() })
    }

    pub async fn hash(&self, password: &Password) -> Result<String, HashError> {
        let password = password.expose().to_string();
        Ok(self.run(move || hash_blocking(password.as_bytes())).await??)
    }

    /// True when `password` matches `hash`. With no hash (unknown user) it
    /// verifies against the dummy hash and answers false.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool, HashError> {
        let known = hash.is_some();
        let hash = hash.map(str::to_string).unwrap_or_else(|| self.dummy_hash.to_string());
        let password = password.to_string();
        let matched = self.run(move || verify_blocking(password.as_bytes(), &hash)).await??;
        Ok(known && matched)
    }

    /// Runs `job` on the blocking pool once a permit is free, or answers
    /// [`HashError::Busy`] after [`PERMIT_WAIT`]. The permit moves into the
    /// job, so it is held until the hash finishes even if the request that
    /// asked for it has been dropped (timeout, disconnect).
    async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T, HashError> {
        let permit = match tokio::time::timeout(PERMIT_WAIT, self.permits.clone().acquire_owned()).await {
            Ok(permit) => permit.map_err(anyhow::Error::from)?,
            Err(_) => return Err(HashError::Busy),
        };
        let out = tokio::task::spawn_blocking(move || {
            let out = job();
            drop(permit);
            out
        })
        .await
        .map_err(anyhow::Error::from)?;
        Ok(out)
    }

    /// Takes every hashing slot, as a burst of sign-ins would.
    #[cfg(test)]
    pub(crate) async fn occupy_all(&self) -> tokio::sync::OwnedSemaphorePermit {
        let all = u32::try_from(self.permits.available_permits()).expect("few permits");
        self.permits.clone().acquire_many_owned(all).await.expect("semaphore open")
    }
}

fn hash_blocking(password: &[u8]) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))
}

fn verify_blocking(password: &[u8], hash: &str) -> anyhow::Result<bool> {
    let parsed = PasswordHash::new(hash).map_err(|e| anyhow::anyhow!("stored password hash is unreadable: {e}"))?;
    match Argon2::default().verify_password(password, &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(anyhow::anyhow!("password verification failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let hasher = PasswordHasher::new(1).await.unwrap();
        let pw = Password::parse("Passw0rd").unwrap();
        let hash = hasher.hash(&pw).await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(hasher.verify("Passw0rd", Some(&hash)).await.unwrap());
        assert!(!hasher.verify("passw0rd", Some(&hash)).await.unwrap());
        // Salted: the same password never hashes the same way twice.
        assert_ne!(hash, hasher.hash(&pw).await.unwrap());
    }

    #[tokio::test]
    async fn unknown_user_never_matches() {
        let hasher = PasswordHasher::new(1).await.unwrap();
        assert!(!hasher.verify("anything", None).await.unwrap());
        assert!(!hasher.verify("", None).await.unwrap());
    }

    #[tokio::test]
    async fn unreadable_hash_is_an_error_not_a_match() {
        let hasher = PasswordHasher::new(1).await.unwrap();
        assert!(hasher.verify("Passw0rd", Some("not-a-hash")).await.is_err());
    }

    #[tokio::test]
    async fn a_request_waits_for_a_hashing_slot_only_so_long() {
        let hasher = PasswordHasher::new(1).await.unwrap();
        let held = hasher.occupy_all().await;
        let started = std::time::Instant::now();
        assert!(matches!(hasher.verify("Passw0rd", None).await, Err(HashError::Busy)));
        let waited = started.elapsed();
        assert!(waited >= PERMIT_WAIT && waited < PERMIT_WAIT + Duration::from_secs(1), "{waited:?}");
        let answer = ApiError::from(HashError::Busy);
        assert_eq!((answer.status.as_u16(), answer.code, answer.retry_after), (503, "auth_busy", Some(2)));
        drop(held);
        assert!(!hasher.verify("Passw0rd", None).await.unwrap(), "a free slot is used again");
    }

    #[tokio::test]
    async fn zero_concurrency_is_refused() {
        assert!(PasswordHasher::new(0).await.is_err());
    }
}
