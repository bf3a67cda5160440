use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::harness::Stack;

/// A wallet made through the internal API (no password hashing needed).
async fn wallet(s: &Stack) -> String {
    let id = Uuid::new_v4().to_string();
    let (status, body) =
        s.internal(Method::POST, "/internal/wallets", Some(json!({"userId": id, "name": "Wallet Test"}))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["balance"], "1000.00");
    id
}

fn transfer(id: &str, from: &str, to: &str, amount: i64) -> Value {
    json!({"id": id, "fromUserId": from, "toUserId": to, "amount": amount, "currency": "USD", "timeoutSeconds": 60})
}

async fn balances(s: &Stack, user: &str) -> (String, String) {
    let (status, w) = s.internal(Method::GET, &format!("/internal/wallets/{user}"), None).await;
    assert_eq!(status, 200, "{w}");
    (w["balance"].as_str().unwrap_or_default().into(), w["available_balance"].as_str().unwrap_or_default().into())
}

#[tokio::test]
async fn internal_endpoints_require_the_service_credential() {
    let s = Stack::start().await;
    for token in [None, Some("wrong-token-wrong-token")] {
        let mut req =
            s.http.post(format!("{}/internal/wallets", s.wallet)).json(&json!({"userId": Uuid::new_v4(), "name": "X"}));
        if let Some(t) = token {
            req = req.header("x-payflow-service-token", t);
        }
        assert_eq!(req.send().await.expect("call").status(), 401);
    }
}

