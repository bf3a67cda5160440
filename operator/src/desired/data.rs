//! Managed Postgres, Redis and RabbitMQ: a StatefulSet with a volume and a
//! Service each. External ones are only referenced (their Secrets).

use serde_json::{json, Value};

use super::components::{container_security, pod_security, postgres_max_connections};
use super::{Child, Inputs, Names};
use crate::crd::{DataMode, DataServiceSpec, PayFlow};

struct Managed {
    name: &'static str,
    image: &'static str,
    port: u16,
    mount: &'static str,
    default_storage: &'static str,
}

const POSTGRES: Managed = Managed {
    name: "postgres",
    image: "postgres:16",
    port: 5432,
    mount: "/var/lib/postgresql/data",
    default_storage: "10Gi",
};
const REDIS: Managed = Managed { name: "redis", image: "redis:7", port: 6379, mount: "/data", default_storage: "1Gi" };
const RABBITMQ: Managed = Managed {
    name: "rabbitmq",
    image: "rabbitmq:3.13-management",
    port: 5672,
    mount: "/var/lib/rabbitmq",
    default_storage: "1Gi",
};

fn managed(pf: &PayFlow) -> impl Iterator<Item = (&'static Managed, &DataServiceSpec)> {
    [(&POSTGRES, &pf.spec.postgres), (&REDIS, &pf.spec.redis), (&RABBITMQ, &pf.spec.rabbitmq)]
        .into_iter()
        .filter(|(_, spec)| spec.mode == DataMode::Managed)
}

/// Names of the managed StatefulSets of `pf`.
pub fn statefulset_names(pf: &PayFlow, names: &Names) -> Vec<String> {
    managed(pf).map(|(m, _)| names.of(m.name)).collect()
}

pub fn children(pf: &PayFlow, names: &Names, owner: &Value, inputs: &Inputs) -> Vec<Child> {
    let mut out = Vec::new();
    for (m, spec) in managed(pf) {
        out.push(statefulset(pf, m, spec, names, owner, inputs));
        out.push(service(m, names, owner));
    }
    out
}

