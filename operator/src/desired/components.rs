//! The six stateless components: a ConfigMap, a Deployment and a Service each.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{config_hash, Child, Inputs, Names, CONFIG_HASH};
use crate::crd::{ComponentSpec, DataMode, PayFlow};

/// One PayFlow component as Kubernetes runs it.
#[derive(Debug, Clone, Copy)]
pub struct Component {
    pub name: &'static str,
    /// `payflow <subcommand>`.
    pub subcommand: &'static str,
    pub port: u16,
    /// Environment variable naming the port.
    pub port_env: &'static str,
    pub needs_db: bool,
    pub needs_redis: bool,
    pub needs_amqp: bool,
    pub needs_service_token: bool,
}

const fn c(
    name: &'static str,
    port: u16,
    port_env: &'static str,
    db: bool,
    redis: bool,
    amqp: bool,
    token: bool,
) -> Component {
    Component {
        name,
        subcommand: name,
        port,
        port_env,
        needs_db: db,
        needs_redis: redis,
        needs_amqp: amqp,
        needs_service_token: token,
    }
}

pub const COMPONENTS: [Component; 6] = [
    c("gateway", 3000, "PAYFLOW_GATEWAY_PORT", false, true, false, false),
    c("auth", 3004, "PAYFLOW_AUTH_PORT", true, true, false, true),
    c("wallet", 3001, "PAYFLOW_WALLET_PORT", true, false, false, true),
    c("transaction", 3002, "PAYFLOW_TRANSACTION_PORT", true, false, true, true),
    c("notification", 3003, "PAYFLOW_NOTIFICATION_PORT", true, false, true, false),
    c("worker", 3005, "PAYFLOW_WORKER_PORT", true, false, true, true),
];

pub fn url(names: &Names, component: &str) -> String {
    let port = COMPONENTS.iter().find(|c| c.name == component).map_or(80, |c| c.port);
    format!("http://{}:{port}", names.of(component))
}

fn spec_of<'a>(pf: &'a PayFlow, component: &str) -> Option<&'a ComponentSpec> {
    let s = &pf.spec;
    match component {
        "gateway" => Some(&s.gateway.component),
        "auth" => Some(&s.auth),
        "wallet" => Some(&s.wallet),
        "transaction" => Some(&s.transaction),
        "notification" => Some(&s.notification),
        _ => None,
    }
}

/// Replicas the Deployment declares; `None` when the scaler owns them.
pub fn replicas(pf: &PayFlow, component: &str) -> Option<i32> {
    if component == "worker" {
        return match &pf.spec.worker.autoscaling {
            Some(_) => None,
            None => Some(pf.spec.worker.replicas.unwrap_or(1)),
        };
    }
    Some(spec_of(pf, component).and_then(|s| s.replicas).unwrap_or(1))
}

/// Connections of one process's Postgres pool (`PAYFLOW_DB_MAX_CONNECTIONS`; the services'
/// default, 20, times every pod is more than a managed Postgres allows).
pub fn db_pool(component: &str) -> u32 {
    match component {
        // Two settle batches at once (worker.rs PIPELINE), one transaction each, plus readiness
        // checks and a spare.
        "worker" => 5,
        // One transaction at a time (reversal.rs, the migration's advisory-locked session).
        "reversal" | "migrate" => 2,
        // transaction: one statement in flight per batch kind (batches.rs), the outbox relay and
        // its housekeeping, then reads; wallet, auth and notification: concurrent requests. A
        // pool that is full makes requests wait (5 s acquire timeout), it does not fail them.
        _ => 10,
    }
}

/// Most pods of a component at once: its replicas (the worker's autoscaling maximum or fallback)
/// plus one more during a rolling update (maxSurge 1).
fn most_pods(pf: &PayFlow, component: &str) -> u32 {
    let most = match (component, &pf.spec.worker.autoscaling) {
        ("worker", Some(a)) => a.max_replicas.max(a.fallback_replicas.unwrap_or(0)),
        _ => replicas(pf, component).unwrap_or(1),
    };
    most.max(0).unsigned_abs() + 1
}

/// `max_connections` of the managed Postgres: every pool at its fullest (`most_pods` ×
/// `db_pool` of each component that uses the database), one reversal Job (concurrencyPolicy
/// Forbid) and the migration Job, Postgres's 3 superuser-reserved slots and 20 for people
/// (psql, `payflow ledger-check`). Rounded up to a multiple of 100 (at least Postgres's default
/// 100): changing it restarts Postgres, which a small change of replicas then does not.
/// The design's example (auth, wallet, transaction 2, notification 1, worker up to 20):
/// 3×10 + 3×10 + 3×10 + 2×10 + 21×5 + 2 + 2 + 3 + 20 = 242 → 300.
pub fn postgres_max_connections(pf: &PayFlow) -> u32 {
    let pools: u32 = COMPONENTS.iter().filter(|c| c.needs_db).map(|c| most_pods(pf, c.name) * db_pool(c.name)).sum();
    let total = pools + db_pool("reversal") + db_pool("migrate") + 3 + 20;
    total.div_ceil(100).max(1) * 100
}

