//! The `PayFlow` custom resource (group `payflow.io`, version `v1alpha1`).
//! These types are the source of truth; `crds/` holds their generated YAML.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One payment platform: every PayFlow component, its data services, and how they run.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "payflow.io",
    version = "v1alpha1",
    kind = "PayFlow",
    plural = "payflows",
    shortname = "pf",
    namespaced,
    status = "PayFlowStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Workers","type":"integer","jsonPath":".status.worker.currentReplicas"}"#,
    printcolumn = r#"{"name":"Queue","type":"integer","jsonPath":".status.worker.queueDepth"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PayFlowSpec {
    /// Image tag of every PayFlow component (the `payflow` binary).
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$')").message("must be an image tag"))]
    pub version: String,
    #[serde(default)]
    pub image: ImageSpec,
    #[serde(default)]
    pub gateway: GatewaySpec,
    #[serde(default)]
    pub auth: ComponentSpec,
    #[serde(default)]
    pub wallet: ComponentSpec,
    #[serde(default)]
    pub transaction: ComponentSpec,
    #[serde(default)]
    pub notification: ComponentSpec,
    #[serde(default)]
    pub worker: WorkerSpec,
    #[serde(default)]
    pub reversal: ReversalSpec,
    #[serde(default)]
    pub postgres: DataServiceSpec,
    #[serde(default)]
    pub redis: DataServiceSpec,
    #[serde(default)]
    pub rabbitmq: DataServiceSpec,
    /// Stop every write the operator would make; the status shows `Paused`.
    #[serde(default)]
    pub suspend: bool,
    /// What happens to the volumes of managed data services when the PayFlow is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Repository of the PayFlow image (the tag is `spec.version`).
    #[serde(default = "default_repository")]
    pub repository: String,
    /// `Always`, `IfNotPresent` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<String>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self { repository: default_repository(), pull_policy: None }
    }
}

fn default_repository() -> String {
    "ghcr.io/payflow/payflow".into()
}

/// A stateless component: how many, and how big.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Pods of this component (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(flatten)]
    pub component: ComponentSpec,
    /// An Ingress for the gateway, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Secret with the TLS certificate for `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Fixed worker count, used when `autoscaling` is absent (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

/// Queue-depth scaling with KEDA's RabbitMQ scaler semantics.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct AutoscalingSpec {
    #[serde(default = "default_min")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Messages (ready + unacknowledged) one worker is expected to handle.
    #[serde(default = "default_target")]
    #[schemars(range(min = 1))]
    pub target_per_replica: i64,
    #[serde(default = "default_polling")]
    #[schemars(range(min = 1, max = 3600))]
    pub polling_interval_seconds: i32,
    /// Depth above which workers scale from 0 to 1.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_threshold: i64,
    /// Seconds after the queue was last active before scaling 1 → 0.
    #[serde(default = "default_cooldown")]
    #[schemars(range(min = 0))]
    pub cooldown_seconds: i32,
    /// Seconds a scale-down waits for the highest recommendation to age out (HPA default 300).
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
    /// Replicas to run after repeated failures to read the queue depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_replicas: Option<i32>,
    /// Emit a KEDA ScaledObject instead of scaling in the operator.
    #[serde(default)]
    pub keda: bool,
}

fn default_min() -> i32 {
    1
}
fn default_target() -> i64 {
    50
}
fn default_polling() -> i32 {
    15
}
fn default_cooldown() -> i32 {
    300
}
fn default_stabilization() -> i32 {
    300
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReversalSpec {
    /// Cron schedule of the reversal CronJob.
    #[serde(default = "default_schedule")]
    #[x_kube(validation = Rule::new(r"self.matches('^(@(yearly|annually|monthly|weekly|daily|hourly)|[0-9*/,-]+ [0-9*/,-]+ [0-9*/,?LW-]+ [0-9A-Za-z*/,-]+ [0-9A-Za-z*/,?L#-]+)$')").message("must be a cron schedule with five fields"))]
    pub schedule: String,
    /// Transactions pending longer than this are reversed.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 5, max = 86400))]
    pub pending_timeout_seconds: i32,
    #[serde(default)]
    pub suspend: bool,
}

impl Default for ReversalSpec {
    fn default() -> Self {
        Self { schedule: default_schedule(), pending_timeout_seconds: default_timeout(), suspend: false }
    }
}

fn default_schedule() -> String {
    "* * * * *".into()
}
fn default_timeout() -> i32 {
    60
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataMode {
    /// A StatefulSet the operator runs (demos, MicroK8s).
    #[default]
    Managed,
    /// Connection details from `secretRef` (CloudNativePG, a cloud service, ...).
    External,
}

/// Postgres, Redis or RabbitMQ: run by the operator, or external.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'external' || has(self.secretRef)").message("external mode needs secretRef"))]
#[x_kube(validation = Rule::new("!has(oldSelf.storageClass) || (has(self.storageClass) && self.storageClass == oldSelf.storageClass)").message("storageClass is immutable"))]
pub struct DataServiceSpec {
    #[serde(default)]
    pub mode: DataMode,
    /// Volume size of the managed StatefulSet (default 1Gi; Postgres 10Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// External mode: a Secret with `url` (and for RabbitMQ `managementUrl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum DeletionPolicy {
    /// Keep the volumes of managed data services.
    #[default]
    Retain,
    /// Delete them with the PayFlow.
    Delete,
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PayFlowStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Pending`, `Progressing`, `Ready`, `Degraded` or `Paused`.
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Readiness per component, e.g. `gateway: {ready: 2, desired: 2}`.
    #[serde(default)]
    pub components: BTreeMap<String, ComponentStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reversal: Option<ReversalStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub ready: i32,
    pub desired: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<i64>,
    pub current_replicas: i32,
    pub desired_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// The depth could not be read repeatedly; running the fallback count.
    #[serde(default)]
    pub fallback: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReversalStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<String>,
}

/// The CRD as YAML, exactly as `crds/` holds it.
pub fn crd_yaml() -> anyhow::Result<String> {
    use kube::CustomResourceExt;
    Ok(serde_yaml::to_string(&PayFlow::crd())?)
}
