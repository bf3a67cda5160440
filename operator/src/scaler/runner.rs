//! The scaler loop: for every PayFlow whose worker autoscales in the operator
//! (not through KEDA, not suspended), read the queue depth on its polling
//! interval, ask the algorithm, and write replicas through the Deployment's
//! `/scale` subresource under the scaler's own field manager.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::algorithm::{Config, Millis, Scaler};
use super::rabbitmq::Management;
use crate::controller::Context;
use crate::crd::{AutoscalingSpec, DataMode, PayFlow, WorkerStatus};
use crate::desired::Names;
use crate::metrics::Metrics;

pub const SCALER_MANAGER: &str = "payflow-operator-scaler";
const QUEUE: &str = "payflow.transactions";

struct Tracked {
    scaler: Scaler,
    next_poll: Instant,
}

fn config_of(a: &AutoscalingSpec) -> Config {
    Config {
        min_replicas: a.min_replicas.max(0) as u32,
        max_replicas: a.max_replicas.max(1) as u32,
        target_per_replica: a.target_per_replica.max(1) as u64,
        activation_threshold: a.activation_threshold.max(0) as u64,
        cooldown_period: Duration::from_secs(a.cooldown_seconds.max(0) as u64),
        scale_down_stabilization: Duration::from_secs(a.scale_down_stabilization_seconds.max(0) as u64),
        fallback_replicas: a.fallback_replicas.map(|f| f.max(0) as u32),
        ..Config::default()
    }
}

/// Where the management API of this PayFlow's broker is.
async fn management_url(ctx: &Context, pf: &PayFlow) -> anyhow::Result<String> {
    let ns = pf.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = pf.name_any();
    let names = Names { instance: &name };
    match (&pf.spec.rabbitmq.mode, &pf.spec.rabbitmq.secret_ref) {
        (DataMode::External, Some(secret)) => {
            let s = secrets.get(secret).await?;
            crate::credentials::decode(&s)
                .get("managementUrl")
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("secret {secret} has no managementUrl"))
        }
        _ => {
            let s = secrets.get(&names.credentials()).await?;
            let password = crate::credentials::decode(&s).get("rabbitmq-password").cloned().unwrap_or_default();
            // The operator runs in another namespace: the full service name.
            Ok(format!("http://payflow:{password}@{}.{ns}.svc:15672", names.of("rabbitmq")))
        }
    }
}

/// Runs forever (until the task is dropped), one pass a second.
pub async fn run(ctx: Arc<Context>) {
    let management = match Management::new() {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "scaler disabled: no HTTP client");
            return;
        }
    };
    let started = Instant::now();
    let mut tracked: HashMap<ObjectRef<PayFlow>, Tracked> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let payflows: Api<PayFlow> = ctx.watched();
        let list = match payflows.list(&Default::default()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "scaler cannot list PayFlows");
                continue;
            }
        };
        let mut seen = Vec::new();
        for pf in list.items {
            let Some(a) = pf.spec.worker.autoscaling.clone().filter(|a| !a.keda) else { continue };
            if pf.spec.suspend || pf.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let key = ObjectRef::from_obj(&pf);
            seen.push(key.clone());
            let cfg = config_of(&a);
            let entry = match tracked.get_mut(&key) {
                Some(t) => {
                    if t.scaler.config() != &cfg {
                        if let Err(e) = t.scaler.set_config(cfg) {
                            tracing::warn!(error = %e, "invalid autoscaling spec");
                            continue;
                        }
                    }
                    t
                }
                None => match Scaler::new(cfg) {
                    Ok(scaler) => tracked.entry(key.clone()).or_insert(Tracked { scaler, next_poll: Instant::now() }),
                    Err(e) => {
                        tracing::warn!(error = %e, "invalid autoscaling spec");
                        continue;
                    }
                },
            };
            if Instant::now() < entry.next_poll {
                continue;
            }
            entry.next_poll = Instant::now() + Duration::from_secs(a.polling_interval_seconds.max(1) as u64);
            if let Err(e) = scale_one(&ctx, &management, &pf, &mut entry.scaler, Millis::from(started.elapsed())).await
            {
                tracing::warn!(payflow = %pf.name_any(), error = %e, "scaler pass failed");
            }
        }
        forget_stopped(&mut tracked, &seen, &ctx.metrics);
    }
}