/// Plain settings of one component (everything secret stays in Secrets).
pub fn config_data(pf: &PayFlow, names: &Names, c: &Component) -> BTreeMap<String, String> {
    let mut d = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        d.insert(k.to_string(), v);
    };
    set("PAYFLOW_LOG", "info".into());
    set("PAYFLOW_BIND", "0.0.0.0".into());
    set(c.port_env, c.port.to_string());
    // Only what this component reads, so a change rolls exactly the pods it affects.
    if matches!(c.name, "gateway" | "wallet" | "transaction" | "notification") {
        set("PAYFLOW_JWKS_URL", format!("{}/.well-known/jwks.json", url(names, "auth")));
    }
    if matches!(c.name, "auth" | "transaction" | "worker") {
        set("PAYFLOW_WALLET_URL", url(names, "wallet"));
    }
    if c.needs_amqp {
        set("PAYFLOW_AMQP_PREFIX", "payflow".into());
    }
    if c.needs_db {
        set("PAYFLOW_DB_MAX_CONNECTIONS", db_pool(c.name).to_string());
    }
    if matches!(c.name, "transaction" | "worker") {
        set("PAYFLOW_PENDING_TIMEOUT_SECS", pf.spec.reversal.pending_timeout_seconds.to_string());
    }
    if c.needs_redis && pf.spec.redis.mode == DataMode::Managed {
        set("PAYFLOW_REDIS_URL", format!("redis://{}:6379", names.of("redis")));
    }
    if c.name == "gateway" {
        set("PAYFLOW_AUTH_URL", url(names, "auth"));
        set("PAYFLOW_WALLET_URL", url(names, "wallet"));
        set("PAYFLOW_TRANSACTION_URL", url(names, "transaction"));
        set("PAYFLOW_NOTIFICATION_URL", url(names, "notification"));
        // Behind an in-cluster ingress: believe X-Forwarded-For from private addresses only.
        set("PAYFLOW_TRUSTED_PROXIES", "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16".into());
    }
    d
}

/// Secret references of one component: env name → (secret name, key).
pub fn secret_env(pf: &PayFlow, names: &Names, c: &Component) -> Vec<(&'static str, String, &'static str)> {
    let mut out = Vec::new();
    let creds = names.credentials();
    let external = |secret: &Option<String>| secret.clone().unwrap_or_default();
    if c.needs_db {
        out.push(match pf.spec.postgres.mode {
            DataMode::Managed => ("PAYFLOW_DATABASE_URL", creds.clone(), "database-url"),
            DataMode::External => ("PAYFLOW_DATABASE_URL", external(&pf.spec.postgres.secret_ref), "url"),
        });
    }
    if c.needs_redis && pf.spec.redis.mode == DataMode::External {
        out.push(("PAYFLOW_REDIS_URL", external(&pf.spec.redis.secret_ref), "url"));
    }
    if c.needs_amqp {
        out.push(match pf.spec.rabbitmq.mode {
            DataMode::Managed => ("PAYFLOW_AMQP_URL", creds.clone(), "amqp-url"),
            DataMode::External => ("PAYFLOW_AMQP_URL", external(&pf.spec.rabbitmq.secret_ref), "url"),
        });
    }
    if c.needs_service_token {
        out.push(("PAYFLOW_SERVICE_TOKEN", creds.clone(), "service-token"));
    }
    if c.name == "auth" {
        out.push(("PAYFLOW_JWT_PRIVATE_KEY", creds, "jwt-private-key"));
    }
    out
}

/// The value a secret reference resolves to, for hashing.
fn secret_value<'a>(inputs: &'a Inputs, creds_name: &str, secret: &str, key: &str) -> &'a str {
    let data = if secret == creds_name { Some(&inputs.credentials.data) } else { inputs.external.get(secret) };
    data.and_then(|d| d.get(key)).map_or("", String::as_str)
}

/// Hash of everything a component's pods read: a change rolls exactly its pods.
pub fn component_hash(pf: &PayFlow, names: &Names, c: &Component, inputs: &Inputs) -> String {
    let config = config_data(pf, names, c);
    let creds = names.credentials();
    let secrets: Vec<(String, String)> = secret_env(pf, names, c)
        .into_iter()
        .map(|(env, secret, key)| (env.to_string(), secret_value(inputs, &creds, &secret, key).to_string()))
        .collect();
    config_hash(
        config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
    )
}

