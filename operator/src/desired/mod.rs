//! Desired children of a PayFlow: a pure function from the resource (and the
//! generated secret data) to the objects the operator applies. No I/O here,
//! so the whole shape is covered by golden tests.

mod components;
mod data;
mod network;
mod schedule;

use std::collections::BTreeMap;

use kube::api::{ApiResource, GroupVersionKind};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::crd::{DataMode, PayFlow};

pub use components::{db_pool, postgres_max_connections, Component, COMPONENTS};
pub use data::{managed_urls, statefulset_names};
pub use schedule::migration_job_name;

/// Field manager of everything the reconciler applies.
pub const MANAGER: &str = "payflow-operator";
/// Annotation on pod templates: a hash of the configuration the pods read.
pub const CONFIG_HASH: &str = "payflow.io/config-hash";
/// Label every child carries.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// One object to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub name: String,
    pub object: Value,
}

impl Child {
    fn new(api_version: &'static str, kind: &'static str, name: String, mut object: Value, owner: &Value) -> Self {
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("ownerReferences".into(), json!([owner]));
        }
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(kind);
        Self { api_version, kind, name, object }
    }

    pub fn api_resource(&self) -> ApiResource {
        let (group, version) = match self.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", self.api_version),
        };
        ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, self.kind))
    }
}

/// Generated secret values (read from the cluster; created once, never regenerated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credentials {
    pub data: BTreeMap<String, String>,
}

/// Everything the pure builder needs besides the PayFlow itself.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub credentials: Credentials,
    /// Data of external Secrets referenced by the spec, for the config hash.
    pub external: BTreeMap<String, BTreeMap<String, String>>,
    /// Whether the migration Job of `spec.version` has succeeded.
    pub migrated: bool,
    /// `spec.volumeClaimTemplates` of the live managed StatefulSets, by name: immutable, so
    /// their size and class are kept.
    pub claim_templates: BTreeMap<String, Value>,
    /// The operator's own namespace, when known: its scaler reads a managed RabbitMQ's queue depth.
    pub operator_namespace: Option<String>,
}

/// Names and labels of one PayFlow's children.
pub struct Names<'a> {
    pub instance: &'a str,
}

impl Names<'_> {
    pub fn of(&self, part: &str) -> String {
        format!("{}-{part}", self.instance)
    }
    pub fn credentials(&self) -> String {
        self.of("credentials")
    }
    pub fn labels(&self, component: &str) -> Value {
        json!({
            "app.kubernetes.io/name": "payflow",
            INSTANCE_LABEL: self.instance,
            COMPONENT_LABEL: component,
            "app.kubernetes.io/managed-by": MANAGER,
        })
    }
    pub fn selector(&self, component: &str) -> Value {
        json!({ INSTANCE_LABEL: self.instance, COMPONENT_LABEL: component })
    }
}

/// The controller owner reference every child carries.
pub fn owner_reference(pf: &PayFlow) -> Value {
    json!({
        "apiVersion": PayFlow::api_version(&()),
        "kind": PayFlow::kind(&()),
        "name": pf.name_any(),
        "uid": pf.metadata.uid.clone().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// sha256 over sorted key/value pairs, shortened: changes exactly when the data does.
pub fn config_hash<'a>(parts: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<(&str, &str)> = parts.into_iter().collect();
    pairs.sort_unstable();
    let mut h = Sha256::new();
    for (k, v) in pairs {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..12])
}

/// Names of the generated credentials a PayFlow needs, per its spec.
pub fn credential_keys(pf: &PayFlow) -> Vec<&'static str> {
    let mut keys = vec!["service-token", "jwt-private-key"];
    if pf.spec.postgres.mode == DataMode::Managed {
        keys.push("postgres-password");
    }
    if pf.spec.rabbitmq.mode == DataMode::Managed {
        keys.push("rabbitmq-password");
    }
    keys
}

/// Every child of `pf`, in apply order (data services and configuration
/// first, then the migration Job, then the services it gates).
pub fn children(pf: &PayFlow, inputs: &Inputs) -> Vec<Child> {
    let owner = owner_reference(pf);
    let names = Names { instance: pf.metadata.name.as_deref().unwrap_or("payflow") };
    let mut out = Vec::new();
    out.extend(data::children(pf, &names, &owner, inputs));
    out.extend(components::config_maps(pf, &names, &owner, inputs));
    out.push(schedule::migration_job(pf, &names, &owner));
    if inputs.migrated {
        out.extend(components::workloads(pf, &names, &owner, inputs));
    }
    out.extend(components::services(&names, &owner));
    // The reversal reads the schema too: it moves to a new version with the Deployments.
    if inputs.migrated {
        out.push(schedule::reversal_cronjob(pf, &names, &owner, inputs));
    }
    out.extend(network::children(pf, &names, &owner, inputs.operator_namespace.as_deref()));
    out
}
