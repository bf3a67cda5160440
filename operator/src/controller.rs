//! The reconciler: PayFlow in, children applied with server-side apply under
//! one field manager, status out. Shape after kube-rs/controller-rs:
//! a `Context`, `reconcile`, `error_policy`, metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{predicates, reflector, watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{ComponentStatus, DataMode, DeletionPolicy, PayFlow, PayFlowStatus, ReversalStatus};
use crate::credentials;
use crate::desired::{self, Child, Inputs, Names, COMPONENTS, INSTANCE_LABEL, MANAGER};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::status::{merge_conditions, Wanted};

pub const FINALIZER: &str = "payflow.io/cleanup";

/// Requeue of a settled PayFlow: the watches on children bring any change
/// sooner; once a minute keeps the mirrored reversal run (a per-minute
/// CronJob by default) current, so idle costs one reconcile a minute.
pub const IDLE_REQUEUE: Duration = Duration::from_secs(60);
const PROGRESS_REQUEUE: Duration = Duration::from_secs(15);

/// What was last applied per child: the desired content's hash and the live
/// spec marker the apiserver answered. Same both → nothing to write.
type Applied = HashMap<(String, String, String), (String, String)>;

pub struct Context {
    pub client: Client,
    /// Watch only this namespace (a namespaced install, and tests); all when `None`.
    pub namespace: Option<String>,
    /// The operator's own namespace, when it runs in a cluster: admitted to managed RabbitMQs'
    /// management port (see desired::network).
    pub home_namespace: Option<String>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    applied: Mutex<Applied>,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<PayFlow>, u32>>,
}