pub fn config_maps(pf: &PayFlow, names: &Names, owner: &Value, _inputs: &Inputs) -> Vec<Child> {
    COMPONENTS
        .iter()
        .map(|c| {
            let name = names.of(c.name);
            let obj = json!({
                "metadata": {"name": name, "labels": names.labels(c.name)},
                "data": config_data(pf, names, c),
            });
            Child::new("v1", "ConfigMap", name, obj, owner)
        })
        .collect()
}

fn default_resources(c: &Component) -> Value {
    let memory = if c.name == "worker" || c.name == "transaction" { "256Mi" } else { "128Mi" };
    json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": memory}})
}

/// Restricted pod security: non-root, no privilege escalation, read-only root.
pub fn container_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

pub fn pod_security() -> Value {
    // 65532: the image's own non-root user (distroless `nonroot`).
    json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532})
}

pub fn image(pf: &PayFlow) -> String {
    format!("{}:{}", pf.spec.image.repository, pf.spec.version)
}

pub fn env_from_secrets(refs: &[(&'static str, String, &'static str)]) -> Vec<Value> {
    refs.iter()
        .map(|(env, secret, key)| json!({"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}))
        .collect()
}

pub fn workloads(pf: &PayFlow, names: &Names, owner: &Value, inputs: &Inputs) -> Vec<Child> {
    COMPONENTS
        .iter()
        .map(|c| {
            let name = names.of(c.name);
            let resources = match c.name {
                "worker" => pf.spec.worker.resources.clone(),
                other => spec_of(pf, other).and_then(|s| s.resources.clone()),
            }
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .unwrap_or_else(|| default_resources(c));
            let probe = |path: &str, period: u32| {
                json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 2})
            };
            let mut spec = json!({
                "selector": {"matchLabels": names.selector(c.name)},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {
                        "labels": names.labels(c.name),
                        "annotations": {CONFIG_HASH: component_hash(pf, names, c, inputs)},
                    },
                    "spec": {
                        "securityContext": pod_security(),
                        "automountServiceAccountToken": false,
                        "terminationGracePeriodSeconds": 30,
                        "containers": [{
                            "name": c.name,
                            "image": image(pf),
                            "imagePullPolicy": pf.spec.image.pull_policy.clone().unwrap_or_else(|| "IfNotPresent".into()),
                            "args": [c.subcommand],
                            "ports": [{"name": "http", "containerPort": c.port}],
                            "envFrom": [{"configMapRef": {"name": name}}],
                            "env": env_from_secrets(&secret_env(pf, names, c)),
                            "readinessProbe": probe("/readyz", 5),
                            "livenessProbe": probe("/healthz", 10),
                            "resources": resources,
                            "securityContext": container_security(),
                        }],
                    },
                },
            });
            if let Some(r) = replicas(pf, c.name) {
                spec["replicas"] = json!(r);
            }
            let obj = json!({"metadata": {"name": name, "labels": names.labels(c.name)}, "spec": spec});
            Child::new("apps/v1", "Deployment", name, obj, owner)
        })
        .collect()
}

pub fn services(names: &Names, owner: &Value) -> Vec<Child> {
    COMPONENTS
        .iter()
        .map(|c| {
            let name = names.of(c.name);
            let obj = json!({
                "metadata": {"name": name, "labels": names.labels(c.name)},
                "spec": {
                    "type": "ClusterIP",
                    "selector": names.selector(c.name),
                    "ports": [{"name": "http", "port": c.port, "targetPort": "http"}],
                },
            });
            Child::new("v1", "Service", name, obj, owner)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway's settings, as compiled: its upstreams are the `PAYFLOW_*_URL`s declared here.
    const GATEWAY_CONFIG: &str = include_str!("../../../services/gateway/src/config.rs");

    fn gateway_url_envs() -> Vec<&'static str> {
        GATEWAY_CONFIG
            .split("env = \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|env| env.ends_with("_URL"))
            .collect()
    }

    #[test]
    fn the_gateway_config_map_sets_every_upstream_url_the_gateway_reads() {
        let pf: PayFlow = serde_yaml::from_str(include_str!("../../tests/fixtures/full.yaml")).expect("fixture");
        let names = Names { instance: "demo" };
        let gateway = COMPONENTS.iter().find(|c| c.name == "gateway").expect("gateway");
        let data = config_data(&pf, &names, gateway);
        let envs = gateway_url_envs();
        // Guards the parsing above: an empty list would pass vacuously.
        assert!(envs.contains(&"PAYFLOW_WALLET_URL"), "parsed {envs:?}");
        for env in envs {
            // Unset, the gateway falls back to 127.0.0.1, which is nothing in a pod.
            let value = data.get(env).unwrap_or_else(|| panic!("{env} is not in the gateway's ConfigMap"));
            let upstream = env.trim_start_matches("PAYFLOW_").trim_end_matches("_URL").to_lowercase();
            if COMPONENTS.iter().any(|c| c.name == upstream) {
                assert_eq!(value, &url(&names, &upstream), "{env}");
            }
        }
    }
}
