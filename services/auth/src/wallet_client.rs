//! The one call auth makes to wallet: create a user's wallet. Wallet is
//! idempotent on `userId` (201 the first time, 200 after), so retrying is safe.
//!
//! A failure says whether the wallet surely does not exist (nothing reached
//! wallet, or wallet answered with an error) or may (a request went out and
//! no answer came back): registration only undoes the user in the first case.

use std::time::Duration;

use payflow_common::ids::UserId;
use payflow_common::service_token::{self, ServiceToken};
use reqwest::StatusCode;
use serde::Serialize;

use crate::domain::UserName;

/// Per attempt. Two attempts and the pause (5.2 s), plus the wait for a
/// hashing slot (2 s) and the rest of a registration or login, stay well
/// inside the gateway's upstream timeout (10 s): a client must not get a 504
/// for a registration auth then finishes. Creating a wallet takes milliseconds.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2_500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const ATTEMPTS: u32 = 2;
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The longest [`WalletClient::create_wallet`] takes.
#[cfg(test)]
const BUDGET: Duration = Duration::from_millis(2 * 2_500 + 200);

#[derive(Clone)]
pub struct WalletClient {
    http: reqwest::Client,
    endpoint: String,
    token: ServiceToken,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateWallet<'a> {
    user_id: UserId,
    name: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// No attempt created the wallet: none reached wallet, or wallet refused.
    #[error("wallet not created: {0}")]
    NotCreated(String),
    /// An attempt reached wallet (or may have) and its answer never came: the
    /// wallet may exist. Creating it again is safe (idempotent).
    #[error("wallet creation outcome unknown: {0}")]
    Unknown(String),
}

/// One attempt's failure, and whether wallet may have carried it out.
struct Failure {
    reason: String,
    maybe_done: bool,
    retryable: bool,
}

impl Failure {
    fn of_answer(status: StatusCode) -> Self {
        Self {
            reason: format!("wallet answered {status}"),
            // Wallet finishes a write whoever waits for it; its 504 (request
            // timeout) is the one answer that leaves the outcome open.
            maybe_done: status == StatusCode::GATEWAY_TIMEOUT,
            retryable: status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn of_transport(e: reqwest::Error) -> Self {
        // A failed connect sent nothing; anything later (a timeout, a reset) may
        // have come after wallet committed.
        Self { maybe_done: !e.is_connect(), reason: format!("wallet unreachable: {e}"), retryable: true }
    }
}

impl WalletClient {
    pub fn new(http: reqwest::Client, base_url: &str, token: ServiceToken) -> Self {
        let endpoint = format!("{}/internal/wallets", base_url.trim_end_matches('/'));
        Self { http, endpoint, token }
    }

    /// A client with the timeouts this service uses for wallet.
    pub fn http_client() -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).timeout(ATTEMPT_TIMEOUT).build()?)
    }

    /// Creates (or confirms) the wallet of `user_id`. Transport errors and
    /// 5xx/429 answers are retried once; any other answer is final. The
    /// outcome is [`WalletError::Unknown`] when any attempt may have created
    /// the wallet, even if a later one failed plainly.
    pub async fn create_wallet(
        &self,
        user_id: UserId,
        name: &UserName,
        correlation_id: &str,
    ) -> Result<(), WalletError> {
        let body = CreateWallet { user_id, name: name.as_str() };
        let mut attempt = 1;
        let mut maybe_done = false;
        loop {
            let res = self
                .http
                .post(&self.endpoint)
                .header(service_token::HEADER, self.token.as_str())
                .header(payflow_common::correlation::HEADER, correlation_id)
                .json(&body)
                .send()
                .await;
            let failure = match res {
                Ok(r) if r.status() == StatusCode::CREATED || r.status() == StatusCode::OK => return Ok(()),
                Ok(r) => Failure::of_answer(r.status()),
                Err(e) => Failure::of_transport(e),
            };
            maybe_done |= failure.maybe_done;
            if !failure.retryable || attempt >= ATTEMPTS {
                return Err(if maybe_done {
                    WalletError::Unknown(failure.reason)
                } else {
                    WalletError::NotCreated(failure.reason)
                });
            }
            tracing::warn!(error = %failure.reason, %user_id, attempt, "wallet creation failed, retrying");
            attempt += 1;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::test_support::{closed_port, never_answers};

    fn client(addr: std::net::SocketAddr) -> WalletClient {
        let token = ServiceToken::new("test-service-token-0123456789").expect("token");
        WalletClient::new(WalletClient::http_client().expect("client"), &format!("http://{addr}"), token)
    }

    async fn create(addr: std::net::SocketAddr) -> (Result<(), WalletError>, Duration) {
        let name = UserName::from_trusted("Test User".into());
        let started = Instant::now();
        let res = client(addr).create_wallet(UserId::new(), &name, "corr-1").await;
        (res, started.elapsed())
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_definite_failure() {
        let (res, took) = create(closed_port().await).await;
        assert!(matches!(res, Err(WalletError::NotCreated(_))), "{res:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    /// The gateway gives up on auth after 10 s; wallet's share of a request stays far below.
    #[tokio::test]
    async fn a_silent_wallet_is_an_unknown_outcome_within_the_budget() {
        let (res, took) = create(never_answers(usize::MAX).await).await;
        assert!(matches!(res, Err(WalletError::Unknown(_))), "{res:?}");
        assert!(took < BUDGET + Duration::from_millis(500), "{took:?}");
        assert!(BUDGET + crate::password::PERMIT_WAIT < Duration::from_secs(8));
    }

    /// The first attempt went out unanswered, the retry was refused: the first
    /// may still have created the wallet.
    #[tokio::test]
    async fn a_definite_failure_after_an_unanswered_attempt_is_still_unknown() {
        let (res, _) = create(never_answers(1).await).await;
        assert!(matches!(res, Err(WalletError::Unknown(_))), "{res:?}");
    }
}
