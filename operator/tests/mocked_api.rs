//! The reconciler against a mocked API server (tower-test): the exact writes
//! of a first reconcile, and not a single write on a second reconcile of the
//! unchanged state; what a refused child, a failed migration and a dropped
//! feature lead to. The mock is a tiny in-memory apiserver that records every call.

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

/// Serves requests from an in-memory object map, recording (method, path). A PATCH of a
/// path in `refuse` is answered 422, as the API server answers a change of an immutable field.
async fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    calls: Calls,
    seed: Vec<(String, Value)>,
    refuse: Vec<String>,
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
            ("GET", 1) => {
                // Label selectors are ignored: every object of the collection.
                let items: Vec<Value> = store
                    .iter()
                    .filter(|(k, _)| k.strip_prefix(&format!("{path}/")).is_some_and(|name| !name.contains('/')))
                    .map(|(_, v)| v.clone())
                    .collect();
                (StatusCode::OK, json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}))
            }
            ("PATCH", _) if refuse.contains(&path) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
                       "message": format!("{path} is invalid: spec: Forbidden: field is immutable")}),
            ),
            ("DELETE", _) => {
                store.remove(&path);
                (StatusCode::OK, json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}))
            }
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
    tokio::spawn(serve(handle, calls.clone(), vec![(pf_path, serde_json::to_value(payflow()).expect("json"))], vec![]));
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

const PF_PATH: &str = "/apis/payflow.io/v1alpha1/namespaces/payflow/payflows/demo";
const JOB_PATH: &str = "/apis/batch/v1/namespaces/payflow/jobs/demo-migrate-04dbabd388";

/// A mocked API server seeded with `seed` (and the PayFlow), refusing PATCHes of `refuse`.
fn mock(pf: &PayFlow, mut seed: Vec<(String, Value)>, refuse: &[&str]) -> (Arc<Context>, Calls) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls: Calls = Arc::default();
    seed.push((PF_PATH.into(), serde_json::to_value(pf).expect("json")));
    tokio::spawn(serve(handle, calls.clone(), seed, refuse.iter().map(|p| p.to_string()).collect()));
    let client = Client::new(service, "payflow");
    (Arc::new(Context::new(client, Arc::new(Metrics::new().expect("metrics")), Some("payflow".into()))), calls)
}

fn migration_job(status: Value) -> (String, Value) {
    (
        JOB_PATH.into(),
        json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "demo-migrate-04dbabd388", "namespace": "payflow", "generation": 1, "resourceVersion": "1"},
        "status": status}),
    )
}

/// The PayFlow as the API server holds it now (its status as the last pass wrote it).
async fn stored(ctx: &Context) -> PayFlow {
    let api: kube::Api<PayFlow> = kube::Api::namespaced(ctx.client.clone(), "payflow");
    api.get_status("demo").await.expect("payflow")
}

async fn events(ctx: &Context) -> Vec<(String, String, String)> {
    let api: kube::Api<k8s_openapi::api::events::v1::Event> = kube::Api::namespaced(ctx.client.clone(), "payflow");
    let list = api.list(&Default::default()).await.expect("events");
    list.items
        .into_iter()
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

fn condition(pf: &PayFlow, kind: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let status = pf.status.as_ref().expect("status");
    status.conditions.iter().find(|c| c.type_ == kind).cloned().unwrap_or_else(|| panic!("no {kind} condition"))
}

#[tokio::test]
async fn a_refused_child_is_reported_and_the_others_are_still_applied() {
    let pf = payflow();
    let sts = "/apis/apps/v1/namespaces/payflow/statefulsets/demo-postgres";
    let cm = "/api/v1/namespaces/payflow/configmaps/demo-wallet";
    let (ctx, calls) = mock(&pf, vec![migration_job(json!({"succeeded": 1}))], &[sts, cm]);

    let err = reconcile(Arc::new(pf), ctx.clone()).await.expect_err("a refused child fails the reconcile");
    assert!(err.to_string().contains("immutable"), "{err}");
    let writes = writes(&calls);
    let wrote = |path: &str| writes.iter().any(|w| w == &format!("PATCH {path}"));
    // Everything after the refused StatefulSet still went out ...
    for path in [
        "/apis/apps/v1/namespaces/payflow/statefulsets/demo-redis",
        "/api/v1/namespaces/payflow/configmaps/demo-transaction",
        "/apis/apps/v1/namespaces/payflow/deployments/demo-gateway",
        "/apis/apps/v1/namespaces/payflow/deployments/demo-transaction",
        "/apis/batch/v1/namespaces/payflow/cronjobs/demo-reversal",
        "/apis/networking.k8s.io/v1/namespaces/payflow/networkpolicies/demo-allow-rabbitmq",
        "/apis/payflow.io/v1alpha1/namespaces/payflow/payflows/demo/status",
    ] {
        assert!(wrote(path), "{path} not applied: {writes:#?}");
    }
    // ... but not wallet's Deployment, whose ConfigMap was refused, nor the existing Job (immutable).
    assert!(!wrote("/apis/apps/v1/namespaces/payflow/deployments/demo-wallet"), "{writes:#?}");
    assert!(!wrote(JOB_PATH), "{writes:#?}");

    let stored = stored(&ctx).await;
    let status = stored.status.as_ref().expect("status");
    assert_eq!(status.phase, "Degraded");
    assert_eq!(status.observed_generation, Some(1), "observed, so Argo CD shows Degraded, not Progressing");
    let degraded = condition(&stored, "Degraded");
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "ApplyFailed"));
    for part in [
        &format!("StatefulSet demo-postgres: {sts} is invalid: spec: Forbidden: field is immutable"),
        "ConfigMap demo-wallet: ",
        "Deployment demo-wallet: not applied, its ConfigMap was refused",
    ] {
        assert!(degraded.message.contains(part), "{part:?} not in {:?}", degraded.message);
    }
    assert_eq!(condition(&stored, "Ready").status, "False");
    let warnings: Vec<String> =
        events(&ctx).await.into_iter().filter(|(t, r, _)| t == "Warning" && r == "ApplyFailed").map(|e| e.2).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("StatefulSet demo-postgres: "), "{warnings:?}");
    assert!(warnings[0].contains("; ConfigMap demo-wallet: "), "{warnings:?}");
}

