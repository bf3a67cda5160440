//! Against a real control plane (scripts/testcluster.sh: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok). Ignored by plain
//! `cargo test`; scripts/test.sh starts the cluster and runs them with
//! `--ignored`. Each test has its own namespace and its own operator process
//! watching only that namespace.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, CustomResourceExt};
use payflow_operator::crd::PayFlow;
use serde_json::{json, Value};

async fn client() -> Client {
    let path = std::env::var("PAYFLOW_TEST_KUBECONFIG")
        .expect("PAYFLOW_TEST_KUBECONFIG is not set: run with scripts/test.sh (it starts the test cluster)");
    let kubeconfig = Kubeconfig::read_from(path).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("config");
    Client::try_from(config).expect("client")
}

async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch("payflows.payflow.io", &PatchParams::apply("payflow-tests").force(), &Patch::Apply(PayFlow::crd()))
        .await
        .expect("apply crd");
    wait_for("the CRD to be established", Duration::from_secs(30), || {
        let crds = crds.clone();
        async move {
            crds.get("payflows.payflow.io")
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
        }
    })
    .await;
}

async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", &uuid_like());
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
    api.create(&PostParams::default(), &ns).await.expect("create namespace");
    name
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}", nanos % 0xffff_ffff)
}

/// The operator as a process, watching one namespace; killed on drop.
struct Operator {
    child: tokio::process::Child,
    pub metrics: String,
}

impl Operator {
    async fn start(ns: &str) -> Self {
        Self::start_as(ns, &format!("operator-{ns}")).await
    }

    /// An operator replica named `identity` in the leader election; the Lease lives in `ns`.
    async fn start_as(ns: &str, identity: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_payflow-operator"))
            .args(["run", "--namespace", ns, "--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", std::env::var("PAYFLOW_TEST_KUBECONFIG").unwrap_or_default())
            .env("PAYFLOW_LOG", "warn")
            .env("POD_NAMESPACE", ns)
            .env("POD_NAME", identity)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the operator");
        Operator { child, metrics: format!("http://127.0.0.1:{port}/metrics") }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, as Kubernetes stops a pod; waits for the process to exit.
    async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }

    /// Resident memory of the operator process (KiB), 0 when unknown.
    fn rss_kib(&self) -> u64 {
        let status = self.child.id().and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok());
        status
            .as_deref()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(&self.metrics).await.ok();
        let text = match text {
            Some(r) => r.text().await.unwrap_or_default(),
            None => String::new(),
        };
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }
}

/// Deletes a PayFlow and waits until its finalizer has run and it is gone.
async fn delete_payflow(api: &Api<PayFlow>, name: &str) {
    api.delete(name, &DeleteParams::default()).await.expect("delete");
    wait_for("the PayFlow to go", Duration::from_secs(60), || {
        let api = api.clone();
        async move { api.get_opt(name).await.ok().flatten().is_none() }
    })
    .await;
}

fn payflow(name: &str, spec: Value) -> PayFlow {
    serde_json::from_value(
        json!({"apiVersion": "payflow.io/v1alpha1", "kind": "PayFlow", "metadata": {"name": name}, "spec": spec}),
    )
    .expect("payflow")
}

async fn phase(api: &Api<PayFlow>, name: &str) -> String {
    api.get(name).await.ok().and_then(|p| p.status).map(|s| s.phase).unwrap_or_default()
}

async fn generations(client: &Client, ns: &str) -> BTreeMap<String, i64> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|d| (d.metadata.name.unwrap_or_default(), d.metadata.generation.unwrap_or_default()))
        .collect()
}

