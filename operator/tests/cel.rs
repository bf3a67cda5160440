//! The CRD's CEL rules on the fixtures in tests/fixtures/cel.yaml, evaluated client-side with
//! kube's CEL evaluator. tests/cluster.rs sends the same fixtures to a real kube-apiserver.

use kube::core::cel::Validator;
use kube::CustomResourceExt;
use payflow_operator::crd::PayFlow;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Fixture {
    name: String,
    spec: Value,
    #[serde(default)]
    old: Option<Value>,
    #[serde(default)]
    error: Option<String>,
}

fn fixtures() -> Vec<Fixture> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cel.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).expect("read fixtures")).expect("parse fixtures")
}

fn object(spec: &Value) -> Value {
    json!({"apiVersion": "payflow.io/v1alpha1", "kind": "PayFlow", "metadata": {"name": "x"}, "spec": spec})
}

#[test]
fn every_cel_fixture_is_accepted_or_refused_as_declared() {
    let crd = PayFlow::crd();
    let schema = serde_json::to_value(
        crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("schema"),
    )
    .expect("schema json");
    let validator = Validator::new();
    let cases = fixtures();
    assert!(cases.len() >= 10, "too few fixtures");
    let mut wrong = Vec::new();
    for case in &cases {
        let old = case.old.as_ref().map(object);
        let result = validator.validate(&schema, &object(&case.spec), old.as_ref());
        let messages: Vec<String> = match result {
            Ok(()) => Vec::new(),
            Err(errors) => errors.into_vec().into_iter().map(|e| format!("{}: {}", e.field_path, e.message)).collect(),
        };
        match &case.error {
            None if !messages.is_empty() => wrong.push(format!("{}: refused but valid: {messages:?}", case.name)),
            Some(want) if !messages.iter().any(|m| m.contains(want.as_str())) => {
                wrong.push(format!("{}: expected {want:?}, got {messages:?}", case.name))
            }
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "CEL fixtures:\n{}", wrong.join("\n"));
}