impl Context {
    /// An `Api` over the watched namespace (or all of them).
    pub fn watched<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    pub fn new(client: Client, metrics: Arc<Metrics>, namespace: Option<String>) -> Self {
        let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("HOSTNAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            namespace,
            home_namespace: None,
            metrics,
            applied: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_home_namespace(mut self, home_namespace: Option<String>) -> Self {
        self.home_namespace = home_namespace;
        self
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A hash of the given parts, for watch predicates.
fn fingerprint(parts: &[i64]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    Some(h.finish())
}

/// PayFlow events that matter: spec changes, deletion, finalizer changes (the
/// finalizer helper waits for the event of its own patch). Status-only
/// changes, including our own status writes, do not trigger a reconcile.
fn payflow_changed(pf: &PayFlow) -> Option<u64> {
    let m = &pf.metadata;
    fingerprint(&[
        m.generation.unwrap_or_default(),
        i64::from(m.deletion_timestamp.is_some()),
        m.finalizers.as_ref().map_or(0, |f| f.len() as i64),
    ])
}

/// Deployments trigger on spec changes and on readiness changes (the status reports them).
fn deployment_changed(d: &Deployment) -> Option<u64> {
    let st = d.status.as_ref();
    fingerprint(&[
        d.metadata.generation.unwrap_or_default(),
        i64::from(st.and_then(|s| s.ready_replicas).unwrap_or_default()),
        i64::from(st.and_then(|s| s.updated_replicas).unwrap_or_default()),
        st.and_then(|s| s.observed_generation).unwrap_or_default(),
    ])
}

/// The migration Job triggers when it finishes (that gates the rollout).
fn job_changed(j: &Job) -> Option<u64> {
    let st = j.status.as_ref();
    fingerprint(&[
        j.metadata.generation.unwrap_or_default(),
        i64::from(st.and_then(|s| s.succeeded).unwrap_or_default()),
        i64::from(st.and_then(|s| s.failed).unwrap_or_default()),
    ])
}

/// Runs the controller until the process is told to stop. Watch events are
/// filtered so that an idle PayFlow costs only its requeue interval: a
/// CronJob's per-minute runs or our own status writes do not wake it.
pub async fn run(ctx: Arc<Context>) {
    let cfg = watcher::Config::default();
    let children = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let (reader, writer) = reflector::store();
    let payflows = watcher(ctx.watched::<PayFlow>(), cfg)
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(payflow_changed, Default::default());
    Controller::for_stream(payflows, reader)
        .owns_stream(
            watcher(ctx.watched::<Deployment>(), children.clone())
                .default_backoff()
                .touched_objects()
                .predicate_filter(deployment_changed, Default::default()),
        )
        .owns_stream(
            watcher(ctx.watched::<Job>(), children.clone())
                .default_backoff()
                .touched_objects()
                .predicate_filter(job_changed, Default::default()),
        )
        .owns_stream(
            watcher(ctx.watched::<StatefulSet>(), children.clone())
                .default_backoff()
                .touched_objects()
                .predicate_filter(predicates::generation, Default::default()),
        )
        .owns_stream(
            watcher(ctx.watched::<CronJob>(), children.clone())
                .default_backoff()
                .touched_objects()
                .predicate_filter(predicates::generation, Default::default()),
        )
        .owns_stream(
            watcher(ctx.watched::<ConfigMap>(), children.clone())
                .default_backoff()
                .touched_objects()
                .predicate_filter(predicates::resource_version, Default::default()),
        )
        .owns_stream(
            watcher(ctx.watched::<Service>(), children)
                .default_backoff()
                .touched_objects()
                .predicate_filter(predicates::generation, Default::default()),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

pub async fn reconcile(pf: Arc<PayFlow>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let ns = pf.namespace().unwrap_or_else(|| "default".into());
    let api: Api<PayFlow> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, pf.clone(), |event| async {
        match event {
            Finalizer::Apply(pf) => apply(&pf, &ctx).await,
            Finalizer::Cleanup(pf) => cleanup(&pf, &ctx).await,
        }
    })
    .await
    .map_err(Error::from);
    if result.is_ok() {
        lock(&ctx.failures).remove(&ObjectRef::from_obj(pf.as_ref()));
    }
    result
}

/// Exponential backoff per object: 5 s, 10 s, 20 s ... up to 5 min; reset on success.
pub fn error_policy(pf: Arc<PayFlow>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error);
    let key = ObjectRef::from_obj(pf.as_ref());
    let mut failures = lock(&ctx.failures);
    let n = failures.entry(key).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(5u64.saturating_mul(1 << (*n - 1).min(6))).min(Duration::from_secs(300));
    tracing::warn!(payflow = %pf.name_any(), error = %error, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

async fn publish(ctx: &Context, pf: &PayFlow, type_: EventType, reason: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &pf.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish an event");
    }
}

async fn apply(pf: &PayFlow, ctx: &Context) -> Result<Action> {
    let ns = pf.namespace().unwrap_or_else(|| "default".into());
    let name = pf.name_any();
    let names = Names { instance: &name };
    if pf.spec.suspend {
        // Suspended: no writes but the status saying so.
        let status = paused_status(pf);
        write_status(pf, ctx, status).await?;
        return Ok(Action::requeue(IDLE_REQUEUE));
    }

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let (credentials, created) = credentials::ensure(&secrets, pf).await?;
    if created {
        publish(ctx, pf, EventType::Normal, "SecretsGenerated", format!("Generated {}", names.credentials())).await;
    }
    let mut external = BTreeMap::new();
    for secret in [&pf.spec.postgres, &pf.spec.redis, &pf.spec.rabbitmq]
        .into_iter()
        .filter(|d| d.mode == DataMode::External)
        .filter_map(|d| d.secret_ref.clone())
    {
        if let Some(s) = secrets.get_opt(&secret).await? {
            external.insert(secret, credentials::decode(&s));
        }
    }

    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let job_name = desired::migration_job_name(pf, &names);
    let mut migration = jobs.get_opt(&job_name).await?;
    let mut retrying = false;
    let mut refused = Refused::default();
    if let Some(why) = migration.as_ref().and_then(|j| migration_retry_due(j, k8s_openapi::jiff::Timestamp::now())) {
        // Its name is fixed per version, so a failed Job would stay failed for good; most
        // failures pass (Postgres not up yet), and `payflow migrate` is safe to run again.
        match jobs.delete(&job_name, &DeleteParams::background()).await {
            Ok(_) => {
                lock(&ctx.applied).remove(&(ns.clone(), "Job".into(), job_name.clone()));
                let note = format!("Deleted {job_name} to run it again: {why}");
                publish(ctx, pf, EventType::Warning, "MigrationRetried", note).await;
                migration = None;
                retrying = true;
            }
            Err(e) => refused.add("Job", &job_name, e.into())?,
        }
    }
    let migrated = migration.as_ref().and_then(|j| j.status.as_ref()).and_then(|s| s.succeeded).unwrap_or(0) > 0;
    let migration_failure = migration.as_ref().and_then(job_failure);
    let statefulsets: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &kube::api::ApiResource::erase::<StatefulSet>(&()));
    let mut claim_templates = BTreeMap::new();
    for sts in desired::statefulset_names(pf, &names) {
        if let Some(live) = statefulsets.get_opt(&sts).await? {
            if let Some(claims) = live.data.pointer("/spec/volumeClaimTemplates") {
                claim_templates.insert(sts, claims.clone());
            }
        }
    }
    let operator_namespace = ctx.home_namespace.clone();
    let inputs = Inputs { credentials, external, migrated, claim_templates, operator_namespace };

    let wanted = desired::children(pf, &inputs);
    let mut wrote = 0usize;
    for child in &wanted {
        // A Job's pod template is immutable and the Job runs once: created, never changed
        // (a retry deletes it first; the next pass creates it).
        if child.kind == "Job" && (migration.is_some() || retrying) {
            continue;
        }
        // Rolled without its ConfigMap, a component would start on the old settings and stay
        // on them: its config hash would already name the new ones.
        if child.kind == "Deployment" && refused.has("ConfigMap", &child.name) {
            refused.skipped.push(format!("Deployment {}: not applied, its ConfigMap was refused", child.name));
            continue;
        }
        match apply_child(ctx, &ns, child).await {
            Ok(true) => wrote += 1,
            Ok(false) => {}
            Err(e) => refused.add(child.kind, &child.name, e)?,
        }
    }
    if migration.is_none() && !retrying && !refused.has("Job", &job_name) {
        publish(ctx, pf, EventType::Normal, "Migrating", format!("Started {job_name} for version {}", pf.spec.version))
            .await;
    }
    if wrote > 0 {
        tracing::info!(payflow = %name, applied = wrote, "children applied");
    }
    prune(ctx, &ns, pf, &wanted, &mut refused).await?;
    if !refused.children.is_empty() {
        // One Event per pass: the recorder folds Events of one reason into a series anyway.
        publish(ctx, pf, EventType::Warning, "ApplyFailed", truncate(refused.messages().join("; "), 1000)).await;
    }

    let status = observed_status(pf, ctx, &ns, &names, migrated, migration_failure, &refused.messages()).await?;
    let ready = status.phase == "Ready";
    write_status(pf, ctx, status).await?;
    // The status says what was refused; the error makes the controller retry with backoff.
    if let Some(e) = refused.first {
        return Err(e);
    }
    Ok(Action::requeue(if ready { IDLE_REQUEUE } else { PROGRESS_REQUEUE }))
}

/// At most `max` bytes of `text` (an Event's note may hold 1 kB).
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// Children the API server refused in one pass. A refusal (an answer such as 422 for an
/// immutable field or an invalid value, 403, a webhook's denial) stops only that child; the
/// others are still applied and the status reports it. Any other error (the API server
/// unreachable) ends the pass at once, as nothing else would get through either.
#[derive(Default)]
struct Refused {
    /// ("Kind name", the API server's message).
    children: Vec<(String, String)>,
    /// Children held back because one they depend on was refused.
    skipped: Vec<String>,
    /// The first refusal, returned once the status is written.
    first: Option<Error>,
}

impl Refused {
    fn add(&mut self, kind: &str, name: &str, error: Error) -> Result<()> {
        match error {
            Error::Kube(kube::Error::Api(status)) => {
                self.children.push((format!("{kind} {name}"), status.message.clone()));
                self.first.get_or_insert(Error::Kube(kube::Error::Api(status)));
                Ok(())
            }
            other => Err(other),
        }
    }

    fn has(&self, kind: &str, name: &str) -> bool {
        let what = format!("{kind} {name}");
        self.children.iter().any(|(w, _)| *w == what)
    }

    fn messages(&self) -> Vec<String> {
        let refused = self.children.iter().map(|(what, message)| format!("{what}: {message}"));
        refused.chain(self.skipped.iter().cloned()).collect()
    }
}

fn content_hash(child: &Child) -> String {
    desired::config_hash([("object", child.object.to_string().as_str())])
}

/// What identifies the live object's spec: its generation where the kind has
/// one (status updates, such as a CronJob's last run, do not change it), else
/// its resourceVersion.
fn spec_marker(meta: &kube::api::ObjectMeta) -> String {
    match (meta.generation, &meta.resource_version) {
        (Some(g), _) => format!("g{g}"),
        (None, Some(rv)) => format!("r{rv}"),
        (None, None) => String::new(),
    }
}

/// Server-side apply of one child, skipped when neither the desired content
/// nor the live object's spec changed since the last apply. Returns whether it wrote.
async fn apply_child(ctx: &Context, ns: &str, child: &Child) -> Result<bool> {
    let ar = child.api_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let key = (ns.to_string(), child.kind.to_string(), child.name.clone());
    let hash = content_hash(child);
    let previous = lock(&ctx.applied).get(&key).cloned();
    if let Some((applied_hash, applied_marker)) = previous {
        if applied_hash == hash {
            let live = api.get_metadata_opt(&child.name).await?;
            if live.map(|l| spec_marker(&l.metadata)) == Some(applied_marker) {
                return Ok(false);
            }
        }
    }
    let params = PatchParams::apply(MANAGER).force();
    let result = api.patch(&child.name, &params, &Patch::Apply(&child.object)).await?;
    ctx.metrics.applied(child.kind);
    lock(&ctx.applied).insert(key, (hash, spec_marker(&result.metadata)));
    Ok(true)
}

/// Kinds that come and go with the spec; anything else stays until the PayFlow goes. Managed
/// StatefulSets are not here: switching a data service to external must not delete its data
/// (docs/runbook.md). The KEDA kinds are optional (the group may not be served).
const PRUNABLE: &[(&str, &str, bool)] = &[
    ("networking.k8s.io/v1", "Ingress", false),
    ("policy/v1", "PodDisruptionBudget", false),
    // With keda turned off the operator's scaler writes the worker's replicas: a ScaledObject
    // left behind (and the HPA KEDA keeps for it) would write them too.
    ("keda.sh/v1alpha1", "ScaledObject", true),
    ("keda.sh/v1alpha1", "TriggerAuthentication", true),
];

/// Deletes this PayFlow's children of the prunable kinds that it no longer wants: only those
/// carrying its labels and its controller owner reference.
async fn prune(ctx: &Context, ns: &str, pf: &PayFlow, wanted: &[Child], refused: &mut Refused) -> Result<()> {
    let instance = pf.name_any();
    let uid = pf.metadata.uid.as_deref().unwrap_or_default();
    let lp =
        ListParams::default().labels(&format!("{INSTANCE_LABEL}={instance},app.kubernetes.io/managed-by={MANAGER}"));
    // Discovery once per group and pass: the optional kinds share one.
    let mut served: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (api_version, kind, optional) in PRUNABLE {
        if *optional {
            if !served.contains_key(api_version) {
                served.insert(api_version, served_kinds(ctx, api_version).await?);
            }
            if !served[api_version].iter().any(|k| k == kind) {
                continue;
            }
        }
        let probe = Child { api_version, kind, name: String::new(), object: json!({}) };
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &probe.api_resource());
        let live = match api.list_metadata(&lp).await {
            Ok(list) => list,
            // Served but not permitted (KEDA installed, manifests/keda-rbac not applied): then
            // the operator could not have created any either.
            Err(kube::Error::Api(s)) if *optional && s.code == 403 => {
                tracing::debug!(kind, "not permitted to list (manifests/keda-rbac not applied?): not pruning them");
                continue;
            }
            Err(e) => {
                refused.add(kind, "(list)", e.into())?;
                continue;
            }
        };
        for live in live {
            let name = live.name_any();
            let ours = live.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == uid);
            if ours && !wanted.iter().any(|w| w.kind == *kind && w.name == name) {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {
                        lock(&ctx.applied).remove(&(ns.to_string(), kind.to_string(), name));
                    }
                    Err(e) => refused.add(kind, &name, e.into())?,
                }
            }
        }
    }
    Ok(())
}

/// The kinds the API server serves in `api_version` (discovery, which every client may read);
/// none when the group is not served.
async fn served_kinds(ctx: &Context, api_version: &str) -> Result<Vec<String>> {
    match ctx.client.list_api_group_resources(api_version).await {
        Ok(list) => Ok(list.resources.into_iter().map(|r| r.kind).collect()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn paused_status(pf: &PayFlow) -> PayFlowStatus {
    let old = pf.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions = merge_conditions(
        &old.conditions,
        &[Wanted { kind: "Paused", status: true, reason: "Suspended", message: "spec.suspend is true".into() }],
        pf.metadata.generation,
        now,
    );
    let mut merged = old.conditions.clone();
    merged.retain(|c| c.type_ != "Paused");
    merged.extend(conditions);
    PayFlowStatus { observed_generation: pf.metadata.generation, phase: "Paused".into(), conditions: merged, ..old }
}

async fn observed_status(
    pf: &PayFlow,
    ctx: &Context,
    ns: &str,
    names: &Names<'_>,
    migrated: bool,
    migration_failure: Option<String>,
    refused: &[String],
) -> Result<PayFlowStatus> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let mut components = BTreeMap::new();
    // Not Ready while part of the spec could not be applied, whatever still runs.
    let apply_failed = !refused.is_empty();
    let mut all_ready = migrated && !apply_failed;
    let mut failures: Vec<String> = refused.to_vec();
    failures.extend(migration_failure);
    for c in COMPONENTS.iter() {
        let d = deployments.get_opt(&names.of(c.name)).await?;
        let desired = d.as_ref().and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas).unwrap_or(0);
        let st = d.as_ref().and_then(|d| d.status.as_ref());
        let ready = st.and_then(|s| s.ready_replicas).unwrap_or(0);
        let updated = st.and_then(|s| s.updated_replicas).unwrap_or(0);
        let observed = st.and_then(|s| s.observed_generation) == d.as_ref().and_then(|d| d.metadata.generation);
        if d.is_none() || !observed || ready < desired || updated < desired {
            all_ready = false;
        }
        if let Some(stuck) = st.and_then(deadline_exceeded) {
            failures.push(format!("{}: {stuck}", c.name));
        }
        components.insert(c.name.to_string(), ComponentStatus { ready, desired });
    }
    let degraded = !failures.is_empty();
    let degraded_reason = if apply_failed { "ApplyFailed" } else { "Failing" };
    let cronjobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), ns);
    let reversal = cronjobs.get_opt(&names.of("reversal")).await?.and_then(|c| c.status).map(|s| ReversalStatus {
        last_schedule_time: s.last_schedule_time.map(|t| t.0.to_string()),
        last_successful_time: s.last_successful_time.map(|t| t.0.to_string()),
    });
    // The scaler writes status.worker itself; keep what is there.
    let worker = old_worker(pf);
    let fallback = worker.as_ref().is_some_and(|w| w.fallback);
    let old = pf.status.clone().unwrap_or_default();
    let (phase, reason, message) = if all_ready {
        ("Ready", "AllComponentsReady", "Every component is ready".to_string())
    } else if degraded {
        ("Degraded", degraded_reason, failures.join("; "))
    } else if !migrated {
        ("Progressing", "Migrating", format!("Waiting for the migration of version {}", pf.spec.version))
    } else {
        let waiting: Vec<String> =
            components.iter().filter(|(_, s)| s.ready < s.desired || s.desired == 0).map(|(n, _)| n.clone()).collect();
        ("Progressing", "RollingOut", format!("Waiting for {}", waiting.join(", ")))
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions = merge_conditions(
        &old.conditions,
        &[
            Wanted { kind: "Ready", status: all_ready, reason, message: message.clone() },
            Wanted { kind: "Progressing", status: !all_ready, reason, message },
            if degraded {
                Wanted { kind: "Degraded", status: true, reason: degraded_reason, message: failures.join("; ") }
            } else {
                Wanted { kind: "Degraded", status: false, reason: "NoErrors", message: String::new() }
            },
            Wanted {
                kind: "Fallback",
                status: fallback,
                reason: if fallback { "QueueDepthUnavailable" } else { "QueueDepthRead" },
                message: String::new(),
            },
            Wanted { kind: "Paused", status: false, reason: "Running", message: String::new() },
        ],
        pf.metadata.generation,
        now,
    );
    Ok(PayFlowStatus {
        observed_generation: pf.metadata.generation,
        phase: phase.into(),
        conditions,
        components,
        worker,
        reversal,
    })
}

/// Why a Job failed, if it did (its `Failed` condition).
fn job_failure(job: &Job) -> Option<String> {
    let failed =
        job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Failed" && c.status == "True")?;
    let why = failed.message.clone().or_else(|| failed.reason.clone()).unwrap_or_default();
    Some(format!("migration job {} failed: {why}", job.metadata.name.as_deref().unwrap_or_default()))
}

/// How long a failed migration Job stays (its pods and their logs to look at) before the
/// operator deletes it so that it runs again.
pub const MIGRATION_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Why the migration Job failed, once it failed at least `MIGRATION_RETRY_AFTER` before `now`.
fn migration_retry_due(job: &Job, now: k8s_openapi::jiff::Timestamp) -> Option<String> {
    let why = job_failure(job)?;
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let failed = conditions.iter().find(|c| c.type_ == "Failed" && c.status == "True")?;
    let since = failed.last_transition_time.as_ref().map_or(i64::MIN, |t| t.0.as_second());
    let after = MIGRATION_RETRY_AFTER.as_secs().try_into().unwrap_or(i64::MAX);
    (now.as_second().saturating_sub(since) >= after).then_some(why)
}

/// A Deployment that stopped progressing (`ProgressDeadlineExceeded`), with its message.
fn deadline_exceeded(status: &k8s_openapi::api::apps::v1::DeploymentStatus) -> Option<String> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Progressing" && c.status == "False")
        .map(|c| c.message.clone().or_else(|| c.reason.clone()).unwrap_or_default())
}

