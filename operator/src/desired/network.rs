//! Ingress, PodDisruptionBudgets, NetworkPolicies, and the optional KEDA ScaledObject.

use serde_json::{json, Value};

use super::components::{replicas, COMPONENTS};
use super::{Child, Names, INSTANCE_LABEL};
use crate::crd::PayFlow;

/// What the Ingress sends to the gateway: the public routes of api.md (every `/api/...`, `/health`)
/// and the JWKS the gateway publishes, so the gateway's `/metrics`, `/healthz` and `/readyz` stay
/// inside the cluster. An allow-list, because the gateway matches paths ignoring case and a
/// trailing slash: `/Metrics/` would slip past an exclusion. As `Prefix` paths, which match whole
/// segments (`/api` matches `/api/x`, not `/apix`) and ignore a trailing slash, as the gateway does.
const INGRESS_PREFIXES: [&str; 3] = ["/api", "/health", "/.well-known/jwks.json"];

/// Label of the namespaces whose pods may call a managed RabbitMQ's management API (port 15672)
/// besides the operator's own (admitted by name when the operator knows it, and labelled in
/// manifests/operator/namespace.yaml): KEDA's when `keda: true`, labelled by hand, since nothing
/// tells the operator where KEDA runs.
const MANAGEMENT_ACCESS_LABEL: &str = "payflow.io/rabbitmq-management";

