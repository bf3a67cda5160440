//! Desired objects from a spec: golden files for a full and a minimal
//! PayFlow, and the rules every child must follow.
//! `UPDATE_GOLDEN=1 cargo test -p payflow-operator --test desired` rewrites the golden files.

use std::collections::BTreeMap;

use payflow_operator::crd::PayFlow;
use payflow_operator::desired::{children, postgres_max_connections, Child, Credentials, Inputs, CONFIG_HASH};
use serde_json::Value;

fn fixture(name: &str) -> PayFlow {
    let path = format!("{}/tests/fixtures/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture");
    serde_yaml::from_str(&text).expect("a valid PayFlow")
}

fn inputs(token: &str) -> Inputs {
    let mut data = BTreeMap::new();
    for (k, v) in [
        ("service-token", token),
        ("jwt-private-key", "-----BEGIN PRIVATE KEY-----\nfixture\n-----END PRIVATE KEY-----\n"),
        ("postgres-password", "pg-secret"),
        ("rabbitmq-password", "mq-secret"),
        ("database-url", "postgres://payflow:pg-secret@demo-postgres:5432/payflow"),
        ("amqp-url", "amqp://payflow:mq-secret@demo-rabbitmq:5672/%2f"),
    ] {
        data.insert(k.to_string(), v.to_string());
    }
    Inputs { credentials: Credentials { data }, external: BTreeMap::new(), migrated: true, ..Inputs::default() }
}

fn golden(name: &str, objects: &[Child]) {
    let docs: Vec<String> = objects.iter().map(|c| serde_yaml::to_string(&c.object).expect("yaml")).collect();
    let text = docs.join("---\n");
    let path = format!("{}/tests/golden/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == text,
        "{name}: desired objects differ from {path}; rerun with UPDATE_GOLDEN=1 and review the diff"
    );
}

