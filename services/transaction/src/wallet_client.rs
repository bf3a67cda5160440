//! Calls to wallet's internal transfer API. Every call is idempotent at
//! wallet (keyed by the transfer id), so a transport failure is retried once
//! and otherwise reported as an unknown outcome for the caller to resolve.

use std::time::Duration;

use payflow_common::correlation;
use payflow_common::service_token;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::config::WalletArgs;

#[derive(Clone)]
pub struct WalletClient {
    http: reqwest::Client,
    base: String,
    token: String,
    pending_timeout_secs: u64,
}

/// A hold to place for a payment.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub id: Uuid,
    pub from: Uuid,
    pub to: Uuid,
    pub amount: i64,
    pub currency: String,
    pub correlation_id: String,
}

/// Outcome of placing a hold.
#[derive(Debug)]
pub enum Hold {
    Held,
    /// Wallet said no (404 recipient, 422 funds, ...): status and error body to pass on.
    Refused(u16, Value),
    Unknown(String),
}

/// Outcome of posting or voiding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Posted,
    Voided,
    NotFound,
}

#[derive(Debug, thiserror::Error)]
#[error("wallet call failed: {0}")]
pub struct Unavailable(pub String);

impl WalletClient {
    pub fn new(args: &WalletArgs) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Self {
            http,
            base: args.wallet_url.trim_end_matches('/').to_string(),
            token: args.service_token.service_token.clone(),
            pending_timeout_secs: args.pending_timeout_secs,
        })
    }

    async fn call(&self, path: &str, body: Option<&Value>, correlation_id: &str) -> Result<(u16, Value), String> {
        let mut last = String::new();
        for _ in 0..2 {
            let mut req = self
                .http
                .post(format!("{}{path}", self.base))
                .header(service_token::HEADER, &self.token)
                .header(correlation::HEADER, correlation_id);
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(res) if res.status().is_server_error() => last = format!("wallet answered {}", res.status()),
                Ok(res) => {
                    let status = res.status().as_u16();
                    let body = res.json().await.unwrap_or(Value::Null);
                    return Ok((status, body));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// Places the holds of many payments in one wallet call (one commit at
    /// wallet); the outcome of each, in order. A failed call leaves every
    /// outcome unknown.
    pub async fn hold_many(&self, holds: &[HoldRequest]) -> Vec<Hold> {
        let transfers: Vec<Value> = holds
            .iter()
            .map(|h| {
                json!({
                    "id": h.id, "fromUserId": h.from, "toUserId": h.to, "amount": h.amount,
                    "currency": h.currency, "timeoutSeconds": self.pending_timeout_secs,
                })
            })
            .collect();
        // One header for the call: the batch's first correlation id (each is in the transaction row).
        let correlation_id = holds.first().map(|h| h.correlation_id.as_str()).unwrap_or_default();
        let body = json!({ "transfers": transfers });
        let items = match self.call("/internal/transfers/hold-batch", Some(&body), correlation_id).await {
            Ok((200, Value::Array(items))) if items.len() == holds.len() => items,
            Ok((status, body)) => {
                let reason = format!("wallet answered {status}: {body}");
                return holds.iter().map(|_| Hold::Unknown(reason.clone())).collect();
            }
            Err(e) => return holds.iter().map(|_| Hold::Unknown(e.clone())).collect(),
        };
        items
            .into_iter()
            .map(|mut item| {
                let status = item["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(0);
                let body = item["body"].take();
                match status {
                    200 | 201 if body["state"] == "pending" => Hold::Held,
                    400 | 404 | 422 => Hold::Refused(status, body),
                    _ => Hold::Unknown(format!("wallet answered {status}: {body}")),
                }
            })
            .collect()
    }

    pub async fn post(&self, id: Uuid, correlation_id: &str) -> Result<Resolution, Unavailable> {
        self.resolve(id, "post", correlation_id).await
    }

    /// Posts a batch in one wallet transaction; the outcome of each id.
    pub async fn post_many(&self, ids: &[Uuid], correlation_id: &str) -> Result<Vec<(Uuid, Resolution)>, Unavailable> {
        let body = json!({ "ids": ids });
        let (status, body) =
            self.call("/internal/transfers/post-batch", Some(&body), correlation_id).await.map_err(Unavailable)?;
        if status != 200 {
            return Err(Unavailable(format!("unexpected wallet answer {status}: {body}")));
        }
        let items = body.as_array().ok_or_else(|| Unavailable(format!("not a list: {body}")))?;
        items
            .iter()
            .map(|item| {
                let id = item["id"].as_str().and_then(|i| Uuid::parse_str(i).ok());
                let outcome = match item["outcome"].as_str() {
                    Some("posted") => Some(Resolution::Posted),
                    Some("voided") => Some(Resolution::Voided),
                    Some("not_found") => Some(Resolution::NotFound),
                    _ => None,
                };
                id.zip(outcome).ok_or_else(|| Unavailable(format!("bad item {item}")))
            })
            .collect()
    }

    pub async fn void(&self, id: Uuid, correlation_id: &str) -> Result<Resolution, Unavailable> {
        self.resolve(id, "void", correlation_id).await
    }

    async fn resolve(&self, id: Uuid, action: &str, correlation_id: &str) -> Result<Resolution, Unavailable> {
        let (status, body) = self
            .call(&format!("/internal/transfers/{id}/{action}"), None, correlation_id)
            .await
            .map_err(Unavailable)?;
        match (status, body["state"].as_str(), body["code"].as_str()) {
            (200, Some("posted"), _) | (409, _, Some("transfer_posted")) => Ok(Resolution::Posted),
            (200, Some("voided"), _) | (409, _, Some("transfer_voided")) => Ok(Resolution::Voided),
            // Wallet's own answer only: any other 404 (a wrong URL, a proxy) says
            // nothing about the transfer, and reading it as "never held" would fail
            // a transaction whose money may still move.
            (404, _, Some("transfer_not_found")) => Ok(Resolution::NotFound),
            _ => Err(Unavailable(format!("unexpected wallet answer {status}: {body}"))),
        }
    }
}
