//! Business counters of the auth service, registered in the service's registry.

use payflow_common::metrics::Metrics;
use prometheus::{IntCounter, IntCounterVec, Opts};

#[derive(Clone)]
pub struct AuthMetrics {
    registrations: IntCounter,
    logins: IntCounterVec,
    refreshes: IntCounterVec,
}

#[derive(Debug, Clone, Copy)]
pub enum LoginResult {
    Success,
    Invalid,
    Locked,
}

#[derive(Debug, Clone, Copy)]
pub enum RefreshResult {
    Success,
    Invalid,
    Reused,
}

impl AuthMetrics {
    pub fn register(metrics: &Metrics) -> anyhow::Result<Self> {
        let registrations = IntCounter::new("payflow_auth_registrations_total", "Users registered")?;
        let logins =
            IntCounterVec::new(Opts::new("payflow_auth_logins_total", "Login attempts by result"), &["result"])?;
        let refreshes =
            IntCounterVec::new(Opts::new("payflow_auth_refresh_total", "Refresh token uses by result"), &["result"])?;
        // Every series exists from the start, so rates work before the first event.
        for r in ["success", "invalid", "locked"] {
            logins.with_label_values(&[r]);
        }
        for r in ["success", "invalid", "reused"] {
            refreshes.with_label_values(&[r]);
        }
        metrics.register(Box::new(registrations.clone()));
        metrics.register(Box::new(logins.clone()));
        metrics.register(Box::new(refreshes.clone()));
        Ok(Self { registrations, logins, refreshes })
    }

    pub fn registered(&self) {
        self.registrations.inc();
    }

    pub fn login(&self, result: LoginResult) {
        let label = match result {
            LoginResult::Success => "success",
            LoginResult::Invalid => "invalid",
            LoginResult::Locked => "locked",
        };
        self.logins.with_label_values(&[label]).inc();
    }

    pub fn refresh(&self, result: RefreshResult) {
        let label = match result {
            RefreshResult::Success => "success",
            RefreshResult::Invalid => "invalid",
            RefreshResult::Reused => "reused",
        };
        self.refreshes.with_label_values(&[label]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_their_labels() {
        let metrics = Metrics::new("auth-service");
        let m = AuthMetrics::register(&metrics).unwrap();
        m.registered();
        m.login(LoginResult::Locked);
        m.refresh(RefreshResult::Reused);
        let text = metrics.render();
        assert!(text.contains("payflow_auth_registrations_total{service=\"auth-service\"} 1"), "{text}");
        assert!(text.contains("payflow_auth_logins_total{result=\"locked\",service=\"auth-service\"} 1"), "{text}");
        assert!(text.contains("payflow_auth_logins_total{result=\"success\",service=\"auth-service\"} 0"), "{text}");
        assert!(text.contains("payflow_auth_refresh_total{result=\"reused\",service=\"auth-service\"} 1"), "{text}");
    }
}
