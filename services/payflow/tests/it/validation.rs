use serde_json::{json, Value};

use crate::harness::{get, post, Stack};

fn paths(body: &Value) -> Vec<String> {
    body["details"]
        .as_array()
        .map(|d| d.iter().filter_map(|e| e["path"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn another_users_wallet_is_forbidden() {
    let s = Stack::start().await;
    let a = s.register().await;
    let b = s.register().await;
    let (status, body) = get(&s, &format!("/api/wallets/{}", b.id), &a.access).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "Access denied - you can only access your own resources");

    // The wallet service enforces it too, not only the gateway.
    let res =
        s.http.get(format!("{}/api/wallets/{}", s.wallet, b.id)).bearer_auth(&a.access).send().await.expect("direct");
    assert_eq!(res.status(), 403);

    // The directory lists payees without balances.
    let (status, dir) = get(&s, "/api/wallets", &a.access).await;
    assert_eq!(status, 200);
    let entry = dir.as_array().expect("array").iter().find(|e| e["user_id"] == b.id.as_str()).expect("b listed");
    assert!(entry.get("balance").is_none());
    assert_eq!(entry["name"], "Test User");
}

#[tokio::test]
async fn registration_rules_give_400_with_details() {
    let s = Stack::start().await;
    let cases = [
        (json!({"email": "not-an-email", "password": "Sup3r-secret", "name": "Ann"}), "email"),
        (json!({"email": "a@example.com", "password": "short1A", "name": "Ann"}), "password"),
        (json!({"email": "a@example.com", "password": "alllowercase1", "name": "Ann"}), "password"),
        (json!({"email": "a@example.com", "password": "NoDigitsHere", "name": "Ann"}), "password"),
        (json!({"email": "a@example.com", "password": "Sup3r-secret", "name": "A"}), "name"),
        (json!({"email": "a@example.com", "password": "Sup3r-secret", "name": "x".repeat(101)}), "name"),
        (json!({"email": "a@example.com", "password": "Sup3r-secret", "name": "Ann", "role": "admin"}), "role"),
        (json!({"email": "a@example.com", "password": "Sup3r-secret"}), "name"),
    ];
    for (body, field) in cases {
        let (status, answer) = post(&s, "/api/auth/register", None, body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(answer["error"].is_string());
        assert!(paths(&answer).iter().any(|p| p == field), "{body}: expected a detail for {field}: {answer}");
    }
    // All failing fields at once.
    let (status, answer) =
        post(&s, "/api/auth/register", None, json!({"email": "x", "password": "x", "name": ""})).await;
    assert_eq!(status, 400);
    let p = paths(&answer);
    assert!(p.contains(&"email".into()) && p.contains(&"password".into()) && p.contains(&"name".into()), "{answer}");
}

#[tokio::test]
async fn oversized_and_malformed_bodies_get_400() {
    let s = Stack::start().await;
    let big = json!({"email": "a@example.com", "password": "Sup3r-secret", "name": "x".repeat(11 * 1024)});
    let (status, body) = post(&s, "/api/auth/register", None, big).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(paths(&body), vec!["body".to_string()]);

    let res = s
        .http
        .post(s.url("/api/auth/login"))
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.expect("json");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("JSON")), "{body}");
    assert!(!paths(&body).is_empty());

    let (status, body) = post(&s, "/api/auth/login", None, json!({"email": 5, "password": "x"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(paths(&body), vec!["email".to_string()]);
}

#[tokio::test]
async fn ambiguous_send_money_input_is_refused_and_records_nothing() {
    let s = Stack::start().await;
    let a = s.register().await;
    let b = s.register().await;
    let raw = |body: String, keys: &[&str]| {
        let mut req = s
            .http
            .post(s.url("/api/transactions"))
            .bearer_auth(&a.access)
            .header("content-type", "application/json")
            .body(body);
        for k in keys {
            req = req.header("idempotency-key", *k);
        }
        async move {
            let res = req.send().await.expect("request");
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.expect("json"))
        }
    };
    let to = &b.id;

    // Anything after the JSON value is malformed, not ignored.
    let (status, body) = raw(format!(r#"{{"toUserId":"{to}","amount":1}} x"#), &[]).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("malformed_json")), "{body}");
    // A number no amount can be is the amount's fault.
    let (status, body) = raw(format!(r#"{{"toUserId":"{to}","amount":1e400}}"#), &[]).await;
    assert_eq!((status, paths(&body)), (400, vec!["amount".to_string()]), "{body}");
    // Two keys: which one was meant cannot be guessed.
    let (status, body) = raw(format!(r#"{{"toUserId":"{to}","amount":1}}"#), &["k-1", "k-2"]).await;
    assert_eq!((status, paths(&body)), (400, vec!["Idempotency-Key".to_string()]), "{body}");

    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM txn.transactions WHERE from_user_id = $1::uuid")
        .bind(&a.id)
        .fetch_one(&s.pool)
        .await
        .expect("count");
    assert_eq!(recorded, 0);

    let (status, body) = get(&s, &format!("/api/transactions?cursor={}&page=2", uuid::Uuid::new_v4()), &a.access).await;
    assert_eq!((status, paths(&body)), (400, vec!["page".to_string()]), "{body}");
}

#[tokio::test]
async fn paths_match_as_the_older_gateway_matched_them() {
    let s = Stack::start().await;
    let a = s.register().await;
    // Express ignored a trailing slash and the case of a path; existing clients may rely on it.
    for path in ["/api/transactions/", "/API/Transactions", &format!("/api/wallets/{}/", a.id.to_uppercase())] {
        let (status, body) = get(&s, path, &a.access).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let res = s.http.get(s.url("/API/HEALTH/?probe=1")).send().await.expect("health");
    assert_eq!(res.status(), 200);
    let (status, body) = get(&s, "/api/nothing-here/", &a.access).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("Route not found")));
}
