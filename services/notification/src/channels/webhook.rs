//! The webhook channel: POSTs each notification's JSON to one configured URL,
//! signed so the receiver can tell it came from PayFlow and was not replayed
//! long after.
//!
//! Signature (as Stripe does it): `X-PayFlow-Signature: t=<unix secs>,v1=<hex>`
//! where `<hex>` is HMAC-SHA256 over `"<t>.<raw body>"` with the shared secret.
//! Receivers recompute it over the raw body, compare in constant time and
//! refuse timestamps outside a small window.
//!
//! A 2xx answer delivers. A 4xx other than 408 and 429 refuses this
//! notification for good (another attempt would send the same request and get
//! the same answer), so it is given up at once; anything else is retried.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{DeliveryChannel, Permanent, Sent};
use crate::store::Notification;

pub const SIGNATURE_HEADER: &str = "x-payflow-signature";

/// Shortest secret accepted: a guessable key makes the signature worthless.
pub const MIN_SECRET_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

pub struct WebhookChannel {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: Vec<u8>,
    concurrency: usize,
}

impl WebhookChannel {
    /// `concurrency`: most calls under way at once in this process.
    pub fn new(url: &str, secret: &str, timeout: Duration, concurrency: usize) -> anyhow::Result<Self> {
        let url: reqwest::Url = url.parse().map_err(|e| anyhow::anyhow!("PAYFLOW_WEBHOOK_URL is not a URL: {e}"))?;
        anyhow::ensure!(matches!(url.scheme(), "http" | "https"), "PAYFLOW_WEBHOOK_URL must be http or https");
        anyhow::ensure!(
            secret.len() >= MIN_SECRET_LEN,
            "PAYFLOW_WEBHOOK_SECRET is required with PAYFLOW_WEBHOOK_URL and must be at least {MIN_SECRET_LEN} characters"
        );
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            // A redirect would carry a signed payload somewhere not configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("payflow-notification/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, url, secret: secret.as_bytes().to_vec(), concurrency })
    }
}

/// Whether an answer refuses the notification for good: a client error,
/// except 408 (Request Timeout) and 429 (Too Many Requests), which ask to try later.
pub fn refuses_for_good(status: reqwest::StatusCode) -> bool {
    use reqwest::StatusCode;
    status.is_client_error() && !matches!(status, StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS)
}

/// The `X-PayFlow-Signature` value for `body` sent at `timestamp`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> anyhow::Result<String> {
    let mut mac = HmacSha256::new_from_slice(secret)?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes())))
}

/// Checks a signature header the way a receiver should: some `v1` matches
/// (several are allowed, for secret rotation) and `t` is within `tolerance`
/// of `now`.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64, tolerance: Duration) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", s)) => signatures.extend(hex::decode(s).ok()),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    if now.abs_diff(t) > tolerance.as_secs() {
        return false;
    }
    signatures.iter().any(|sig| {
        let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
            return false;
        };
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // Constant-time comparison.
        mac.verify_slice(sig).is_ok()
    })
}

#[async_trait]
impl DeliveryChannel for WebhookChannel {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn concurrency(&self) -> Option<usize> {
        Some(self.concurrency)
    }

    async fn deliver(&self, n: &Notification, correlation_id: &str) -> anyhow::Result<Sent> {
        let body = serde_json::to_vec(&n.to_json())?;
        let signature = sign(&self.secret, chrono::Utc::now().timestamp(), &body)?;
        let res = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header("x-correlation-id", correlation_id)
            .body(body)
            .send()
            .await
            // The URL may carry a token; keep it out of errors and logs.
            .map_err(|e| anyhow::anyhow!("{}", e.without_url()))?;
        let status = res.status();
        if status.is_success() {
            return Ok(Sent::Delivered);
        }
        if refuses_for_good(status) {
            return Err(Permanent(format!("receiver answered HTTP {status}; not retried")).into());
        }
        anyhow::bail!("receiver answered HTTP {status}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-secret";

    #[test]
    fn signature_round_trip() {
        let body = br#"{"id":"x"}"#;
        let header = sign(SECRET, 1_700_000_000, body).unwrap();
        assert!(header.starts_with("t=1700000000,v1="));
        let window = Duration::from_secs(300);
        assert!(verify(SECRET, &header, body, 1_700_000_010, window));
        assert!(!verify(SECRET, &header, b"{\"id\":\"y\"}", 1_700_000_010, window));
        assert!(!verify(b"another-secret-0000", &header, body, 1_700_000_010, window));
        assert!(!verify(SECRET, &header, body, 1_700_001_000, window), "too old");
        assert!(!verify(SECRET, "v1=00", body, 1_700_000_000, window));
        assert!(!verify(SECRET, "", body, 1_700_000_000, window));
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256(key = "key", "1.{}"), computed independently.
        let header = sign(b"key", 1, b"{}").unwrap();
        let expected = {
            let mut mac = HmacSha256::new_from_slice(b"key").unwrap();
            mac.update(b"1.{}");
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(header, format!("t=1,v1={expected}"));
    }

    #[test]
    fn configuration_is_checked() {
        let t = Duration::from_secs(1);
        assert!(WebhookChannel::new("http://127.0.0.1:1/hook", "short", t, 4).is_err());
        assert!(WebhookChannel::new("ftp://x/hook", "0123456789abcdef", t, 4).is_err());
        assert!(WebhookChannel::new("not a url", "0123456789abcdef", t, 4).is_err());
        let ok = WebhookChannel::new("https://example.com/hook", "0123456789abcdef", t, 4).unwrap();
        assert_eq!(ok.concurrency(), Some(4));
    }

    #[test]
    fn only_client_errors_that_do_not_ask_to_wait_are_final() {
        use reqwest::StatusCode;
        for code in [400, 401, 403, 404, 410, 413, 422] {
            assert!(refuses_for_good(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [200, 301, 408, 429, 500, 502, 503, 504] {
            assert!(!refuses_for_good(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }
}