fn find<'a>(objects: &'a [Child], kind: &str, name: &str) -> &'a Child {
    objects.iter().find(|c| c.kind == kind && c.name == name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn full_spec_matches_its_golden_file() {
    golden("full", &children(&fixture("full"), &inputs("token-1")));
}

#[test]
fn minimal_spec_matches_its_golden_file() {
    golden("minimal", &children(&fixture("minimal"), &inputs("token-1")));
}

#[test]
fn every_child_has_a_controller_owner_reference() {
    for name in ["full", "minimal"] {
        let pf = fixture(name);
        for c in children(&pf, &inputs("t")) {
            let owners = c.object["metadata"]["ownerReferences"].as_array().expect("ownerReferences");
            assert_eq!(owners.len(), 1, "{} {}", c.kind, c.name);
            assert_eq!(owners[0]["kind"], "PayFlow");
            assert_eq!(owners[0]["controller"], true);
            assert_eq!(owners[0]["uid"], pf.metadata.uid.as_deref().unwrap_or_default());
        }
    }
}

#[test]
fn the_autoscaled_worker_deployment_declares_no_replicas() {
    let objects = children(&fixture("full"), &inputs("t"));
    let worker = find(&objects, "Deployment", "demo-worker");
    assert!(worker.object["spec"].get("replicas").is_none(), "the scaler owns spec.replicas");
    assert_eq!(find(&objects, "Deployment", "demo-gateway").object["spec"]["replicas"], 2);
    let minimal = children(&fixture("minimal"), &inputs("t"));
    assert_eq!(find(&minimal, "Deployment", "mini-worker").object["spec"]["replicas"], 1);
}

fn hashes(objects: &[Child]) -> BTreeMap<String, Value> {
    objects
        .iter()
        .filter(|c| c.kind == "Deployment")
        .map(|c| (c.name.clone(), c.object["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH].clone()))
        .collect()
}

#[test]
fn the_config_hash_changes_exactly_when_the_data_a_component_reads_changes() {
    let pf = fixture("full");
    let before = hashes(&children(&pf, &inputs("token-1")));
    assert_eq!(before, hashes(&children(&pf, &inputs("token-1"))), "stable for the same data");

    // The service token is read by auth, wallet, transaction and worker only.
    let after = hashes(&children(&pf, &inputs("token-2")));
    let changed: Vec<&String> = before.keys().filter(|k| before[*k] != after[*k]).collect();
    assert_eq!(changed, ["demo-auth", "demo-transaction", "demo-wallet", "demo-worker"]);

    // The pending timeout is read by transaction and worker only.
    let mut pf2 = pf.clone();
    pf2.spec.reversal.pending_timeout_seconds = 90;
    let after = hashes(&children(&pf2, &inputs("token-1")));
    let changed: Vec<&String> = before.keys().filter(|k| before[*k] != after[*k]).collect();
    assert_eq!(changed, ["demo-transaction", "demo-worker"]);

    // Replicas are not configuration: no rollout.
    let mut pf3 = pf.clone();
    pf3.spec.gateway.component.replicas = Some(5);
    assert_eq!(before, hashes(&children(&pf3, &inputs("token-1"))));
}

#[test]
fn the_migration_job_gates_the_workloads() {
    let pf = fixture("full");
    let mut i = inputs("t");
    i.migrated = false;
    let objects = children(&pf, &i);
    assert!(objects.iter().all(|c| c.kind != "Deployment"), "no rollout before the migration Job succeeded");
    assert!(objects.iter().all(|c| c.kind != "CronJob"), "the reversal reads the schema too");
    assert!(objects.iter().any(|c| c.kind == "Job"));
    assert!(objects.iter().any(|c| c.kind == "Service" && c.name == "demo-gateway"));
}

#[test]
fn external_data_services_are_referenced_not_run() {
    let objects = children(&fixture("minimal"), &inputs("t"));
    assert!(objects.iter().all(|c| c.kind != "StatefulSet" || c.name == "mini-redis"));
    let wallet = find(&objects, "Deployment", "mini-wallet");
    let env = wallet.object["spec"]["template"]["spec"]["containers"][0]["env"].as_array().expect("env");
    let db = env.iter().find(|e| e["name"] == "PAYFLOW_DATABASE_URL").expect("db url");
    assert_eq!(db["valueFrom"]["secretKeyRef"]["name"], "pg-conn");
}

#[test]
fn live_volume_claim_templates_are_kept_as_they_are() {
    let mut pf = fixture("full");
    let live = serde_json::json!([{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": "5Gi"}}}, "status": {"phase": "Pending"}}]);
    // Set later (the CEL rule allows it once) and resized: neither can change a StatefulSet.
    pf.spec.postgres.storage_class = Some("fast".into());
    pf.spec.postgres.storage = Some("50Gi".into());
    let mut i = inputs("t");
    i.claim_templates.insert("demo-postgres".into(), live.clone());
    let objects = children(&pf, &i);
    let claims = &find(&objects, "StatefulSet", "demo-postgres").object["spec"]["volumeClaimTemplates"];
    let postgres = serde_json::json!([{"metadata": {"name": "data", "labels": {
            "app.kubernetes.io/component": "postgres", "app.kubernetes.io/instance": "demo",
            "app.kubernetes.io/managed-by": "payflow-operator", "app.kubernetes.io/name": "payflow"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}}]);
    assert_eq!(claims, &postgres, "the live size and (no) class, not the spec's");
    // Not created yet: from the spec.
    let redis = &find(&objects, "StatefulSet", "demo-redis").object["spec"]["volumeClaimTemplates"][0];
    assert_eq!(redis["spec"]["resources"]["requests"]["storage"], "1Gi");
}

fn env_of(c: &Child) -> BTreeMap<String, String> {
    let pod = if c.kind == "CronJob" {
        &c.object["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    } else {
        &c.object["spec"]["template"]["spec"]
    };
    let env = pod["containers"][0]["env"].as_array().cloned().unwrap_or_default();
    env.iter().filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string()))).collect()
}

#[test]
fn every_database_client_has_a_sized_pool_and_postgres_has_room_for_all_of_them() {
    let pf = fixture("full");
    let objects = children(&pf, &inputs("t"));
    let mut pools = BTreeMap::new();
    for c in &objects {
        let size = match c.kind {
            "ConfigMap" => c.object["data"]["PAYFLOW_DB_MAX_CONNECTIONS"].as_str().map(String::from),
            "Job" | "CronJob" => env_of(c).get("PAYFLOW_DB_MAX_CONNECTIONS").cloned(),
            _ => continue,
        };
        pools.insert(c.name.clone(), size);
    }
    let pools: BTreeMap<&str, Option<&str>> = pools.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
    let job = objects.iter().find(|c| c.kind == "Job").expect("job").name.as_str();
    assert_eq!(
        pools,
        BTreeMap::from([
            ("demo-auth", Some("10")),
            ("demo-gateway", None),
            ("demo-notification", Some("10")),
            ("demo-reversal", Some("2")),
            ("demo-transaction", Some("10")),
            ("demo-wallet", Some("10")),
            ("demo-worker", Some("5")),
            (job, Some("2")),
        ])
    );
    let postgres = find(&objects, "StatefulSet", "demo-postgres");
    let args = &postgres.object["spec"]["template"]["spec"]["containers"][0]["args"];
    let max: u32 = args[1].as_str().and_then(|a| a.strip_prefix("max_connections=")).expect("arg").parse().expect("n");
    assert_eq!(args[0], "-c");
    // Every pool full with each component at its most pods (+1 for a rollout's surge), the
    // Jobs, and room for people.
    let most = |c: &str| -> u32 {
        let s = &pf.spec;
        let r = match c {
            "auth" => s.auth.replicas,
            "wallet" => s.wallet.replicas,
            "transaction" => s.transaction.replicas,
            "notification" => s.notification.replicas,
            _ => s.worker.autoscaling.as_ref().map(|a| a.max_replicas),
        };
        r.unwrap_or(1) as u32 + 1
    };
    let needed =
        10 * (most("auth") + most("wallet") + most("transaction") + most("notification")) + 5 * most("worker") + 2 + 2;
    assert!(max >= needed + 3, "max_connections {max} < {needed} + 3 reserved");
    assert_eq!(max, postgres_max_connections(&pf));

    // The design's example: 242 connections at most → 300.
    let mut example = pf.clone();
    for c in [&mut example.spec.auth, &mut example.spec.wallet, &mut example.spec.transaction] {
        c.replicas = Some(2);
    }
    example.spec.notification.replicas = Some(1);
    example.spec.worker.autoscaling.as_mut().expect("autoscaling").max_replicas = 20;
    example.spec.worker.autoscaling.as_mut().expect("autoscaling").fallback_replicas = None;
    assert_eq!(postgres_max_connections(&example), 300);
}
