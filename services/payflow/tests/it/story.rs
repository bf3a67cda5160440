use serde_json::json;

use crate::harness::{get, post, Stack};

/// register → wallet shows the sign-up credit → login → me → refresh → the old
/// refresh token is refused → logout → the access token is refused.
#[tokio::test]
async fn the_whole_story_through_the_gateway() {
    let s = Stack::start().await;
    let u = s.register().await;

    let (status, wallet) = get(&s, &format!("/api/wallets/{}", u.id), &u.access).await;
    assert_eq!(status, 200, "{wallet}");
    assert_eq!(wallet["balance"], "1000.00");
    assert_eq!(wallet["available_balance"], "1000.00");
    assert_eq!(wallet["currency"], "USD");
    assert_eq!(wallet["user_id"], u.id.as_str());

    let (status, login) = post(&s, "/api/auth/login", None, json!({"email": u.email, "password": u.password})).await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["message"], "Login successful");
    assert_eq!(login["user"]["id"], u.id.as_str());
    let access = login["accessToken"].as_str().expect("accessToken").to_string();
    let refresh = login["refreshToken"].as_str().expect("refreshToken").to_string();

    let (status, me) = get(&s, "/api/auth/me", &access).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["email"], u.email.as_str());
    assert_eq!(me["role"], "user");
    assert!(me["last_login_at"].is_string(), "{me}");

    let (status, rotated) = post(&s, "/api/auth/refresh", None, json!({"refreshToken": refresh})).await;
    assert_eq!(status, 200, "{rotated}");
    let new_access = rotated["accessToken"].as_str().expect("accessToken").to_string();
    let new_refresh = rotated["refreshToken"].as_str().expect("refreshToken").to_string();
    assert_ne!(new_refresh, refresh);

    let (status, _) = post(&s, "/api/auth/me", None, json!({})).await;
    assert_eq!(status, 405, "me is GET only");
    let (status, me) = get(&s, "/api/auth/me", &new_access).await;
    assert_eq!(status, 200, "the rotated access token works: {me}");

    let (status, _) = post(&s, "/api/auth/refresh", None, json!({"refreshToken": refresh})).await;
    assert_eq!(status, 401, "the rotated refresh token must stop working");
    // Presenting it again is reuse: the whole login session is revoked.
    let (status, _) = post(&s, "/api/auth/refresh", None, json!({"refreshToken": new_refresh})).await;
    assert_eq!(status, 401, "reuse revokes the family");

    // The registration session is separate and still alive: log it out.
    let (status, out) = post(&s, "/api/auth/logout", Some(&u.access), json!({"refreshToken": u.refresh})).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["message"], "Logout successful");

    let (status, body) = get(&s, "/api/auth/me", &u.access).await;
    assert_eq!(status, 401, "a logged-out token must be refused: {body}");
    let (status, _) = get(&s, &format!("/api/wallets/{}", u.id), &u.access).await;
    assert_eq!(status, 401);
    let (status, _) = post(&s, "/api/auth/refresh", None, json!({"refreshToken": u.refresh})).await;
    assert_eq!(status, 401, "logout revokes the refresh token too");
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn health_and_not_found_answer_json() {
    let s = Stack::start().await;
    for path in ["/health", "/api/health"] {
        let res = s.http.get(s.url(path)).send().await.expect("health");
        assert_eq!(res.status(), 200);
        assert!(res.headers().contains_key("x-correlation-id"));
        let body: serde_json::Value = res.json().await.expect("json");
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["service"], "api-gateway");
        assert!(body["timestamp"].is_string() && body["version"].is_string());
    }
    let res = s.http.get(s.url("/api/nothing-here")).send().await.expect("404");
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["error"], "Route not found");

    // Internal routes are never reachable through the gateway.
    let res = s.http.post(s.url("/internal/wallets")).send().await.expect("404");
    assert_eq!(res.status(), 404);

    let res = s.http.get(s.url("/health")).header("x-correlation-id", "abc-123").send().await.expect("health");
    assert_eq!(res.headers()["x-correlation-id"], "abc-123");

    let metrics = s.http.get(s.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("payflow_http_requests_total"), "{metrics}");
}
