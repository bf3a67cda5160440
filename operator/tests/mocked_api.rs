//! The reconciler against a mocked API server (tower-test): the exact writes
//! of a first reconcile, and not a single write on a second reconcile of the
//! unchanged state. The mock is a tiny in-memory apiserver that records every call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use payflow_operator::controller::{reconcile, Context};
use payflow_operator::crd::PayFlow;
use payflow_operator::metrics::Metrics;
use serde_json::{json, Value};

type Calls = Arc<Mutex<Vec<(String, String)>>>;

/// Serves requests from an in-memory object map, recording (method, path).
async fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    calls: Calls,
    seed: Vec<(String, Value)>,
) {
    let mut store: HashMap<String, Value> = seed.into_iter().collect();
    let mut version = 0u64;
    while let Some((req, respond)) = handle.next_request().await {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        calls.lock().unwrap().push((method.clone(), path.clone()));
        let body = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        // Segments after /namespaces/<ns>/: 1 = collection, 2 = object, 3 = subresource.
        let after_ns = path.split("/namespaces/").nth(1).map(|r| r.split('/').count() - 1).unwrap_or(0);
        version += 1;
        let (status, answer) = match (method.as_str(), after_ns) {
            ("GET", 1) => (StatusCode::OK, json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []})),
            ("GET", _) => match store.get(path.trim_end_matches("/status")) {
                Some(obj) => (StatusCode::OK, obj.clone()),
                None => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
            },
            ("POST", _) => {
                let mut obj = body.clone();
                let name = obj["metadata"]["name"].as_str().unwrap_or("event").to_string();
                obj["metadata"]["resourceVersion"] = json!(version.to_string());
                store.insert(format!("{path}/{name}"), obj.clone());
                (StatusCode::CREATED, obj)
            }
            ("PATCH", 3) if path.ends_with("/status") => {
                let parent = path.trim_end_matches("/status").to_string();
                let mut obj = store.get(&parent).cloned().unwrap_or_else(|| json!({"metadata": {}}));
                obj["status"] = body["status"].clone();
                obj["metadata"]["resourceVersion"] = json!(version.to_string());
                store.insert(parent, obj.clone());
                (StatusCode::OK, obj)
            }
            ("PATCH", _) => {
                let mut obj = body.clone();
                obj["metadata"]["resourceVersion"] = json!(version.to_string());
                obj["metadata"]["generation"] = json!(1);
                store.insert(path.clone(), obj.clone());
                (StatusCode::OK, obj)
            }
            _ => (StatusCode::METHOD_NOT_ALLOWED, json!({})),
        };
        let response = Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
            .expect("response");
        respond.send_response(response);
    }
}

fn payflow() -> PayFlow {
    serde_json::from_value(json!({
        "apiVersion": "payflow.io/v1alpha1",
        "kind": "PayFlow",
        "metadata": {"name": "demo", "namespace": "payflow", "uid": "u-1", "generation": 1,
                     "resourceVersion": "1", "finalizers": ["payflow.io/cleanup"]},
        "spec": {"version": "0.1.0", "gateway": {"replicas": 2},
                 "worker": {"autoscaling": {"minReplicas": 1, "maxReplicas": 5}}},
    }))
    .expect("payflow")
}

fn writes(calls: &Calls) -> Vec<String> {
    calls.lock().unwrap().iter().filter(|(m, _)| m != "GET").map(|(m, p)| format!("{m} {p}")).collect()
}

#[tokio::test]
async fn first_reconcile_writes_exactly_this_and_a_second_writes_nothing() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls: Calls = Arc::default();
    let pf_path = "/apis/payflow.io/v1alpha1/namespaces/payflow/payflows/demo".to_string();
    tokio::spawn(serve(handle, calls.clone(), vec![(pf_path, serde_json::to_value(payflow()).expect("json"))]));
    let client = Client::new(service, "payflow");
    let ctx = Arc::new(Context::new(client, Arc::new(Metrics::new().expect("metrics")), Some("payflow".into())));

    let pf = payflow();
    reconcile(Arc::new(pf.clone()), ctx.clone()).await.expect("first reconcile");
    let first = writes(&calls);
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/first-reconcile-writes.txt");
    let text = first.join("\n") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(golden, &text).expect("write golden");
    }
    assert_eq!(std::fs::read_to_string(golden).unwrap_or_default(), text, "first reconcile's writes changed");

    // The second pass sees what the first wrote (the status included) and changes nothing.
    let status_path = "/apis/payflow.io/v1alpha1/namespaces/payflow/payflows/demo/status";
    assert!(first.iter().any(|w| w == &format!("PATCH {status_path}")));
    let mut again = pf.clone();
    // Fetch the stored status through the client, as the controller's watch would deliver it.
    let api: kube::Api<PayFlow> = kube::Api::namespaced(ctx.client.clone(), "payflow");
    let written = serde_json::to_value(api.get_status("demo").await.expect("status").status).expect("json");
    again.status = serde_json::from_value(written).expect("status");
    calls.lock().unwrap().clear();
    reconcile(Arc::new(again), ctx).await.expect("second reconcile");
    assert_eq!(writes(&calls), Vec::<String>::new(), "a second reconcile of unchanged state must not write");
}