#[tokio::test]
#[ignore = "needs the test cluster; scripts/test.sh runs it"]
async fn the_crd_installs_and_rejects_invalid_specs() {
    // The same fixtures tests/cel.rs evaluates client-side, here judged by the apiserver.
    #[derive(serde::Deserialize)]
    struct Fixture {
        name: String,
        spec: Value,
        old: Option<Value>,
        error: Option<String>,
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cel.yaml");
    let fixtures: Vec<Fixture> =
        serde_yaml::from_str(&std::fs::read_to_string(path).expect("fixtures")).expect("parse fixtures");
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "crd").await;
    let api: Api<PayFlow> = Api::namespaced(client.clone(), &ns);
    let mut wrong = Vec::new();
    for f in &fixtures {
        let result = match &f.old {
            None => api.create(&PostParams::default(), &payflow(&f.name, f.spec.clone())).await,
            Some(old) => {
                let created = api
                    .create(&PostParams::default(), &payflow(&f.name, old.clone()))
                    .await
                    .expect("create the old spec");
                let mut changed = created.clone();
                changed.spec = serde_json::from_value(f.spec.clone()).expect("spec");
                api.replace(&f.name, &PostParams::default(), &changed).await
            }
        };
        match (&f.error, result) {
            (None, Err(e)) => wrong.push(format!("{}: refused but valid: {e}", f.name)),
            (Some(want), Ok(_)) => wrong.push(format!("{}: accepted, expected {want:?}", f.name)),
            (Some(want), Err(kube::Error::Api(e))) if e.code != 422 || !e.message.contains(want.as_str()) => {
                wrong.push(format!("{}: expected 422 {want:?}, got {} {}", f.name, e.code, e.message))
            }
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "the apiserver disagrees with the fixtures:\n{}", wrong.join("\n"));
    let _ = Api::<Namespace>::all(client).delete(&ns, &DeleteParams::default()).await;
}

#[tokio::test]
#[ignore = "needs the test cluster; scripts/test.sh runs it"]
async fn a_payflow_becomes_ready_rolls_only_what_changed_and_survives_an_operator_restart() {
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "ready").await;
    let operator = Operator::start(&ns).await;
    let api: Api<PayFlow> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let spec = json!({
        "version": "0.1.0",
        "gateway": {"replicas": 2},
        "worker": {"replicas": 2},
        "postgres": {"storage": "1Gi"},
        "deletionPolicy": "Delete",
    });
    api.create(&PostParams::default(), &payflow("demo", spec)).await.expect("create");
    wait_for("Ready", Duration::from_secs(180), || {
        let api = api.clone();
        async move { phase(&api, "demo").await == "Ready" }
    })
    .await;
    eprintln!("apply → Ready: {:?}", started.elapsed());
    let pf = api.get("demo").await.expect("get");
    let status = pf.status.expect("status");
    assert_eq!(status.observed_generation, pf.metadata.generation);
    assert!(status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
    let cj = cronjobs.get("demo-reversal").await.expect("reversal cronjob");
    assert_eq!(cj.spec.as_ref().and_then(|s| s.concurrency_policy.clone()).as_deref(), Some("Forbid"));

    // A change read by transaction and worker only rolls those two, once.
    let before = generations(&client, &ns).await;
    let change = json!({"spec": {"reversal": {"pendingTimeoutSeconds": 90}}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&change)).await.expect("patch");
    wait_for("the rollout of transaction and worker", Duration::from_secs(60), || {
        let (client, ns, before) = (client.clone(), ns.clone(), before.clone());
        async move {
            let after = generations(&client, &ns).await;
            after.get("demo-transaction") > before.get("demo-transaction")
                && after.get("demo-worker") > before.get("demo-worker")
        }
    })
    .await;
    wait_for("Ready again", Duration::from_secs(120), || {
        let api = api.clone();
        async move { phase(&api, "demo").await == "Ready" }
    })
    .await;
    let after = generations(&client, &ns).await;
    for (name, generation) in &before {
        let expected = if name == "demo-transaction" || name == "demo-worker" { generation + 1 } else { *generation };
        assert_eq!(after.get(name), Some(&expected), "{name}: {before:?} → {after:?}");
    }

    // An operator restart rolls nothing.
    operator.stop().await;
    let operator = Operator::start(&ns).await;
    wait_for("a reconcile by the new operator", Duration::from_secs(60), || {
        let op = &operator;
        async move { op.metric("payflow_operator_reconciles_total").await >= 1.0 }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(generations(&client, &ns).await, after, "no rollout after a restart");

    // Idle: once the rollout has settled, reconciles come from the requeue
    // interval (60 s) and the once-a-minute reversal CronJob, not a hot loop.
    let mut last = operator.metric("payflow_operator_reconciles_total").await;
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = operator.metric("payflow_operator_reconciles_total").await;
        if now == last || Instant::now() > settle_deadline {
            break;
        }
        last = now;
    }
    let r0 = operator.metric("payflow_operator_reconciles_total").await;
    let w0 = operator.metric("payflow_operator_applies_total").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let r1 = operator.metric("payflow_operator_reconciles_total").await;
    let w1 = operator.metric("payflow_operator_applies_total").await;
    eprintln!("idle 30 s: {} reconciles, {} applies", r1 - r0, w1 - w0);
    assert!(r1 - r0 <= 3.0, "idle reconciles in 30 s: {}", r1 - r0);
    assert_eq!(w1 - w0, 0.0, "idle applies");

    // Suspend: Paused, and the operator stops writing.
    let suspend = json!({"spec": {"suspend": true}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&suspend)).await.expect("suspend");
    wait_for("Paused", Duration::from_secs(30), || {
        let api = api.clone();
        async move { phase(&api, "demo").await == "Paused" }
    })
    .await;
    // A spec change while suspended is reconciled (the status says Paused) but writes no child.
    let applies = operator.metric("payflow_operator_applies_total").await;
    let reconciles = operator.metric("payflow_operator_reconciles_total").await;
    let frozen = generations(&client, &ns).await;
    let change = json!({"spec": {"gateway": {"replicas": 3}, "reversal": {"pendingTimeoutSeconds": 120}}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&change)).await.expect("patch while suspended");
    wait_for("a reconcile of the suspended change", Duration::from_secs(30), || {
        let op = &operator;
        async move { op.metric("payflow_operator_reconciles_total").await > reconciles }
    })
    .await;
    assert_eq!(operator.metric("payflow_operator_applies_total").await, applies, "applies while suspended");
    assert_eq!(generations(&client, &ns).await, frozen, "no Deployment changed while suspended");

    // Delete with deletionPolicy Delete: the volumes go too.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    api.delete("demo", &DeleteParams::default()).await.expect("delete");
    wait_for("the PayFlow and its volumes to go", Duration::from_secs(60), || {
        let (api, pvcs) = (api.clone(), pvcs.clone());
        async move {
            api.get_opt("demo").await.ok().flatten().is_none()
                && pvcs.list(&ListParams::default()).await.map(|l| l.items.is_empty()).unwrap_or(false)
        }
    })
    .await;
    operator.stop().await;
    let _ = Api::<Namespace>::all(client).delete(&ns, &DeleteParams::default()).await;
}

#[tokio::test]
#[ignore = "needs the test cluster; scripts/test.sh runs it"]
async fn the_reversal_cronjob_runs_jobs_to_completion_and_retain_keeps_volumes() {
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "cron").await;
    let operator = Operator::start(&ns).await;
    let api: Api<PayFlow> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &payflow("demo", json!({"version": "0.1.0"}))).await.expect("create");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    wait_for("a completed reversal Job", Duration::from_secs(150), || {
        let jobs = jobs.clone();
        async move {
            jobs.list(&ListParams::default().labels("app.kubernetes.io/component=reversal"))
                .await
                .is_ok_and(|l| l.items.iter().any(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0))
        }
    })
    .await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    wait_for("volumes", Duration::from_secs(30), || {
        let pvcs = pvcs.clone();
        async move { pvcs.list(&ListParams::default()).await.is_ok_and(|l| !l.items.is_empty()) }
    })
    .await;
    delete_payflow(&api, "demo").await;
    assert!(!pvcs.list(&ListParams::default()).await.expect("list").items.is_empty(), "Retain keeps the volumes");
    operator.stop().await;
    let _ = Api::<Namespace>::all(client).delete(&ns, &DeleteParams::default()).await;
}

