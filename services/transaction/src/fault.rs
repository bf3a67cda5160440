//! Fault injection for crash tests: when `PAYFLOW_FAULT` names a point, the
//! process kills itself there with SIGKILL, as abruptly as a real crash.

/// Dies here if `PAYFLOW_FAULT` is `name`.
pub fn point(name: &str) {
    if std::env::var("PAYFLOW_FAULT").is_ok_and(|f| f == name) {
        tracing::warn!(point = name, "fault injection: killing this process");
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
        std::process::abort();
    }
}
