//! Graceful shutdown: stop accepting, finish in-flight requests, exit.

pub use tokio_util::sync::CancellationToken;

/// Resolves on SIGTERM or Ctrl-C, or when `cancel` fires (tests and `payflow dev`).
pub async fn signal(cancel: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
        _ = cancel.cancelled() => {},
    }
    // Let sibling components (in `payflow dev`) stop too.
    cancel.cancel();
}
