//! Access tokens: EdDSA (Ed25519) JWTs with a `kid`, signed by auth and
//! verified locally everywhere else against auth's JWKS, with the algorithm
//! pinned and `iss`, `aud`, `exp`, `nbf` checked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, RwLock};

use crate::config::JwtClaimArgs;
use crate::ids::UserId;

/// `typ` of access tokens; anything else is refused where an access token is expected.
pub const ACCESS_TYP: &str = "access";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub sub: UserId,
    pub email: String,
    pub role: String,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    pub typ: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is invalid: {0}")]
    Invalid(String),
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

/// The signing side: one Ed25519 key pair and its `kid`.
#[derive(Clone)]
pub struct JwtSigner {
    encoding: EncodingKey,
    public: Vec<u8>,
    kid: String,
}

impl JwtSigner {
    /// A fresh random key, for local runs and tests (tokens die with the process).
    pub fn generate() -> anyhow::Result<Self> {
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("key generation failed"))?;
        Self::from_pkcs8_der(der.as_ref())
    }

    /// From a PKCS#8 PEM (`openssl genpkey -algorithm ed25519`, or `payflow keygen`).
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        Self::from_pkcs8_der(&pem_to_der(pem)?)
    }

    fn from_pkcs8_der(der: &[u8]) -> anyhow::Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 key: {e}"))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = hex::encode(&Sha256::digest(&public)[..8]);
        Ok(Self { encoding: EncodingKey::from_ed_der(der), public, kid })
    }

    /// A new PKCS#8 PEM private key.
    pub fn generate_pem() -> anyhow::Result<String> {
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("key generation failed"))?;
        let b64 = STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Ok(pem)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn sign(&self, claims: &AccessClaims) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }

    /// The public half as a JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [self.jwk()]})
    }

    fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
            "kid": self.kid, "x": URL_SAFE_NO_PAD.encode(&self.public),
        })
    }

    /// A verifier that trusts exactly this key (no network).
    pub fn verifier(&self, claims: &JwtClaimArgs) -> JwtVerifier {
        let keys = DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(&self.public))
            .map(|key| HashMap::from([(self.kid.clone(), key)]))
            .unwrap_or_default();
        JwtVerifier::new(keys, None, claims)
    }
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
    Ok(STANDARD.decode(body)?)
}

/// The verifying side. With a JWKS URL it fetches keys on first use and again
/// (at most every 10 s) when a token names an unknown `kid`, so auth can rotate.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    keys: RwLock<HashMap<String, DecodingKey>>,
    jwks: Option<(String, reqwest::Client)>,
    last_fetch: Mutex<LastFetch>,
    validation: Validation,
    /// Tokens verified lately: a client sends the same token with every
    /// request for its lifetime, and checking an Ed25519 signature costs more
    /// than the rest of a request's authentication.
    verified: std::sync::Mutex<HashMap<String, (AccessClaims, Instant)>>,
}

const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// How long a failed fetch is the answer for every token that needs keys.
/// While auth is down, each token with an unknown `kid` used to start its own
/// fetch (up to 3 s each, one at a time); now one fetch per this interval.
const RETRY_FAILED_FETCH_AFTER: Duration = Duration::from_secs(2);

/// The last JWKS fetch: when it succeeded, or when and why it failed.
#[derive(Default)]
struct LastFetch {
    succeeded: Option<Instant>,
    failed: Option<(Instant, String)>,
}
/// How long a verified token is trusted without checking its signature again
/// (also bounds how long a token signed by a key that auth withdrew still passes).
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Most verified tokens remembered; when full, the memory starts afresh.
const VERIFIED_MAX: usize = 10_000;

impl JwtVerifier {
    pub fn from_jwks_url(url: &str, claims: &JwtClaimArgs) -> Self {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap_or_default();
        Self::new(HashMap::new(), Some((url.to_string(), client)), claims)
    }