#[tokio::test]
async fn a_migration_job_that_failed_long_ago_is_deleted_and_created_again() {
    let pf = payflow();
    let failed = json!({"failed": 7, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
        "message": "Job has reached the specified backoff limit", "lastTransitionTime": "2020-01-01T00:00:00Z"}]});
    let (ctx, calls) = mock(&pf, vec![migration_job(failed)], &[]);

    reconcile(Arc::new(pf.clone()), ctx.clone()).await.expect("first reconcile");
    let first = writes(&calls);
    assert!(first.contains(&format!("DELETE {JOB_PATH}")), "{first:#?}");
    assert!(!first.contains(&format!("PATCH {JOB_PATH}")), "recreated in the next pass, not this one: {first:#?}");
    let retried: Vec<String> = events(&ctx)
        .await
        .into_iter()
        .filter(|(t, r, _)| t == "Warning" && r == "MigrationRetried")
        .map(|e| e.2)
        .collect();
    assert_eq!(
        retried,
        ["Deleted demo-migrate-04dbabd388 to run it again: migration job demo-migrate-04dbabd388 failed: \
          Job has reached the specified backoff limit"]
    );
    let stored = stored(&ctx).await;
    assert_eq!(stored.status.as_ref().map(|s| s.phase.as_str()), Some("Progressing"));
    assert_eq!(condition(&stored, "Degraded").status, "False");

    calls.lock().unwrap().clear();
    reconcile(Arc::new(stored), ctx.clone()).await.expect("second reconcile");
    assert!(writes(&calls).contains(&format!("PATCH {JOB_PATH}")), "{:#?}", writes(&calls));
}

#[tokio::test]
async fn turning_keda_off_prunes_this_payflows_scaled_object_and_trigger_authentication() {
    let keda = "/apis/keda.sh/v1alpha1";
    let discovery = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "keda.sh/v1alpha1", "resources": [
        {"name": "scaledobjects", "singularName": "scaledobject", "namespaced": true, "kind": "ScaledObject", "verbs": ["get", "list", "delete"]},
        {"name": "triggerauthentications", "singularName": "triggerauthentication", "namespaced": true, "kind": "TriggerAuthentication", "verbs": ["get", "list", "delete"]},
    ]});
    let object = |kind: &str, name: &str, uid: &str| {
        let path = format!("{keda}/namespaces/payflow/{}s/{name}", kind.to_lowercase());
        let labels = json!({"app.kubernetes.io/instance": "demo", "app.kubernetes.io/managed-by": "payflow-operator"});
        let owner = json!([{"apiVersion": "payflow.io/v1alpha1", "kind": "PayFlow", "name": "demo", "uid": uid, "controller": true}]);
        let obj = json!({"apiVersion": "keda.sh/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": "payflow", "labels": labels, "ownerReferences": owner}});
        (path, obj)
    };
    let seed = vec![
        (keda.to_string(), discovery),
        object("ScaledObject", "demo-worker", "u-1"),
        object("TriggerAuthentication", "demo-rabbitmq-management", "u-1"),
        // Same labels, another owner: not ours to delete.
        object("ScaledObject", "copied-worker", "u-2"),
    ];
    for keda_on in [true, false] {
        let mut pf = payflow();
        pf.spec.worker.autoscaling.as_mut().expect("autoscaling").keda = keda_on;
        let (ctx, calls) = mock(&pf, seed.clone(), &[]);
        reconcile(Arc::new(pf), ctx).await.expect("reconcile");
        let deletes: Vec<String> = writes(&calls).into_iter().filter(|w| w.starts_with("DELETE")).collect();
        let expected: Vec<String> = if keda_on {
            vec![]
        } else {
            vec![
                format!("DELETE {keda}/namespaces/payflow/scaledobjects/demo-worker"),
                format!("DELETE {keda}/namespaces/payflow/triggerauthentications/demo-rabbitmq-management"),
            ]
        };
        assert_eq!(deletes, expected, "keda: {keda_on}");
    }
}
