//! The one call auth makes to wallet: create a user's wallet. Wallet is
//! idempotent on `userId` (201 the first time, 200 after), so retrying is safe.

use std::time::Duration;

use payflow_common::ids::UserId;
use payflow_common::service_token::{self, ServiceToken};
use reqwest::StatusCode;
use serde::Serialize;

use crate::domain::UserName;

/// Per attempt; two attempts plus the pause stay well inside the 15 s request timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: u32 = 2;
const RETRY_PAUSE: Duration = Duration::from_millis(200);

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
    #[error("wallet unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("wallet answered {0}")]
    Status(StatusCode),
}

impl WalletClient {
    pub fn new(http: reqwest::Client, base_url: &str, token: ServiceToken) -> Self {
        let endpoint = format!("{}/internal/wallets", base_url.trim_end_matches('/'));
        Self { http, endpoint, token }
    }

    /// A client with the timeouts this service uses for wallet.
    pub fn http_client() -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).timeout(ATTEMPT_TIMEOUT).build()?)
    }

    /// Creates (or confirms) the wallet of `user_id`. Transport errors and
    /// 5xx/429 answers are retried once; any other answer is final.
    pub async fn create_wallet(
        &self,
        user_id: UserId,
        name: &UserName,
        correlation_id: &str,
    ) -> Result<(), WalletError> {
        let body = CreateWallet { user_id, name: name.as_str() };
        let mut attempt = 1;
        loop {
            let res = self
                .http
                .post(&self.endpoint)
                .header(service_token::HEADER, self.token.as_str())
                .header(payflow_common::correlation::HEADER, correlation_id)
                .json(&body)
                .send()
                .await;
            let err = match res {
                Ok(r) if r.status() == StatusCode::CREATED || r.status() == StatusCode::OK => return Ok(()),
                Ok(r) => WalletError::Status(r.status()),
                Err(e) => WalletError::Transport(e),
            };
            let retryable = match &err {
                WalletError::Transport(_) => true,
                WalletError::Status(s) => s.is_server_error() || *s == StatusCode::TOO_MANY_REQUESTS,
            };
            if !retryable || attempt >= ATTEMPTS {
                return Err(err);
            }
            tracing::warn!(error = %err, %user_id, attempt, "wallet creation failed, retrying");
            attempt += 1;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}
