//! Fault injection for crash tests: when `PAYFLOW_FAULT` names a point, the
//! process kills itself there with SIGKILL, as abruptly as a real crash.

use std::sync::OnceLock;

/// `PAYFLOW_FAULT`, read once: the points sit on the accept path.
fn armed() -> Option<&'static str> {
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    FAULT.get_or_init(|| std::env::var("PAYFLOW_FAULT").ok()).as_deref()
}

/// Dies here if `PAYFLOW_FAULT` is `name`.
pub fn point(name: &str) {
    if armed() == Some(name) {
        tracing::warn!(point = name, "fault injection: killing this process");
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
        std::process::abort();
    }
}