fn env(m: &Managed, names: &Names) -> Value {
    let creds = names.credentials();
    let secret = |key: &str| json!({"secretKeyRef": {"name": creds, "key": key}});
    match m.name {
        "postgres" => json!([
            {"name": "POSTGRES_USER", "value": "payflow"},
            {"name": "POSTGRES_DB", "value": "payflow"},
            {"name": "POSTGRES_PASSWORD", "valueFrom": secret("postgres-password")},
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
        ]),
        "rabbitmq" => json!([
            {"name": "RABBITMQ_DEFAULT_USER", "value": "payflow"},
            {"name": "RABBITMQ_DEFAULT_PASS", "valueFrom": secret("rabbitmq-password")},
            // No scheduler busy-waiting: spinning Erlang schedulers burn the pod's CPU quota
            // (and, on a small node, CPU that Postgres and the services need) while idle.
            {"name": "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "value": "+sbwt none +sbwtdcpu none +sbwtdio none"},
        ]),
        _ => json!([]),
    }
}

/// The uid and gid of the server user in the official data images.
const DATA_UID: i64 = 999;

fn statefulset(
    pf: &PayFlow,
    m: &Managed,
    spec: &DataServiceSpec,
    names: &Names,
    owner: &Value,
    inputs: &Inputs,
) -> Child {
    let name = names.of(m.name);
    let mut ports = vec![json!({"name": "main", "containerPort": m.port})];
    if m.name == "rabbitmq" {
        ports.push(json!({"name": "management", "containerPort": 15672}));
    }
    // volumeClaimTemplates cannot change once the StatefulSet exists (the API server refuses the
    // whole apply), and its claims would not follow anyway: size and class stay as created.
    let live = inputs.claim_templates.get(&name).and_then(|t| t.get(0)).map(|t| &t["spec"]);
    let storage = match live.and_then(|s| s.pointer("/resources/requests/storage")) {
        Some(live) => live.clone(),
        None => json!(spec.storage.clone().unwrap_or_else(|| m.default_storage.into())),
    };
    let class = match live {
        Some(live) => live.get("storageClassName").cloned(),
        None => spec.storage_class.as_ref().map(|c| json!(c)),
    };
    let mut claim_spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}});
    if let Some(class) = class {
        claim_spec["storageClassName"] = class;
    }
    // The official postgres, redis and rabbitmq images run their servers as uid/gid 999 and
    // start as root only to chown their data and drop to it. Starting as 999 directly keeps the
    // restricted profile (no capabilities needed); fsGroup makes the volume writable for it.
    let mut pod_sec = pod_security();
    if let Some(o) = pod_sec.as_object_mut() {
        for key in ["runAsUser", "runAsGroup", "fsGroup"] {
            o.insert(key.into(), json!(DATA_UID));
        }
    }
    let mut container_sec = container_security();
    container_sec["readOnlyRootFilesystem"] = json!(false);
    let mut container = json!({
        "name": m.name,
        "image": m.image,
        "ports": ports,
        "env": env(m, names),
        "volumeMounts": [{"name": "data", "mountPath": m.mount}],
        "readinessProbe": {"tcpSocket": {"port": "main"}, "periodSeconds": 5},
        "securityContext": container_sec,
    });
    if m.name == "postgres" {
        // The image's entrypoint runs `postgres` with these; the default 100 is too few for the pools.
        container["args"] = json!(["-c", format!("max_connections={}", postgres_max_connections(pf))]);
    }
    let obj = json!({
        "metadata": {"name": name, "labels": names.labels(m.name)},
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": names.selector(m.name)},
            // PVCs outlive the StatefulSet; the finalizer applies deletionPolicy to them.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "template": {
                "metadata": {"labels": names.labels(m.name)},
                "spec": {
                    "securityContext": pod_sec,
                    "automountServiceAccountToken": false,
                    "containers": [container],
                },
            },
            "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": names.labels(m.name)}, "spec": claim_spec}],
        },
    });
    Child::new("apps/v1", "StatefulSet", name, obj, owner)
}

fn service(m: &Managed, names: &Names, owner: &Value) -> Child {
    let name = names.of(m.name);
    let mut ports = vec![json!({"name": "main", "port": m.port, "targetPort": "main"})];
    if m.name == "rabbitmq" {
        ports.push(json!({"name": "management", "port": 15672, "targetPort": "management"}));
    }
    let obj = json!({
        "metadata": {"name": name, "labels": names.labels(m.name)},
        "spec": {"type": "ClusterIP", "selector": names.selector(m.name), "ports": ports},
    });
    Child::new("v1", "Service", name, obj, owner)
}

/// URLs the operator writes into the credentials Secret for managed services.
pub fn managed_urls(
    names: &Names,
    namespace: &str,
    postgres_password: &str,
    rabbitmq_password: &str,
) -> [(String, String); 3] {
    [
        (
            "rabbitmq-management-url".into(),
            // Read by KEDA (the TriggerAuthentication), which runs in its own namespace.
            format!("http://payflow:{rabbitmq_password}@{}.{namespace}.svc:15672", names.of("rabbitmq")),
        ),
        (
            "database-url".into(),
            format!("postgres://payflow:{postgres_password}@{}:5432/payflow", names.of("postgres")),
        ),
        ("amqp-url".into(), format!("amqp://payflow:{rabbitmq_password}@{}:5672/%2f", names.of("rabbitmq"))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_management_url_names_the_service_with_its_namespace() {
        let urls = managed_urls(&Names { instance: "demo" }, "payflow", "pg", "mq");
        let management = urls.iter().find(|(k, _)| k == "rabbitmq-management-url").expect("management url");
        assert_eq!(management.1, "http://payflow:mq@demo-rabbitmq.payflow.svc:15672");
    }
}