/// Drops the scalers of PayFlows not autoscaled here any more, and their gauges.
fn forget_stopped(tracked: &mut HashMap<ObjectRef<PayFlow>, Tracked>, seen: &[ObjectRef<PayFlow>], metrics: &Metrics) {
    tracked.retain(|k, _| {
        let keep = seen.contains(k);
        if !keep {
            metrics.scaler_stopped(k.namespace.as_deref().unwrap_or_default(), &k.name);
        }
        keep
    });
}

async fn scale_one(
    ctx: &Context,
    management: &Management,
    pf: &PayFlow,
    scaler: &mut Scaler,
    now: Millis,
) -> anyhow::Result<()> {
    let ns = pf.namespace().unwrap_or_default();
    let name = pf.name_any();
    let worker = format!("{name}-worker");
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(scale) = deployments.get_scale(&worker).await.ok() else { return Ok(()) };
    let current = scale.spec.and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
    let depth = match management_url(ctx, pf).await {
        Ok(url) => management.depth(&url, "/", QUEUE).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &depth {
        tracing::warn!(payflow = %name, error = %e, "cannot read the queue depth");
    }
    let decision = scaler.evaluate(now, depth, current);
    ctx.metrics.scaler_decision(&ns, &name, current, &decision);
    let mut status = WorkerStatus {
        queue_depth: decision.depth.map(|d| d as i64),
        current_replicas: current as i32,
        desired_replicas: decision.desired as i32,
        last_scale_time: pf.status.as_ref().and_then(|s| s.worker.as_ref()).and_then(|w| w.last_scale_time.clone()),
        fallback: decision.fallback,
    };
    if decision.desired != current {
        let patch = json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": worker}, "spec": {"replicas": decision.desired}});
        deployments.patch_scale(&worker, &PatchParams::apply(SCALER_MANAGER).force(), &Patch::Apply(&patch)).await?;
        status.current_replicas = decision.desired as i32;
        status.last_scale_time = Some(k8s_openapi::jiff::Timestamp::now().to_string());
        let note = format!(
            "Scaled worker from {current} to {}: queue depth {}",
            decision.desired,
            decision.depth.map_or("unknown".to_string(), |d| d.to_string())
        );
        tracing::info!(payflow = %name, %note);
        let event = Event {
            type_: EventType::Normal,
            reason: "Scaled".into(),
            note: Some(note),
            action: "Scale".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &pf.object_ref(&())).await {
            tracing::debug!(error = %e, "could not publish an event");
        }
    }
    let old = pf.status.as_ref().and_then(|s| s.worker.clone());
    // Worker status is the scaler's field: written only when it changed.
    if old.as_ref() != Some(&status) {
        let api: Api<PayFlow> = Api::namespaced(ctx.client.clone(), &ns);
        let patch =
            json!({"apiVersion": PayFlow::api_version(&()), "kind": PayFlow::kind(&()), "status": {"worker": status}});
        api.patch_status(&name, &PatchParams::apply(SCALER_MANAGER).force(), &Patch::Apply(&patch)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaler::algorithm::{Decision, Reason};

    #[test]
    fn a_payflow_that_stops_autoscaling_loses_its_scaler_gauges() {
        let metrics = Metrics::new().expect("metrics");
        let (gone, kept) = (ObjectRef::new("gone").within("payflow"), ObjectRef::new("kept").within("payflow"));
        let mut tracked = HashMap::new();
        for key in [&gone, &kept] {
            let scaler = Scaler::new(Config::default()).expect("scaler");
            tracked.insert(key.clone(), Tracked { scaler, next_poll: Instant::now() });
            let d =
                Decision { desired: 2, reason: Reason::ScaleUp, fallback: true, depth: Some(7), raw_recommendation: 2 };
            metrics.scaler_decision("payflow", &key.name, 1, &d);
        }
        forget_stopped(&mut tracked, std::slice::from_ref(&kept), &metrics);
        assert_eq!(tracked.keys().collect::<Vec<_>>(), [&kept]);
        let text = metrics.render();
        for gauge in ["queue_depth", "desired_replicas", "current_replicas", "fallback"] {
            let series = |name: &str| {
                format!("payflow_operator_scaler_{gauge}{{payflow=\"{name}\",payflow_namespace=\"payflow\"}}")
            };
            assert!(!text.contains(&series("gone")), "{gauge} of a stopped PayFlow still exported:\n{text}");
            assert!(text.contains(&series("kept")), "{gauge} of a running PayFlow missing:\n{text}");
        }
    }
}
