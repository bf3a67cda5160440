use serde_json::json;

use crate::harness::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_registrations_of_one_email_make_one_user_and_one_wallet() {
    let s = Stack::start().await;
    let email = format!("race-{}@example.com", uuid::Uuid::new_v4());
    let attempts = (0..50).map(|i| {
        let http = s.http.clone();
        let url = s.url("/api/auth/register");
        // Different case, same address: the uniqueness is on the normalised email.
        let email = if i % 2 == 0 { email.clone() } else { email.to_uppercase() };
        async move {
            let res = http
                .post(url)
                .json(&json!({"email": email, "password": "Sup3r-secret", "name": "Racer"}))
                .send()
                .await
                .expect("register");
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.expect("json");
            (status, body)
        }
    });
    let results = futures::future::join_all(attempts).await;
    let created: Vec<_> = results.iter().filter(|(st, _)| *st == 201).collect();
    let conflicts = results.iter().filter(|(st, b)| *st == 409 && b["error"] == "Email already registered").count();
    assert_eq!(created.len(), 1, "{results:?}");
    assert_eq!(conflicts, 49, "{results:?}");

    let user_id = created[0].1["userId"].as_str().expect("userId");
    let wallets: i64 = sqlx::query_scalar("SELECT count(*) FROM wallet.accounts WHERE user_id = $1::uuid")
        .bind(user_id)
        .fetch_one(&s.pool)
        .await
        .expect("count");
    assert_eq!(wallets, 1);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM auth.users WHERE email = $1")
        .bind(email.to_lowercase())
        .fetch_one(&s.pool)
        .await
        .expect("count");
    assert_eq!(users, 1);
    s.assert_ledger_ok().await;
}
