//! RabbitMQ for PayFlow.
//!
//! - [`Topology`]: every exchange and queue, durable, declared idempotently at start;
//!   [`declared`] says whether the broker refused that (for readiness).
//! - [`Publisher`]: persistent messages on a confirm-mode channel; a publish
//!   only counts once the broker acked it.
//! - [`Message`]: what every message carries (id, type, timestamp, correlation id).
//! - [`DepthProbe`]: how many messages a queue holds (the dead-letter queues' gauge).

pub mod config;
pub mod declared;
pub mod depth;
pub mod message;
pub mod publisher;
pub mod topology;

pub use config::AmqpArgs;
pub use depth::{DepthError, DepthProbe};
pub use message::{Incoming, Message, Poison};
pub use publisher::Publisher;
pub use topology::{DeclareError, Topology};

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// Opens a connection driven by the tokio runtime.
pub async fn connect(url: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name("payflow".into());
    Connection::connect(url, props).await
}

/// Keeps trying to connect, with capped exponential backoff, until it works
/// or `stop` resolves. Services start (and accept work) while RabbitMQ is down.
pub async fn connect_with_retry(url: &str, stop: impl std::future::Future<Output = ()>) -> Option<Connection> {
    tokio::pin!(stop);
    let mut delay = Duration::from_millis(100);
    loop {
        match connect(url).await {
            Ok(c) => return Some(c),
            Err(e) => tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
