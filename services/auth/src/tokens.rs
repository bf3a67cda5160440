//! Token material: opaque refresh tokens (random, stored only as a hash) and
//! the claims of access tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use payflow_common::config::JwtClaimArgs;
use payflow_common::ids::UserId;
use payflow_common::jwt::{AccessClaims, ACCESS_TYP};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::{Email, Role};

/// Random bytes in a refresh token: 256 bits, beyond any guessing.
const REFRESH_TOKEN_BYTES: usize = 32;

/// SHA-256 of a refresh token, the only form the database holds. A fast hash
/// is enough: the token is random, so there is nothing to brute-force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshTokenHash(pub [u8; 32]);

impl RefreshTokenHash {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A refresh token as handed to the client: base64url (no padding) of 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl RefreshToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; REFRESH_TOKEN_BYTES];
        OsRng.fill_bytes(&mut bytes);
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> RefreshTokenHash {
        // Generated tokens always have the right shape.
        hash_bytes(self.as_str().as_bytes())
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(***)")
    }
}

/// Hashes a token presented by a client, or `None` when it cannot be one of
/// ours (wrong length or alphabet), which spares a database round trip.
pub fn hash_presented(token: &str) -> Option<RefreshTokenHash> {
    let decoded = URL_SAFE_NO_PAD.decode(token).ok()?;
    (decoded.len() == REFRESH_TOKEN_BYTES).then(|| hash_bytes(token.as_bytes()))
}

fn hash_bytes(token: &[u8]) -> RefreshTokenHash {
    RefreshTokenHash(Sha256::digest(token).into())
}

/// Claims of a new access token: a fresh `jti`, valid from `iat` until `exp` (Unix seconds).
pub fn access_claims(
    user_id: UserId,
    email: &Email,
    role: Role,
    jti: Uuid,
    claims: &JwtClaimArgs,
    iat: i64,
    exp: i64,
) -> AccessClaims {
    AccessClaims {
        sub: user_id,
        email: email.as_str().to_string(),
        role: role.as_str().to_string(),
        iss: claims.issuer.clone(),
        aud: claims.audience.clone(),
        exp,
        nbf: iat,
        iat,
        jti: jti.to_string(),
        typ: ACCESS_TYP.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_43_chars_of_base64url_and_distinct() {
        let a = RefreshToken::generate();
        let b = RefreshToken::generate();
        assert_eq!(a.as_str().len(), 43);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn presented_token_hashes_like_the_issued_one() {
        let t = RefreshToken::generate();
        assert_eq!(hash_presented(t.as_str()), Some(t.hash()));
    }

    #[test]
    fn hash_is_sha256_of_the_token_text() {
        let t = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let expected: [u8; 32] = Sha256::digest(t.as_bytes()).into();
        assert_eq!(hash_presented(t).unwrap().0, expected);
    }

    #[test]
    fn malformed_tokens_are_refused_without_lookup() {
        let t = RefreshToken::generate();
        assert_eq!(hash_presented(""), None);
        assert_eq!(hash_presented(&t.as_str()[..42]), None);
        assert_eq!(hash_presented(&format!("{}A", t.as_str())), None);
        assert_eq!(hash_presented(&format!("{}=", t.as_str())), None, "padding is not ours");
        assert_eq!(hash_presented(&t.as_str().replace(|_| true, "+")), None, "standard alphabet");
        // An access token (a JWT) is never a refresh token.
        assert_eq!(hash_presented("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln"), None);
    }

    #[test]
    fn debug_hides_the_token() {
        assert_eq!(format!("{:?}", RefreshToken::generate()), "RefreshToken(***)");
    }

    #[test]
    fn access_claims_shape() {
        let user = UserId::new();
        let jti = Uuid::new_v4();
        let email = Email::parse("a@b.co").unwrap();
        let c = access_claims(user, &email, Role::User, jti, &JwtClaimArgs::default(), 1_000, 1_900);
        assert_eq!(c.sub, user);
        assert_eq!((c.iat, c.nbf, c.exp), (1_000, 1_000, 1_900));
        assert_eq!(c.typ, "access");
        assert_eq!(c.role, "user");
        assert_eq!(c.jti, jti.to_string());
        assert_eq!((c.iss.as_str(), c.aud.as_str()), ("payflow-auth", "payflow-api"));
    }
}