/// RabbitMQ management API of the test stack.
fn management() -> String {
    std::env::var("PAYFLOW_TEST_RABBITMQ_MANAGEMENT_URL").expect("PAYFLOW_TEST_RABBITMQ_MANAGEMENT_URL")
}

async fn mgmt(method: reqwest::Method, path: &str, body: Option<Value>) -> reqwest::StatusCode {
    let url = reqwest::Url::parse(&management()).expect("url");
    let base = format!("{}://{}:{}", url.scheme(), url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(15672));
    let mut req =
        reqwest::Client::new().request(method, format!("{base}{path}")).basic_auth(url.username(), url.password());
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("management api").status()
}

#[tokio::test]
#[ignore = "needs the test cluster and the test stack's RabbitMQ; scripts/test.sh runs it"]
async fn workers_scale_with_a_real_queue() {
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "scale").await;
    let queue = "payflow.transactions";
    mgmt(reqwest::Method::PUT, &format!("/api/queues/%2F/{queue}"), Some(json!({"durable": true}))).await;
    mgmt(reqwest::Method::DELETE, &format!("/api/queues/%2F/{queue}/contents"), None).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "mq"},
        "stringData": {"url": "amqp://payflow:payflow@127.0.0.1:24682/%2f", "managementUrl": management()},
    }))
    .expect("secret");
    secrets.create(&PostParams::default(), &secret).await.expect("secret");
    let operator = Operator::start(&ns).await;
    let api: Api<PayFlow> = Api::namespaced(client.clone(), &ns);
    let spec = json!({
        "version": "0.1.0",
        "rabbitmq": {"mode": "external", "secretRef": "mq"},
        "worker": {"autoscaling": {"minReplicas": 1, "maxReplicas": 10, "targetPerReplica": 10,
            "pollingIntervalSeconds": 1, "scaleDownStabilizationSeconds": 5}},
    });
    api.create(&PostParams::default(), &payflow("demo", spec)).await.expect("create");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let replicas = |d: Api<Deployment>| async move {
        d.get_opt("demo-worker").await.ok().flatten().and_then(|d| d.spec).and_then(|s| s.replicas).unwrap_or(-1)
    };
    wait_for("the worker Deployment", Duration::from_secs(120), || replicas(deployments.clone()).map_ok(1)).await;

    for i in 0..45 {
        let body = json!({"properties": {"delivery_mode": 2}, "routing_key": queue, "payload": format!("{i}"), "payload_encoding": "string"});
        mgmt(reqwest::Method::POST, "/api/exchanges/%2F/amq.default/publish", Some(body)).await;
    }
    wait_for("5 workers for 45 messages", Duration::from_secs(60), || replicas(deployments.clone()).map_ok(5)).await;
    mgmt(reqwest::Method::DELETE, &format!("/api/queues/%2F/{queue}/contents"), None).await;
    wait_for("back to 1 worker after the window", Duration::from_secs(60), || replicas(deployments.clone()).map_ok(1))
        .await;
    // The status is written after the scale: wait for it rather than race it.
    let desired = |api: Api<PayFlow>| async move {
        let status = api.get("demo").await.ok().and_then(|p| p.status).and_then(|s| s.worker);
        status.is_some_and(|w| w.desired_replicas == 1)
    };
    wait_for("the status to say 1 worker desired", Duration::from_secs(30), || desired(api.clone())).await;
    operator.stop().await;
    mgmt(reqwest::Method::DELETE, &format!("/api/queues/%2F/{queue}"), None).await;
    let _ = Api::<Namespace>::all(client).delete(&ns, &DeleteParams::default()).await;
}

