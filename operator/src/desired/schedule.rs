//! The migration Job (one per version; it gates the services' rollout) and
//! the reversal CronJob.

use serde_json::{json, Value};

use super::components::{container_security, db_pool, env_from_secrets, image, pod_security, url};
use super::{config_hash, Child, Inputs, Names};
use crate::crd::{DataMode, PayFlow};

/// Name of the migration Job of the current version.
pub fn migration_job_name(pf: &PayFlow, names: &Names) -> String {
    // Tags may hold characters a name cannot; a short hash keeps it valid and unique.
    format!("{}-migrate-{}", names.instance, &config_hash([("version", pf.spec.version.as_str())])[..10])
}

fn db_env(pf: &PayFlow, names: &Names) -> Vec<Value> {
    let refs = match pf.spec.postgres.mode {
        DataMode::Managed => vec![("PAYFLOW_DATABASE_URL", names.credentials(), "database-url")],
        DataMode::External => {
            vec![("PAYFLOW_DATABASE_URL", pf.spec.postgres.secret_ref.clone().unwrap_or_default(), "url")]
        }
    };
    env_from_secrets(&refs)
}

fn pod(pf: &PayFlow, names: &Names, args: Vec<String>, mut env: Vec<Value>, component: &str) -> Value {
    env.extend(db_env(pf, names));
    env.push(json!({"name": "PAYFLOW_DB_MAX_CONNECTIONS", "value": db_pool(component).to_string()}));
    json!({
        "metadata": {"labels": names.labels(component)},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": pod_security(),
            "automountServiceAccountToken": false,
            "containers": [{
                "name": component,
                "image": image(pf),
                "args": args,
                "env": env,
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                "securityContext": container_security(),
            }],
        },
    })
}

pub fn migration_job(pf: &PayFlow, names: &Names, owner: &Value) -> Child {
    let name = migration_job_name(pf, names);
    let obj = json!({
        "metadata": {"name": name, "labels": names.labels("migrate")},
        "spec": {
            "backoffLimit": 6,
            "template": pod(pf, names, vec!["migrate".into()], vec![], "migrate"),
        },
    });
    Child::new("batch/v1", "Job", name, obj, owner)
}

pub fn reversal_cronjob(pf: &PayFlow, names: &Names, owner: &Value, _inputs: &Inputs) -> Child {
    let name = names.of("reversal");
    let r = &pf.spec.reversal;
    let env = vec![
        json!({"name": "PAYFLOW_WALLET_URL", "value": url(names, "wallet")}),
        json!({"name": "PAYFLOW_AMQP_PREFIX", "value": "payflow"}),
        json!({"name": "PAYFLOW_SERVICE_TOKEN", "valueFrom": {"secretKeyRef": {"name": names.credentials(), "key": "service-token"}}}),
    ];
    let args = vec!["reverse-pending".to_string(), format!("--older-than={}s", r.pending_timeout_seconds)];
    let obj = json!({
        "metadata": {"name": name, "labels": names.labels("reversal")},
        "spec": {
            "schedule": r.schedule,
            // Not `spec.suspend`: that stops the operator's writes, it does not pause the workload.
            "suspend": r.suspend,
            // Safe to overlap, but pointless: one run at a time.
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 120,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {
                "backoffLimit": 1,
                "activeDeadlineSeconds": 300,
                "template": pod(pf, names, args, env, "reversal"),
            }},
        },
    });
    Child::new("batch/v1", "CronJob", name, obj, owner)
}
