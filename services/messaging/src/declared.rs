//! Whether this process could declare its topology, for readiness.
//!
//! A declaration the broker refuses (most often `PRECONDITION_FAILED`: a queue
//! exists with other arguments than the ones this release asks for) closes the
//! channel, and the session that tried reconnects and fails again, for ever.
//! Nothing works meanwhile (no settling, no notifications), so it must not be
//! quiet: the first refusal, and one a minute while it lasts, is logged at
//! error, and [`failure`] tells the readiness checks of every component of
//! that PayFlow in the process. Kept per AMQP prefix in the process, because
//! the components that declare (relay, worker, notification consumer) build
//! their own [`crate::Topology`] from the configuration, and the readiness
//! check should not need to be handed each of them.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How often a refusal that goes on is logged again.
const LOG_AGAIN_AFTER: Duration = Duration::from_secs(60);

struct Failure {
    error: String,
    logged: Instant,
}

static FAILURES: LazyLock<Mutex<HashMap<String, Failure>>> = LazyLock::new(Default::default);

/// Why the broker refused the last declaration of `prefix`'s topology in this
/// process; `None` when the last one went through (or none was refused yet).
pub fn failure(prefix: &str) -> Option<String> {
    let failures = FAILURES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    failures.get(prefix).map(|f| f.error.clone())
}

/// Records a refused declaration (`error` names what was being declared).
pub(crate) fn refused(prefix: &str, error: &str) {
    let mut failures = FAILURES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let now = Instant::now();
    let log = match failures.get(prefix) {
        Some(f) => f.error != error || now.duration_since(f.logged) >= LOG_AGAIN_AFTER,
        None => true,
    };
    let logged = if log { now } else { failures.get(prefix).map_or(now, |f| f.logged) };
    failures.insert(prefix.to_string(), Failure { error: error.to_string(), logged });
    drop(failures);
    if log {
        tracing::error!(
            prefix,
            error,
            "RabbitMQ refused to declare the topology; what tried consumes or publishes nothing until it \
             can (see the runbook: RabbitMQ refuses the topology)"
        );
    }
}

/// Records a declaration that went through.
pub(crate) fn declared(prefix: &str) {
    let mut failures = FAILURES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if failures.remove(prefix).is_some() {
        drop(failures);
        tracing::info!(prefix, "RabbitMQ topology declared after earlier refusals");
    }
}

/// A readiness check for `prefix`: fails, naming the refusal, while the broker refuses its topology.
pub fn readiness_check(prefix: &str) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
    let prefix = prefix.to_string();
    move || failure(&prefix).map_or(Ok(()), |e| Err(format!("rabbitmq topology: {e}")))
}
