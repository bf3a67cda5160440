use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use payflow_common::ids::UserId;
use payflow_common::jwt::{AccessClaims, JwtSigner, ACCESS_TYP};
use serde_json::json;

use crate::harness::{get, post, Stack};

fn claims(user: &str) -> AccessClaims {
    let now = chrono::Utc::now().timestamp();
    AccessClaims {
        sub: user.parse::<UserId>().expect("user id"),
        email: "x@example.com".into(),
        role: "user".into(),
        iss: "payflow-auth".into(),
        aud: "payflow-api".into(),
        exp: now + 300,
        nbf: now - 1,
        iat: now - 1,
        jti: uuid::Uuid::new_v4().to_string(),
        typ: ACCESS_TYP.into(),
    }
}

#[tokio::test]
async fn reuse_of_a_rotated_refresh_token_revokes_the_family() {
    let s = Stack::start().await;
    let u = s.register().await;
    let (status, first) = post(&s, "/api/auth/refresh", None, json!({"refreshToken": u.refresh})).await;
    assert_eq!(status, 200);
    let current = first["refreshToken"].as_str().expect("refreshToken").to_string();

    // The thief replays the old token: refused, and the family dies.
    let (status, _) = post(&s, "/api/auth/refresh", None, json!({"refreshToken": u.refresh})).await;
    assert_eq!(status, 401);
    let (status, _) = post(&s, "/api/auth/refresh", None, json!({"refreshToken": current})).await;
    assert_eq!(status, 401, "the newest token of a revoked family must stop working too");
}

#[tokio::test]
async fn forged_and_misused_tokens_get_401() {
    let s = Stack::start().await;
    let u = s.register().await;
    let me = format!("/api/wallets/{}", u.id);

    // A refresh token is not an access token.
    assert_eq!(get(&s, &me, &u.refresh).await.0, 401);

    // Sanity: a token signed with auth's key and right claims works.
    assert_eq!(get(&s, &me, &s.signer.sign(&claims(&u.id)).expect("sign")).await.0, 200);

    // alg: none, with a valid payload.
    let valid = s.signer.sign(&claims(&u.id)).expect("sign");
    let payload = valid.split('.').nth(1).expect("payload");
    let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#), payload);
    assert_eq!(get(&s, &me, &none).await.0, 401, "alg none");

    // Another key, with an unknown kid and with auth's own kid.
    let stranger = JwtSigner::generate().expect("key");
    assert_eq!(get(&s, &me, &stranger.sign(&claims(&u.id)).expect("sign")).await.0, 401, "unknown kid");
    let pem = JwtSigner::generate_pem().expect("pem");
    let der = base64::engine::general_purpose::STANDARD
        .decode(pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>())
        .expect("der");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(s.signer.kid().to_string());
    let forged =
        jsonwebtoken::encode(&header, &claims(&u.id), &jsonwebtoken::EncodingKey::from_ed_der(&der)).expect("forge");
    assert_eq!(get(&s, &me, &forged).await.0, 401, "right kid, wrong key");

    let mut c = claims(&u.id);
    c.aud = "another-api".into();
    assert_eq!(get(&s, &me, &s.signer.sign(&c).expect("sign")).await.0, 401, "wrong audience");

    let mut c = claims(&u.id);
    c.iss = "someone-else".into();
    assert_eq!(get(&s, &me, &s.signer.sign(&c).expect("sign")).await.0, 401, "wrong issuer");

    let mut c = claims(&u.id);
    c.exp = chrono::Utc::now().timestamp() - 120;
    assert_eq!(get(&s, &me, &s.signer.sign(&c).expect("sign")).await.0, 401, "expired");

    let mut c = claims(&u.id);
    c.nbf = chrono::Utc::now().timestamp() + 600;
    assert_eq!(get(&s, &me, &s.signer.sign(&c).expect("sign")).await.0, 401, "not yet valid");

    let res = s.http.get(s.url(&me)).send().await.expect("request");
    assert_eq!(res.status(), 401);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["error"], "Authentication required");
    let (status, body) = get(&s, &me, "garbage").await;
    assert_eq!((status, body["error"].as_str()), (401, Some("Invalid or expired token")));
}

#[tokio::test]
async fn repeated_login_failures_lock_temporarily() {
    let s = Stack::start_with(crate::harness::Options { login_max_failures: 3, ..Default::default() }).await;
    let u = s.register().await;
    for _ in 0..3 {
        let (status, body) =
            post(&s, "/api/auth/login", None, json!({"email": u.email, "password": "Wrong-passw0rd"})).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "Invalid credentials");
    }
    let res = s
        .http
        .post(s.url("/api/auth/login"))
        .json(&json!({"email": u.email, "password": u.password}))
        .send()
        .await
        .expect("login");
    assert_eq!(res.status(), 429, "locked");
    assert!(res.headers().contains_key("retry-after"));
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!((body["error"].as_str(), body["code"].as_str()), (Some("Too many requests"), Some("login_locked")));
    assert!(body["retryAfter"].as_u64().is_some_and(|s| s > 0), "{body}");

    // Unknown users answer exactly like wrong passwords.
    let (status, body) = post(
        &s,
        "/api/auth/login",
        None,
        json!({"email": format!("nobody-{}@example.com", uuid::Uuid::new_v4()), "password": "Wrong-passw0rd"}),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (401, Some("Invalid credentials")));
}