trait MapOk {
    fn map_ok(self, want: i32) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
}

impl<F: std::future::Future<Output = i32> + Send + 'static> MapOk for F {
    fn map_ok(self, want: i32) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
        Box::pin(async move { self.await == want })
    }
}

#[tokio::test]
#[ignore = "needs the test cluster; scripts/test.sh runs it"]
async fn only_the_lease_holder_reconciles_and_a_standby_takes_over_on_shutdown() {
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "lease").await;
    let first = Operator::start_as(&ns, "first").await;
    wait_for("the first replica to lead", Duration::from_secs(30), || {
        let op = &first;
        async move { op.metric("payflow_operator_leader").await == 1.0 }
    })
    .await;
    let second = Operator::start_as(&ns, "second").await;
    let api: Api<PayFlow> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &payflow("demo", json!({"version": "0.1.0"}))).await.expect("create");
    wait_for("a reconcile by the leader", Duration::from_secs(30), || {
        let op = &first;
        async move { op.metric("payflow_operator_reconciles_total").await >= 1.0 }
    })
    .await;
    // The standby serves metrics (so it is up) but has not reconciled anything.
    wait_for("the standby's metrics", Duration::from_secs(30), || {
        let op = &second;
        async move { reqwest::get(&op.metrics).await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    assert_eq!(second.metric("payflow_operator_leader").await, 0.0);
    assert_eq!(second.metric("payflow_operator_reconciles_total").await, 0.0, "a standby reconciled");

    // A graceful stop releases the Lease; the standby takes it at its next look, which the
    // lease library schedules at the latest when the Lease would expire (15 s after a renewal).
    let stopped = Instant::now();
    first.terminate().await;
    wait_for("the standby to take over", Duration::from_secs(25), || {
        let op = &second;
        async move {
            op.metric("payflow_operator_leader").await == 1.0
                && op.metric("payflow_operator_reconciles_total").await >= 1.0
        }
    })
    .await;
    eprintln!("leader handover after SIGTERM: {:?}", stopped.elapsed());
    delete_payflow(&api, "demo").await;
    second.stop().await;
    let _ = Api::<Namespace>::all(client).delete(&ns, &DeleteParams::default()).await;
}

#[tokio::test]
#[ignore = "needs the test cluster; scripts/test.sh runs it"]
async fn five_idle_minutes_cost_only_the_requeue_interval() {
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "idle").await;
    let operator = Operator::start(&ns).await;
    let api: Api<PayFlow> = Api::namespaced(client.clone(), &ns);
    // The reversal CronJob is suspended: its Jobs would wake the operator once a minute on top.
    let spec = json!({"version": "0.1.0", "reversal": {"suspend": true}, "deletionPolicy": "Delete"});
    api.create(&PostParams::default(), &payflow("demo", spec)).await.expect("create");
    wait_for("Ready", Duration::from_secs(180), || {
        let api = api.clone();
        async move { phase(&api, "demo").await == "Ready" }
    })
    .await;
    // Let the rollout's own events pass: wait until a 10 s stretch brings no reconcile.
    let mut last = operator.metric("payflow_operator_reconciles_total").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let now = operator.metric("payflow_operator_reconciles_total").await;
        if now == last {
            break;
        }
        assert!(Instant::now() < deadline, "reconciles keep coming after Ready: {now}");
        last = now;
    }
    let reconciles = operator.metric("payflow_operator_reconciles_total").await;
    let applies = operator.metric("payflow_operator_applies_total").await;
    let writes = operator.metric("payflow_operator_status_writes_total").await;
    let idle = Duration::from_secs(300);
    tokio::time::sleep(idle).await;
    let reconciles = operator.metric("payflow_operator_reconciles_total").await - reconciles;
    let applies = operator.metric("payflow_operator_applies_total").await - applies;
    let writes = operator.metric("payflow_operator_status_writes_total").await - writes;
    let rss = operator.rss_kib();
    eprintln!(
        "idle {idle:?}: {reconciles} reconciles, {applies} applies, {writes} status writes; operator RSS {rss} KiB"
    );
    // The requeue interval is 60 s: five, plus one for a requeue straddling the window's edge.
    assert!(reconciles <= 6.0, "idle reconciles in 5 min: {reconciles}");
    assert_eq!(applies, 0.0, "idle applies");
    assert_eq!(writes, 0.0, "idle status writes");
    delete_payflow(&api, "demo").await;
    operator.stop().await;
    let _ = Api::<Namespace>::all(client).delete(&ns, &DeleteParams::default()).await;
}