pub fn children(pf: &PayFlow, names: &Names, owner: &Value, operator_namespace: Option<&str>) -> Vec<Child> {
    let mut out = Vec::new();
    if let Some(ingress) = &pf.spec.gateway.ingress {
        let name = names.of("gateway");
        let paths: Vec<Value> = INGRESS_PREFIXES
            .iter()
            .map(|path| {
                json!({"path": path, "pathType": "Prefix",
                    "backend": {"service": {"name": name, "port": {"name": "http"}}}})
            })
            .collect();
        let mut spec = json!({"rules": [{"host": ingress.host, "http": {"paths": paths}}]});
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
    out.extend(network_policies(pf, names, owner, operator_namespace));
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
fn network_policies(_pf: &PayFlow, names: &Names, owner: &Value, operator_namespace: Option<&str>) -> Vec<Child> {
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
        // The operator and KEDA (other namespaces) read the queue depth from the management API;
        // nothing else needs it, and it can do anything the broker's credentials allow.
        policy(
            "rabbitmq",
            "rabbitmq",
            json!([
                {"from": from(&["transaction", "worker", "notification"]), "ports": port(5672)},
                {"from": management_readers(operator_namespace), "ports": port(15672)},
            ]),
        ),
    ]
}

/// Who may call the management API: labelled namespaces and, by its name (a label every namespace
/// carries), the operator's own, so an operator installed elsewhere than payflow-system keeps its
/// scaler without a manual label.
fn management_readers(operator_namespace: Option<&str>) -> Value {
    let mut from = vec![json!({"namespaceSelector": {"matchLabels": {MANAGEMENT_ACCESS_LABEL: "true"}}})];
    if let Some(ns) = operator_namespace {
        from.push(json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}));
    }
    Value::Array(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::owner_reference;

    /// The gateway's route table and the routes every service adds (health, metrics), as compiled.
    const GATEWAY_ROUTES: &str = include_str!("../../../services/gateway/src/routes.rs");
    const COMMON_ROUTES: &str = include_str!("../../../services/common/src/health.rs");
    /// Served by every service for the cluster only: probes and scrapes.
    const INTERNAL: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

    fn full_in(operator_namespace: Option<&str>) -> Vec<Child> {
        let pf: PayFlow = serde_yaml::from_str(include_str!("../../tests/fixtures/full.yaml")).expect("fixture");
        children(&pf, &Names { instance: "demo" }, &owner_reference(&pf), operator_namespace)
    }

    fn full() -> Vec<Child> {
        full_in(None)
    }

    /// Every `.route("<path>"` of a source file outside its tests, path parameters as a sample value.
    fn routes(source: &str) -> Vec<String> {
        let code = source.split("#[cfg(test)]").next().unwrap_or_default();
        code.split(".route(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(|path| {
                path.split('/')
                    .map(|seg| if seg.starts_with('{') { "0f8fad5b-d9cb-469f-a165-70867728950e" } else { seg })
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect()
    }

    /// Ingress path matching as Kubernetes defines it: `Exact` is the whole path, `Prefix`
    /// compares `/`-separated elements (case-sensitive, a trailing slash ignored).
    fn ingress_routes(ingress: &Value, request: &str) -> bool {
        let elements = |p: &str| p.split('/').filter(|e| !e.is_empty()).map(String::from).collect::<Vec<_>>();
        let paths = ingress["spec"]["rules"][0]["http"]["paths"].as_array().expect("paths");
        paths.iter().any(|p| {
            let path = p["path"].as_str().expect("path");
            match p["pathType"].as_str() {
                Some("Exact") => path == request,
                Some("Prefix") => elements(request).starts_with(&elements(path)),
                other => panic!("pathType {other:?}"),
            }
        })
    }

    #[test]
    fn the_ingress_routes_every_public_route_and_none_of_the_internal_ones() {
        let objects = full();
        let ingress = &objects.iter().find(|c| c.kind == "Ingress").expect("an Ingress").object;
        let gateway = routes(GATEWAY_ROUTES);
        let common = routes(COMMON_ROUTES);
        // Guards the parsing: empty lists would pass vacuously.
        assert!(gateway.contains(&"/api/metrics".to_string()), "parsed {gateway:?}");
        assert!(common.contains(&"/health".to_string()) && common.contains(&"/metrics".to_string()), "{common:?}");
        for path in gateway.iter().chain(&common).filter(|p| !INTERNAL.contains(&p.as_str())) {
            assert!(ingress_routes(ingress, path), "{path} is a public route the Ingress does not send to the gateway");
            assert!(ingress_routes(ingress, &format!("{path}/")), "{path}/ (clients may add a trailing slash)");
        }
        for path in INTERNAL.iter().chain(&["/internal/transfers", "/", "/apix"]) {
            for variant in [path.to_string(), format!("{path}/"), path.to_uppercase()] {
                assert!(!ingress_routes(ingress, &variant), "the Ingress exposes {variant}");
            }
        }
        let backends: Vec<&Value> = ingress["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .expect("paths")
            .iter()
            .map(|p| &p["backend"]["service"])
            .collect();
        assert!(backends.iter().all(|b| b["name"] == "demo-gateway" && b["port"]["name"] == "http"), "{backends:?}");
    }

    #[test]
    fn only_labelled_namespaces_and_the_operators_own_reach_the_rabbitmq_management_port() {
        let management_from = |objects: &[Child]| {
            let policy = &objects.iter().find(|c| c.name == "demo-allow-rabbitmq").expect("policy").object;
            let rules = policy["spec"]["ingress"].as_array().expect("rules");
            let management: Vec<&Value> = rules.iter().filter(|r| r["ports"][0]["port"] == 15672).collect();
            assert_eq!(management.len(), 1, "{rules:?}");
            management[0]["from"].clone()
        };
        let labelled = json!({"namespaceSelector": {"matchLabels": {"payflow.io/rabbitmq-management": "true"}}});
        assert_eq!(management_from(&full()), json!([labelled]));
        assert_eq!(
            management_from(&full_in(Some("platform-ops"))),
            json!([labelled, {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "platform-ops"}}}])
        );
        let objects = full();
        // No policy admits every namespace.
        for c in objects.iter().filter(|c| c.kind == "NetworkPolicy") {
            let text = c.object.to_string();
            assert!(!text.contains("\"namespaceSelector\":{}"), "{} admits every namespace: {text}", c.name);
        }
    }
}
