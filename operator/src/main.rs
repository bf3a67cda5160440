//! `payflow-operator`: reconciles PayFlow resources (`run`); `crd` prints the CRD.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use clap::{Parser, Subcommand};
use payflow_operator::controller::{self, Context};
use payflow_operator::leader::{self, LeaseConfig};
use payflow_operator::metrics::Metrics;

#[derive(Parser)]
#[command(name = "payflow-operator", version, about = "The PayFlow Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconciles PayFlow resources in every namespace, or only in --namespace when it is set.
    ///
    /// Finds the cluster through the kubeconfig or, in a pod, the in-cluster config.
    Run {
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "PAYFLOW_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
        metrics_addr: SocketAddr,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "PAYFLOW_OPERATOR_NAMESPACE")]
        namespace: Option<String>,
        /// The operator's own namespace (in a cluster, from the downward API): its pods may call the
        /// management API of managed RabbitMQs, where the queue-depth scaler reads.
        #[arg(long = "home-namespace", env = "PAYFLOW_OPERATOR_HOME_NAMESPACE")]
        home_namespace: Option<String>,
        #[command(flatten)]
        election: Election,
    },
    /// Prints the PayFlow CustomResourceDefinition as YAML.
    Crd,
}

#[derive(clap::Args)]
struct Election {
    /// Namespace of the leader-election Lease `payflow-operator` (in a cluster: the operator's own).
    #[arg(long = "lease-namespace", env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's name in the election (default: host name and process id).
    #[arg(long = "lease-identity", env = "POD_NAME")]
    lease_identity: Option<String>,
    /// Reconcile at once without taking the Lease (only safe with a single replica).
    #[arg(long = "no-leader-election", env = "PAYFLOW_OPERATOR_NO_LEADER_ELECTION")]
    no_leader_election: bool,
}

impl Election {
    fn config(self) -> Option<LeaseConfig> {
        (!self.no_leader_election).then(|| LeaseConfig {
            namespace: self.lease_namespace,
            identity: self.lease_identity.unwrap_or_else(leader::default_identity),
        })
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => payflow_operator::crd::crd_yaml().map(|yaml| print!("{yaml}")),
        Command::Run { metrics_addr, namespace, home_namespace, election } => {
            payflow_common::telemetry::init();
            match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt.block_on(run(metrics_addr, namespace, home_namespace, election.config())),
                Err(e) => Err(e.into()),
            }
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("payflow-operator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(
    metrics_addr: SocketAddr,
    namespace: Option<String>,
    home_namespace: Option<String>,
    lease: Option<LeaseConfig>,
) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::new()?);
    let app = Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(|| async { "ok" })).route(
        "/metrics",
        get({
            let m = metrics.clone();
            move || {
                let m = m.clone();
                async move { m.render() }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(metrics_addr).await?;
    tracing::info!(%metrics_addr, "operator metrics listening");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut election = match &lease {
        Some(cfg) => {
            let mut e = leader::Election::start(client.clone(), cfg).await?;
            tracing::info!(namespace = %cfg.namespace, identity = %cfg.identity, "waiting for the leader lease");
            tokio::select! {
                r = e.wait_until_leader() => r?,
                _ = shutdown_signal() => {
                    e.release().await;
                    server.abort();
                    return Ok(());
                }
            }
            tracing::info!(identity = %cfg.identity, "leading");
            Some(e)
        }
        None => None,
    };
    metrics.set_leader(true);

    let ctx = Arc::new(Context::new(client, metrics.clone(), namespace).with_home_namespace(home_namespace));
    let scaler = tokio::spawn(payflow_operator::scaler::runner::run(ctx.clone()));
    let lost = async {
        match election.as_mut() {
            Some(e) => e.lost().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        // The controller ends on SIGTERM/SIGINT (shutdown_on_signal).
        () = controller::run(ctx) => Ok(()),
        () = lost => Err(anyhow::anyhow!("lost the leader lease; exiting so that only the new leader writes")),
    };
    scaler.abort();
    metrics.set_leader(false);
    if let Some(e) = election {
        e.release().await;
    }
    server.abort();
    result
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
