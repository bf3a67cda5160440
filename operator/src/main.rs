//! `payflow-operator`: reconciles PayFlow resources (`run`); `crd` prints the CRD.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use clap::{Parser, Subcommand};
use payflow_operator::controller::{self, Context};
use payflow_operator::metrics::Metrics;

#[derive(Parser)]
#[command(name = "payflow-operator", version, about = "The PayFlow Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconciles PayFlow resources in every namespace (kubeconfig or in-cluster config).
    Run {
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "PAYFLOW_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
        metrics_addr: SocketAddr,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "PAYFLOW_OPERATOR_NAMESPACE")]
        namespace: Option<String>,
    },
    /// Prints the PayFlow CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => payflow_operator::crd::crd_yaml().map(|yaml| print!("{yaml}")),
        Command::Run { metrics_addr, namespace } => {
            payflow_common::telemetry::init();
            match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt.block_on(run(metrics_addr, namespace)),
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

async fn run(metrics_addr: SocketAddr, namespace: Option<String>) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::new()?);
    let ctx = Arc::new(Context::new(client, metrics.clone(), namespace));
    let app = Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(|| async { "ok" })).route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move { m.render() }
        }),
    );
    let listener = tokio::net::TcpListener::bind(metrics_addr).await?;
    tracing::info!(%metrics_addr, "operator metrics listening");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let scaler = tokio::spawn(payflow_operator::scaler::runner::run(ctx.clone()));
    controller::run(ctx).await;
    scaler.abort();
    server.abort();
    Ok(())
}
