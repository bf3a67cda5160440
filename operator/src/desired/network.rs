//! Ingress, PodDisruptionBudgets, NetworkPolicies, and the optional KEDA ScaledObject.

use serde_json::{json, Value};

use super::components::{replicas, COMPONENTS};
use super::{Child, Names, INSTANCE_LABEL};
use crate::crd::PayFlow;

pub fn children(pf: &PayFlow, names: &Names, owner: &Value) -> Vec<Child> {
    let mut out = Vec::new();
    if let Some(ingress) = &pf.spec.gateway.ingress {
        let name = names.of("gateway");
        let mut spec = json!({
            "rules": [{"host": ingress.host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": name, "port": {"name": "http"}}},
            }]}}],
        });
        if let Some(class) = &ingress.class_name {
            spec["ingressClassName"] = json!(class);
        }
        if let Some(tls) = &ingress.tls_secret_name {
            spec["tls"] = json!([{"hosts": [ingress.host], "secretName": tls}]);
        }
        let obj = json!({"metadata": {"name": name, "labels": names.labels("gateway")}, "spec": spec});
        out.push(Child::new("networking.k8s.io/v1", "Ingress", name, obj, owner));
    }
    for c in COMPONENTS.iter() {
        // A budget only makes sense when one pod may go while others serve.
        if replicas(pf, c.name).is_some_and(|r| r > 1) {
            let name = names.of(c.name);
            let obj = json!({
                "metadata": {"name": name, "labels": names.labels(c.name)},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": names.selector(c.name)}},
            });
            out.push(Child::new("policy/v1", "PodDisruptionBudget", name, obj, owner));
        }
    }
    out.extend(network_policies(pf, names, owner));
    if let Some(a) = pf.spec.worker.autoscaling.as_ref().filter(|a| a.keda) {
        let name = names.of("worker");
        let obj = json!({
            "metadata": {"name": name, "labels": names.labels("worker")},
            "spec": {
                "scaleTargetRef": {"name": name},
                "minReplicaCount": a.min_replicas,
                "maxReplicaCount": a.max_replicas,
                "pollingInterval": a.polling_interval_seconds,
                "cooldownPeriod": a.cooldown_seconds,
                "triggers": [{
                    "type": "rabbitmq",
                    "metadata": {
                        "protocol": "http",
                        "queueName": "payflow.transactions",
                        "mode": "QueueLength",
                        "value": a.target_per_replica.to_string(),
                        "activationValue": a.activation_threshold.to_string(),
                    },
                    "authenticationRef": {"name": names.of("rabbitmq-management")},
                }],
            },
        });
        out.push(Child::new("keda.sh/v1alpha1", "ScaledObject", name, obj, owner));
        let (secret, key) = match (&pf.spec.rabbitmq.mode, &pf.spec.rabbitmq.secret_ref) {
            (crate::crd::DataMode::External, Some(s)) => (s.clone(), "managementUrl"),
            _ => (names.credentials(), "rabbitmq-management-url"),
        };
        let auth = names.of("rabbitmq-management");
        let obj = json!({
            "metadata": {"name": auth, "labels": names.labels("worker")},
            "spec": {"secretTargetRef": [{"parameter": "host", "name": secret, "key": key}]},
        });
        out.push(Child::new("keda.sh/v1alpha1", "TriggerAuthentication", auth, obj, owner));
    }
    out
}

/// Deny all ingress to this instance's pods, then allow the paths the
/// architecture needs: clients → gateway, gateway → services, services →
/// wallet and auth (JWKS), everything → its data services, and scrapes.
fn network_policies(_pf: &PayFlow, names: &Names, owner: &Value) -> Vec<Child> {
    let instance = json!({"matchLabels": {INSTANCE_LABEL: names.instance}});
    let from = |components: &[&str]| -> Value {
        json!([{"podSelector": {"matchExpressions": [
            {"key": INSTANCE_LABEL, "operator": "In", "values": [names.instance]},
            {"key": super::COMPONENT_LABEL, "operator": "In", "values": components},
        ]}}])
    };
    let policy = |suffix: &str, component: &str, rules: Value| {
        let name = names.of(&format!("allow-{suffix}"));
        let obj = json!({
            "metadata": {"name": name, "labels": names.labels(component)},
            "spec": {"podSelector": {"matchLabels": names.selector(component)}, "policyTypes": ["Ingress"], "ingress": rules},
        });
        Child::new("networking.k8s.io/v1", "NetworkPolicy", name, obj, owner)
    };
    let port = |p: u16| json!([{"port": p, "protocol": "TCP"}]);
    let deny_name = names.of("default-deny");
    let deny = Child::new(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        deny_name.clone(),
        json!({
            "metadata": {"name": deny_name, "labels": names.labels("network")},
            "spec": {"podSelector": instance, "policyTypes": ["Ingress"]},
        }),
        owner,
    );
    // Prometheus may scrape every component's port from any namespace labelled for it.
    let scrape = |p: u16| json!({"from": [{"namespaceSelector": {"matchLabels": {"payflow.io/scrape": "true"}}}], "ports": port(p)});
    vec![
        deny,
        policy("gateway", "gateway", json!([{"ports": port(3000)}])),
        policy(
            "auth",
            "auth",
            json!([
            {"from": from(&["gateway", "wallet", "transaction", "notification"]), "ports": port(3004)}, scrape(3004)]),
        ),
        policy(
            "wallet",
            "wallet",
            json!([
            {"from": from(&["gateway", "auth", "transaction", "worker", "reversal"]), "ports": port(3001)}, scrape(3001)]),
        ),
        policy("transaction", "transaction", json!([{"from": from(&["gateway"]), "ports": port(3002)}, scrape(3002)])),
        policy(
            "notification",
            "notification",
            json!([{"from": from(&["gateway"]), "ports": port(3003)}, scrape(3003)]),
        ),
        policy("worker", "worker", json!([scrape(3005)])),
        policy(
            "postgres",
            "postgres",
            json!([{"from": from(&["auth", "wallet", "transaction", "notification", "worker", "reversal", "migrate"]), "ports": port(5432)}]),
        ),
        policy("redis", "redis", json!([{"from": from(&["gateway", "auth"]), "ports": port(6379)}])),
        // The operator (another namespace) reads queue depth from the management API.
        policy(
            "rabbitmq",
            "rabbitmq",
            json!([
                {"from": from(&["transaction", "worker", "notification"]), "ports": port(5672)},
                {"from": [{"namespaceSelector": {}}], "ports": port(15672)},
            ]),
        ),
    ]
}
