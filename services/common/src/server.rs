//! Wrapping a service router with the layers every service shares, and
//! serving it with graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;

use crate::error::ApiError;
use crate::health::{self, Readiness};
use crate::metrics::{self, Metrics};

/// Identity and dependencies of one running service.
#[derive(Clone)]
pub struct ServiceInfo {
    /// The name `/health` reports, e.g. `api-gateway`.
    pub name: &'static str,
    pub metrics: Metrics,
    pub readiness: Readiness,
    /// Upper bound for handling one request.
    pub request_timeout: Duration,
    /// Browser access rules, for the service browsers call (the gateway).
    pub cors: Option<CorsLayer>,
}

impl ServiceInfo {
    /// `metrics` is the service's own registry, so the HTTP metrics sit next to its counters.
    pub fn new(name: &'static str, metrics: Metrics, readiness: Readiness) -> Self {
        Self { name, metrics, readiness, request_timeout: Duration::from_secs(15), cors: None }
    }

    pub fn with_cors(mut self, cors: CorsLayer) -> Self {
        self.cors = Some(cors);
        self
    }
}

/// Adds health/metrics routes, JSON 404/405, a request timeout, panic
/// recovery, metrics, CORS when configured and correlation ids (outermost,
/// so every answer has one, CORS preflights included). Requests that change
/// something run to completion (innermost, so not even the timeout cuts them).
pub fn with_common_layers(router: Router, info: &ServiceInfo) -> Router {
    let timeout = info.request_timeout;
    let router = router
        .merge(health::routes(info.name, info.readiness.clone(), info.metrics.clone()))
        .fallback(|| async { ApiError::route_not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed")
        })
        .layer(middleware::from_fn(run_to_completion))
        .layer(middleware::from_fn(move |req: Request, next: Next| request_timeout(timeout, req, next)))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| panicked()))
        .layer(middleware::from_fn_with_state(info.metrics.clone(), metrics::middleware));
    let router = match &info.cors {
        Some(cors) => router.layer(cors.clone()),
        None => router,
    };
    router.layer(middleware::from_fn(crate::correlation::middleware))
}

/// A handler future is dropped when its client goes away or the timeout
/// answers first, which would stop a multi-step write between two steps (a
/// transfer recorded and held but never enqueued). Writes therefore run on
/// their own task: the answer may be lost, the work is not; a retry with the
/// same Idempotency-Key gets it. Reads stay cancellable.
async fn run_to_completion(req: Request, next: Next) -> Response {
    if req.method().is_safe() {
        return next.run(req).await;
    }
    match tokio::spawn(next.run(req)).await {
        Ok(res) => res,
        Err(e) => {
            tracing::error!(error = %e, "request task failed");
            panicked()
        }
    }
}

/// The answer to a handler that panicked, inline or on its own task.
fn panicked() -> Response {
    ApiError::internal("handler panicked").into_response()
}

async fn request_timeout(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            ApiError::new(axum::http::StatusCode::GATEWAY_TIMEOUT, "timeout", "Request timed out").into_response()
        }
    }
}

/// Binds `addr` (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Serves until SIGTERM/Ctrl-C or `cancel`, then drains in-flight requests.
pub async fn serve(listener: TcpListener, router: Router, cancel: CancellationToken) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(crate::shutdown::signal(cancel))
        .await?;
    Ok(())
}