    fn new(keys: HashMap<String, DecodingKey>, jwks: Option<(String, reqwest::Client)>, claims: &JwtClaimArgs) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&claims.issuer]);
        validation.set_audience(&[&claims.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        let verified = std::sync::Mutex::new(HashMap::new());
        Self {
            inner: Arc::new(Inner {
                keys: RwLock::new(keys),
                jwks,
                last_fetch: Mutex::new(LastFetch::default()),
                validation,
                verified,
            }),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        if let Some(claims) = self.remembered(token) {
            return Ok(claims);
        }
        let claims = self.verify_signature(token).await?;
        if let Ok(mut verified) = self.inner.verified.lock() {
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
            verified.insert(token.to_string(), (claims.clone(), Instant::now()));
        }
        Ok(claims)
    }

    /// A token verified within [`VERIFIED_FOR`] and not yet expired.
    fn remembered(&self, token: &str) -> Option<AccessClaims> {
        let verified = self.inner.verified.lock().ok()?;
        let (claims, at) = verified.get(token)?;
        let now = chrono::Utc::now().timestamp();
        (at.elapsed() < VERIFIED_FOR && now < claims.exp).then(|| claims.clone())
    }

    async fn verify_signature(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| TokenError::Invalid("no kid".into()))?;
        if !self.inner.keys.read().await.contains_key(&kid) {
            self.refresh().await?;
        }
        let keys = self.inner.keys.read().await;
        let key = keys.get(&kid).ok_or_else(|| TokenError::Invalid(format!("unknown kid {kid}")))?;
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &self.inner.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        if data.claims.typ != ACCESS_TYP {
            return Err(TokenError::Invalid("not an access token".into()));
        }
        Ok(data.claims)
    }

    /// Ready to verify: keys at hand, or fetched now. Once keys are loaded this
    /// stays true while auth is away (the keys in memory keep working).
    pub async fn ensure_keys(&self) -> Result<(), String> {
        if !self.inner.keys.read().await.is_empty() {
            return Ok(());
        }
        self.refresh().await.map_err(|e| e.to_string())?;
        if self.inner.keys.read().await.is_empty() {
            return Err("no signing keys yet".into());
        }
        Ok(())
    }

    async fn refresh(&self) -> Result<(), TokenError> {
        let Some((url, client)) = &self.inner.jwks else {
            return Ok(());
        };
        let mut last = self.inner.last_fetch.lock().await;
        if last.succeeded.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL) {
            return Ok(());
        }
        if let Some((at, reason)) = &last.failed {
            if at.elapsed() < RETRY_FAILED_FETCH_AFTER {
                return Err(TokenError::KeysUnavailable(reason.clone()));
            }
        }
        let fetched: Result<JwkSet, String> = async {
            let res = client.get(url).send().await.map_err(|e| e.to_string())?;
            let res = res.error_for_status().map_err(|e| e.to_string())?;
            res.json::<JwkSet>().await.map_err(|e| e.to_string())
        }
        .await;
        let set = match fetched {
            Ok(set) => set,
            Err(reason) => {
                last.failed = Some((Instant::now(), reason.clone()));
                return Err(TokenError::KeysUnavailable(reason));
            }
        };
        *last = LastFetch { succeeded: Some(Instant::now()), failed: None };
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)) {
                keys.insert(kid, key);
            }
        }
        tracing::info!(keys = keys.len(), %url, "fetched signing keys");
        *self.inner.keys.write().await = keys;
        // A withdrawn key's tokens must not pass from memory.
        if let Ok(mut verified) = self.inner.verified.lock() {
            verified.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> AccessClaims {
        AccessClaims {
            sub: UserId::new(),
            email: "a@b.co".into(),
            role: "user".into(),
            iss: "payflow-auth".into(),
            aud: "payflow-api".into(),
            exp: now + 60,
            nbf: now,
            iat: now,
            jti: "j".into(),
            typ: ACCESS_TYP.into(),
        }
    }

    #[tokio::test]
    async fn a_remembered_token_passes_only_until_it_expires() {
        let signer = JwtSigner::generate().unwrap();
        let verifier = signer.verifier(&JwtClaimArgs::default());
        let now = chrono::Utc::now().timestamp();
        let token = signer.sign(&claims(now)).unwrap();
        assert_eq!(verifier.verify(&token).await.unwrap(), verifier.verify(&token).await.unwrap());
        assert!(verifier.remembered(&token).is_some(), "verified once, remembered");

        // Whatever is remembered, an expired token is checked again (and refused: not a JWT).
        let mut expired = claims(now);
        expired.exp = now - 1;
        verifier.inner.verified.lock().unwrap().insert("not-a-jwt".into(), (expired, Instant::now()));
        assert!(verifier.verify("not-a-jwt").await.is_err());
    }

    #[tokio::test]
    async fn round_trip_and_rejections() {
        let args = JwtClaimArgs::default();
        let signer = JwtSigner::generate().unwrap();
        let verifier = signer.verifier(&args);
        let now = chrono::Utc::now().timestamp();
        let token = signer.sign(&claims(now)).unwrap();
        assert_eq!(verifier.verify(&token).await.unwrap().email, "a@b.co");

        let other = JwtSigner::from_pem(&JwtSigner::generate_pem().unwrap()).unwrap();
        assert!(verifier.verify(&other.sign(&claims(now)).unwrap()).await.is_err(), "wrong key");

        let mut c = claims(now);
        c.aud = "someone-else".into();
        assert!(verifier.verify(&signer.sign(&c).unwrap()).await.is_err(), "wrong audience");

        let mut c = claims(now);
        c.exp = now - 60;
        assert!(verifier.verify(&signer.sign(&c).unwrap()).await.is_err(), "expired");

        let mut c = claims(now);
        c.typ = "refresh".into();
        assert!(verifier.verify(&signer.sign(&c).unwrap()).await.is_err(), "wrong typ");

        // alg: none, with the payload of a valid token.
        let payload = token.split('.').nth(1).unwrap();
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#), payload);
        assert!(verifier.verify(&none).await.is_err(), "alg none");
    }

    /// While auth is away, tokens with an unknown `kid` share one failed fetch
    /// instead of each waiting for its own.
    #[tokio::test]
    async fn a_failed_jwks_fetch_is_not_repeated_for_every_token() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = attempts.clone();
        // Takes each connection and closes it unanswered: every fetch fails at once.
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(conn);
            }
        });
        let verifier = JwtVerifier::from_jwks_url(&url, &JwtClaimArgs::default());
        let token = JwtSigner::generate().unwrap().sign(&claims(chrono::Utc::now().timestamp())).unwrap();
        for _ in 0..5 {
            assert!(matches!(verifier.verify(&token).await, Err(TokenError::KeysUnavailable(_))));
        }
        assert!(verifier.ensure_keys().await.is_err());
        let fetches = || attempts.load(std::sync::atomic::Ordering::SeqCst);
        // reqwest may try a closed connection once more; what matters is one fetch, not six.
        assert!((1..=2).contains(&fetches()), "{} connections for one fetch", fetches());

        // Once the interval has passed, the next token tries again.
        let before = fetches();
        verifier.inner.last_fetch.lock().await.failed =
            Some((Instant::now() - RETRY_FAILED_FETCH_AFTER, "earlier".into()));
        assert!(matches!(verifier.verify(&token).await, Err(TokenError::KeysUnavailable(_))));
        assert!(fetches() > before, "a new fetch after the interval");
    }

    #[test]
    fn jwks_is_usable_by_jsonwebtoken() {
        let signer = JwtSigner::generate().unwrap();
        let set: JwkSet = serde_json::from_value(signer.jwks()).unwrap();
        assert!(DecodingKey::from_jwk(&set.keys[0]).is_ok());
    }
}