#[tokio::test]
async fn creating_a_wallet_twice_credits_once() {
    let s = Stack::start().await;
    let id = wallet(&s).await;
    let (status, body) =
        s.internal(Method::POST, "/internal/wallets", Some(json!({"userId": id, "name": "Wallet Test"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["balance"], "1000.00");
    s.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_holds_never_exceed_the_available_balance() {
    let s = Stack::start().await;
    let sender = wallet(&s).await;
    let receivers = [wallet(&s).await, wallet(&s).await, wallet(&s).await];
    let calls = (0..100).map(|i| {
        let body = transfer(&Uuid::new_v4().to_string(), &sender, &receivers[i % 3], 1_500);
        let s = &s;
        async move { s.internal(Method::POST, "/internal/transfers", Some(body)).await }
    });
    let results = futures::future::join_all(calls).await;
    let held = results.iter().filter(|(st, _)| *st == 201).count();
    let refused = results.iter().filter(|(st, b)| *st == 422 && b["code"] == "insufficient_funds").count();
    // 1000.00 holds 66 × 15.00 and not a 67th.
    assert_eq!((held, refused), (66, 34), "{results:?}");
    assert_eq!(balances(&s, &sender).await, ("1000.00".into(), "10.00".into()));
    s.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_post_and_void_resolve_a_transfer_exactly_once() {
    let s = Stack::start().await;
    let a = wallet(&s).await;
    let b = wallet(&s).await;
    let mut posted = 0;
    for _ in 0..20 {
        let id = Uuid::new_v4().to_string();
        let (status, _) = s.internal(Method::POST, "/internal/transfers", Some(transfer(&id, &a, &b, 100))).await;
        assert_eq!(status, 201);
        let post_path = format!("/internal/transfers/{id}/post");
        let void_path = format!("/internal/transfers/{id}/void");
        let (p, v) =
            tokio::join!(s.internal(Method::POST, &post_path, None), s.internal(Method::POST, &void_path, None));
        match (p.0, v.0) {
            (200, 409) => {
                assert_eq!(p.1["state"], "posted");
                assert_eq!(v.1["code"], "transfer_posted");
                posted += 1;
            }
            (409, 200) => {
                assert_eq!(v.1["state"], "voided");
                assert_eq!(p.1["code"], "transfer_voided");
            }
            other => panic!("exactly one of post and void must win: {other:?} {p:?} {v:?}"),
        }
    }
    let expected_a = 100_000 - posted * 100;
    let expected_b = 100_000 + posted * 100;
    let fmt = |m: i64| format!("{}.{:02}", m / 100, m % 100);
    assert_eq!(balances(&s, &a).await, (fmt(expected_a), fmt(expected_a)));
    assert_eq!(balances(&s, &b).await, (fmt(expected_b), fmt(expected_b)));
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn retries_are_idempotent_and_reused_ids_conflict() {
    let s = Stack::start().await;
    let a = wallet(&s).await;
    let b = wallet(&s).await;
    let id = Uuid::new_v4().to_string();
    let body = transfer(&id, &a, &b, 2_550);

    let (status, first) = s.internal(Method::POST, "/internal/transfers", Some(body.clone())).await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = s.internal(Method::POST, "/internal/transfers", Some(body.clone())).await;
    assert_eq!(status, 200, "an identical retry is a success");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(balances(&s, &a).await, ("1000.00".into(), "974.50".into()), "held once");

    let (status, conflict) = s.internal(Method::POST, "/internal/transfers", Some(transfer(&id, &a, &b, 2_551))).await;
    assert_eq!((status, conflict["code"].as_str()), (409, Some("transfer_conflict")));

    for _ in 0..3 {
        let (status, posted) = s.internal(Method::POST, &format!("/internal/transfers/{id}/post"), None).await;
        assert_eq!((status, posted["state"].as_str()), (200, Some("posted")));
    }
    assert_eq!(balances(&s, &a).await, ("974.50".into(), "974.50".into()), "moved once");
    assert_eq!(balances(&s, &b).await, ("1025.50".into(), "1025.50".into()));
    // A create retried after the post still finds the same transfer, and moves nothing.
    let (status, late) = s.internal(Method::POST, "/internal/transfers", Some(body)).await;
    assert_eq!((status, late["state"].as_str()), (200, Some("posted")));
    let (status, _) = s.internal(Method::POST, &format!("/internal/transfers/{id}/void"), None).await;
    assert_eq!(status, 409, "a posted transfer cannot be voided");

    // Voiding an id never seen records it, so a late create is refused.
    let ghost = Uuid::new_v4().to_string();
    let (status, voided) = s.internal(Method::POST, &format!("/internal/transfers/{ghost}/void"), None).await;
    assert_eq!((status, voided["state"].as_str()), (200, Some("voided")));
    let (status, late) = s.internal(Method::POST, "/internal/transfers", Some(transfer(&ghost, &a, &b, 100))).await;
    assert_eq!((status, late["code"].as_str()), (409, Some("transfer_voided")));
    let (status, _) = s.internal(Method::POST, &format!("/internal/transfers/{ghost}/post"), None).await;
    assert_eq!(status, 409);

    // Synchronous refusals.
    let (status, _) =
        s.internal(Method::POST, "/internal/transfers", Some(transfer(&Uuid::new_v4().to_string(), &a, &a, 1))).await;
    assert_eq!(status, 400, "self-transfer");
    let (status, nf) = s
        .internal(
            Method::POST,
            "/internal/transfers",
            Some(transfer(&Uuid::new_v4().to_string(), &a, &Uuid::new_v4().to_string(), 1)),
        )
        .await;
    assert_eq!((status, nf["error"].as_str()), (404, Some("Recipient not found")));
    let (status, _) = s
        .internal(Method::POST, "/internal/transfers", Some(transfer(&Uuid::new_v4().to_string(), &a, &b, 10_000_000)))
        .await;
    assert_eq!(status, 422);
    s.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_batch_answers_each_hold_as_the_single_call_would() {
    let s = Stack::start().await;
    let (a, b) = (wallet(&s).await, wallet(&s).await);
    let id = |_| Uuid::new_v4().to_string();
    let (ok, again, big, same, ghost_to, bad, tail) = (id(0), id(0), id(0), id(0), id(0), id(0), id(0));
    let mut repeated = transfer(&ok, &a, &b, 400);
    repeated["amount"] = json!(401);
    let mut zero = transfer(&bad, &a, &b, 0);
    zero["amount"] = json!(0);
    let batch = json!({"transfers": [
        transfer(&ok, &a, &b, 400),
        transfer(&again, &a, &b, 300),
        // 1000.00 - 4.00 - 3.00 leaves too little for this one, not for the last one.
        transfer(&big, &a, &b, 99_500),
        transfer(&same, &a, &a, 1),
        transfer(&ghost_to, &a, &Uuid::new_v4().to_string(), 1),
        zero,
        repeated,
        transfer(&again, &a, &b, 300),
        transfer(&tail, &a, &b, 99_000),
    ]});
    let (status, items) = s.internal(Method::POST, "/internal/transfers/hold-batch", Some(batch)).await;
    assert_eq!(status, 200, "{items}");
    let answers: Vec<(String, u64, String)> = items
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| {
            let code = i["body"]["code"].as_str().or(i["body"]["state"].as_str()).unwrap_or_default();
            (i["id"].as_str().unwrap_or_default().to_string(), i["status"].as_u64().unwrap_or(0), code.to_string())
        })
        .collect();
    let expected = [
        (ok.clone(), 201, "pending"),
        (again.clone(), 201, "pending"),
        (big, 422, "insufficient_funds"),
        (same, 400, "self_transfer"),
        (ghost_to, 404, "recipient_not_found"),
        (bad, 400, "validation_failed"),
        (ok, 409, "transfer_conflict"),
        (again, 200, "pending"),
        (tail, 201, "pending"),
    ];
    let expected: Vec<(String, u64, String)> = expected.into_iter().map(|(i, s, c)| (i, s, c.to_string())).collect();
    assert_eq!(answers, expected);
    // Held: 4.00 + 3.00 + 990.00, once each.
    assert_eq!(balances(&s, &a).await, ("1000.00".into(), "3.00".into()));

    let (status, _) = s.internal(Method::POST, "/internal/transfers/hold-batch", Some(json!({"transfers": []}))).await;
    assert_eq!(status, 400);
    s.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_refused_hold_repeated_in_one_batch_is_refused_twice_not_503() {
    let s = Stack::start().await;
    let (a, b) = (wallet(&s).await, wallet(&s).await);
    let big = Uuid::new_v4().to_string();
    let batch = json!({"transfers": [transfer(&big, &a, &b, 200_000), transfer(&big, &a, &b, 200_000)]});
    let (status, items) = s.internal(Method::POST, "/internal/transfers/hold-batch", Some(batch)).await;
    assert_eq!(status, 200, "{items}");
    for item in items.as_array().expect("a list") {
        assert_eq!((item["status"].as_u64(), item["body"]["code"].as_str()), (Some(422), Some("insufficient_funds")));
    }
    assert_eq!(balances(&s, &a).await, ("1000.00".into(), "1000.00".into()));
}

#[tokio::test]
async fn wallets_are_made_in_the_configured_currency_only() {
    let s = Stack::start().await;
    let user = Uuid::new_v4();
    let create = |body: Value| {
        let s = &s;
        async move { s.internal(Method::POST, "/internal/wallets", Some(body)).await }
    };
    let (status, body) = create(json!({"userId": user, "name": "Euro", "currency": "EUR"})).await;
    assert_eq!((status, body["details"][0]["path"].as_str()), (400, Some("currency")), "{body}");
    let (status, body) = create(json!({"userId": user, "name": "Dollar", "currency": "USD"})).await;
    assert_eq!((status, body["currency"].as_str()), (201, Some("USD")), "{body}");

    // A wallet made in another currency (before the setting changed): asked for in the
    // configured one, a conflict; asked for without a currency (auth), the wallet as it is.
    let euro_user = payflow_common::ids::UserId(Uuid::new_v4());
    let eur = payflow_common::money::Currency::parse("EUR").expect("EUR");
    payflow_wallet::ledger::create_wallet(&s.pool, euro_user, "Euro", eur, 0).await.expect("EUR wallet");
    let (status, body) = create(json!({"userId": euro_user.0, "name": "Euro", "currency": "USD"})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("wallet_currency_conflict")), "{body}");
    let (status, body) = create(json!({"userId": euro_user.0, "name": "Euro"})).await;
    assert_eq!((status, body["currency"].as_str()), (200, Some("EUR")), "{body}");
    s.assert_ledger_ok().await;
}