fn old_worker(pf: &PayFlow) -> Option<crate::crd::WorkerStatus> {
    pf.status.as_ref().and_then(|s| s.worker.clone())
}

/// Writes the status only when it differs: an unchanged PayFlow costs no write.
async fn write_status(pf: &PayFlow, ctx: &Context, status: PayFlowStatus) -> Result<()> {
    if pf.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<PayFlow> = Api::namespaced(ctx.client.clone(), &pf.namespace().unwrap_or_default());
    let mut body = serde_json::to_value(&status)?;
    // `status.worker` belongs to the scaler's field manager.
    if let Some(o) = body.as_object_mut() {
        o.remove("worker");
    }
    let patch = json!({"apiVersion": PayFlow::api_version(&()), "kind": PayFlow::kind(&()), "status": body});
    api.patch_status(&pf.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    ctx.metrics.status_written();
    Ok(())
}

/// The finalizer: children go with their owner reference; the volumes of
/// managed data services (PVCs are not owned) follow `deletionPolicy`.
async fn cleanup(pf: &PayFlow, ctx: &Context) -> Result<Action> {
    let ns = pf.namespace().unwrap_or_default();
    let name = pf.name_any();
    if pf.spec.deletion_policy == DeletionPolicy::Delete {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        let lp = ListParams::default().labels(&format!("{INSTANCE_LABEL}={name}"));
        for pvc in pvcs.list_metadata(&lp).await? {
            pvcs.delete(&pvc.name_any(), &DeleteParams::default()).await?;
        }
        publish(ctx, pf, EventType::Normal, "VolumesDeleted", "deletionPolicy Delete: volumes removed".into()).await;
    }
    lock(&ctx.applied).retain(|(n, _, child), _| !(n == &ns && child.starts_with(&format!("{name}-"))));
    Ok(Action::await_change())
}

#[cfg(test)]
mod degraded_tests {
    use super::*;

    #[test]
    fn a_failed_migration_job_is_a_failure_with_its_message() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "demo-migrate-0-1-0"},
            "status": {"conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}
            ]}
        }))
        .expect("job");
        assert_eq!(
            job_failure(&job).as_deref(),
            Some("migration job demo-migrate-0-1-0 failed: Job has reached the specified backoff limit")
        );
        let running: Job =
            serde_json::from_value(json!({"metadata": {"name": "j"}, "status": {"active": 1}})).expect("job");
        assert_eq!(job_failure(&running), None);
    }

    #[test]
    fn only_a_deployment_past_its_progress_deadline_is_a_failure() {
        let stuck: k8s_openapi::api::apps::v1::DeploymentStatus = serde_json::from_value(json!({"conditions": [
            {"type": "Available", "status": "False"},
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"x\" has timed out progressing."}
        ]}))
        .expect("status");
        assert_eq!(deadline_exceeded(&stuck).as_deref(), Some("ReplicaSet \"x\" has timed out progressing."));
        let rolling: k8s_openapi::api::apps::v1::DeploymentStatus = serde_json::from_value(
            json!({"conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}),
        )
        .expect("status");
        assert_eq!(deadline_exceeded(&rolling), None);
    }

    #[test]
    fn a_failed_migration_job_is_retried_only_after_the_cooldown() {
        let failed_at = |at: &str| -> Job {
            serde_json::from_value(json!({
                "metadata": {"name": "demo-migrate-0-1-0"},
                "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit", "lastTransitionTime": at}]}
            }))
            .expect("job")
        };
        let at = |s: &str| s.parse::<k8s_openapi::jiff::Timestamp>().expect("timestamp");
        let job = failed_at("2025-01-01T00:00:00Z");
        assert_eq!(migration_retry_due(&job, at("2025-01-01T00:04:59Z")), None);
        assert_eq!(
            migration_retry_due(&job, at("2025-01-01T00:05:00Z")).as_deref(),
            Some("migration job demo-migrate-0-1-0 failed: Job has reached the specified backoff limit")
        );
        let running: Job =
            serde_json::from_value(json!({"metadata": {"name": "j"}, "status": {"active": 1}})).expect("job");
        assert_eq!(migration_retry_due(&running, at("2030-01-01T00:00:00Z")), None);
    }

    #[test]
    fn event_notes_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short".into(), 10), "short");
        assert_eq!(truncate("ééééé".into(), 8), "éé...");
    }
}
