//! Leader election on a coordination.k8s.io Lease, so that only one operator replica writes.
//!
//! A standby replica serves health and metrics but reconciles nothing until it holds the Lease.
//! A leader that loses the Lease stops the process (its Deployment restarts it as a standby):
//! stopping is the only way to be sure no write of the old leader races the new one.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The Lease's name; one per namespace the operator runs in.
pub const LEASE_NAME: &str = "payflow-operator";
/// How long a Lease stays valid after its last renewal (as controller-runtime's default).
const LEASE_SECONDS: u64 = 15;
/// A leader renews this long before its Lease would expire; also the clock skew tolerated.
const GRACE_SECONDS: u64 = 5;

/// Where and as whom to take the Lease.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub identity: String,
}

/// A running election: `wait_until_leader`, then `lost` completes if the Lease is lost.
pub struct Election {
    state: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

impl Election {
    pub async fn start(client: Client, cfg: &LeaseConfig) -> anyhow::Result<Self> {
        let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
            .with_namespace(cfg.namespace.clone())
            .with_parameters(
                LeaseParams::new(cfg.identity.clone(), LEASE_SECONDS, GRACE_SECONDS)
                    .with_field_manager(format!("payflow-operator-lease-{}", cfg.identity)),
            )
            .build()
            .await?;
        let (state, task) = manager.watch().await;
        Ok(Self { state, task })
    }

    /// Returns once this replica holds the Lease.
    pub async fn wait_until_leader(&mut self) -> anyhow::Result<()> {
        self.state.wait_for(|leader| *leader).await?;
        Ok(())
    }

    /// Completes when this replica no longer holds the Lease (or the election task ended).
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }

    /// Gives the Lease up on a clean stop, so no replica waits on a Lease held by a dead identity.
    pub async fn release(self) {
        drop(self.state);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released the leader lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the leader lease failed"),
            Err(e) => tracing::warn!(error = %e, "the leader election task failed"),
        }
    }
}

/// This replica's identity: the pod name in a cluster, host and pid elsewhere.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{host}-{}", std::process::id())
}