#[tokio::test]
#[ignore = "needs the test cluster; scripts/test.sh runs it"]
async fn a_refused_child_degrades_the_payflow_and_the_rest_is_still_applied() {
    let client = client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "refused").await;
    let operator = Operator::start(&ns).await;
    let api: Api<PayFlow> = Api::namespaced(client.clone(), &ns);
    let spec = json!({"version": "0.1.0", "postgres": {"storage": "1Gi"}, "reversal": {"suspend": true},
                      "deletionPolicy": "Delete"});
    api.create(&PostParams::default(), &payflow("demo", spec)).await.expect("create");
    wait_for("Ready", Duration::from_secs(180), || {
        let api = api.clone();
        async move { phase(&api, "demo").await == "Ready" }
    })
    .await;

    // A storage class set later (the CEL rule allows it once) would change the StatefulSet's
    // immutable volumeClaimTemplates: kept as created instead. An Ingress host the API server
    // refuses (422) stops only the Ingress: wallet's new replicas and budget (applied after it) go out.
    let change = json!({"spec": {"postgres": {"storageClass": "later"}, "wallet": {"replicas": 2},
                                 "gateway": {"ingress": {"host": "Not_A_Host"}}}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&change)).await.expect("patch");
    wait_for("Degraded", Duration::from_secs(60), || {
        let api = api.clone();
        async move { phase(&api, "demo").await == "Degraded" }
    })
    .await;
    let pf = api.get("demo").await.expect("get");
    let status = pf.status.as_ref().expect("status");
    assert_eq!(status.observed_generation, pf.metadata.generation);
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").expect("Degraded");
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "ApplyFailed"), "{degraded:?}");
    assert!(degraded.message.starts_with("Ingress demo-gateway: "), "{}", degraded.message);
    assert!(!degraded.message.contains("StatefulSet"), "{}", degraded.message);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait_for("wallet's new replicas", Duration::from_secs(30), || {
        let deployments = deployments.clone();
        async move {
            deployments.get("demo-wallet").await.ok().and_then(|d| d.spec).and_then(|s| s.replicas) == Some(2)
        }
    })
    .await;
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    assert!(pdbs.get_opt("demo-wallet").await.expect("get pdb").is_some(), "wallet's budget was not applied");
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), &ns);
    let claims = sts.get("demo-postgres").await.expect("sts").spec.and_then(|s| s.volume_claim_templates);
    let class = claims.and_then(|c| c.into_iter().next()).and_then(|c| c.spec).and_then(|s| s.storage_class_name);
    assert_eq!(class, None, "the claims stay as created");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    wait_for("a Warning ApplyFailed Event", Duration::from_secs(30), || {
        let events = events.clone();
        async move {
            events.list(&ListParams::default()).await.is_ok_and(|l| {
                l.items.iter().any(|e| {
                    e.reason.as_deref() == Some("ApplyFailed")
                        && e.type_.as_deref() == Some("Warning")
                        && e.note.as_deref().is_some_and(|n| n.starts_with("Ingress demo-gateway: "))
                })
            })
        }
    })
    .await;

    // Fixed: Ready again (the spec change is reconciled at once, not after the backoff).
    let fix = json!({"spec": {"gateway": {"ingress": {"host": "api.payflow.local"}}}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&fix)).await.expect("fix");
    wait_for("Ready after the fix", Duration::from_secs(120), || {
        let api = api.clone();
        async move { phase(&api, "demo").await == "Ready" }
    })
    .await;
    delete_payflow(&api, "demo").await;
    operator.stop().await;
    let _ = Api::<Namespace>::all(client).delete(&ns, &DeleteParams::default()).await;
}
