//! `GET /api/metrics`: whether each service answers, in the shape the
//! original clients read.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use payflow_common::bearer::AuthUser;
use serde_json::{json, Map, Value};

use crate::state::AppState;

pub async fn services(State(s): State<AppState>, _user: AuthUser) -> Json<Value> {
    let checks = s.upstreams.named().map(|(name, u)| {
        let http = s.http.clone();
        let url = format!("{}/readyz", u.base_url);
        let open = u.breaker.is_open();
        async move {
            let healthy = !open
                && matches!(
                    tokio::time::timeout(Duration::from_secs(2), http.get(url).send()).await,
                    Ok(Ok(r)) if r.status().is_success()
                );
            (name, healthy)
        }
    });
    let mut out = Map::new();
    out.insert("gateway".into(), json!({"status": "healthy"}));
    for (name, healthy) in futures::future::join_all(checks).await {
        out.insert(name.into(), json!({"status": if healthy { "healthy" } else { "unhealthy" }}));
    }
    Json(Value::Object(out))
}
