//! Queue depth from the RabbitMQ management API: ready plus unacknowledged
//! messages (a passive declare over AMQP counts ready only, which would scale
//! workers away while they are busy).

use std::time::Duration;

use serde::Deserialize;

#[derive(Clone)]
pub struct Management {
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct QueueInfo {
    #[serde(default)]
    messages_ready: u64,
    #[serde(default)]
    messages_unacknowledged: u64,
}

impl Management {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self { http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build()? })
    }

    /// Depth of `queue` in `vhost`; `base` may carry `user:password@`.
    pub async fn depth(&self, base: &str, vhost: &str, queue: &str) -> anyhow::Result<u64> {
        let mut url = reqwest::Url::parse(base)?;
        let user = url.username().to_string();
        let password = url.password().map(str::to_string);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let vhost = if vhost == "/" { "%2F".to_string() } else { vhost.to_string() };
        let endpoint = format!("{}/api/queues/{vhost}/{queue}", url.as_str().trim_end_matches('/'));
        let mut req = self.http.get(endpoint);
        if !user.is_empty() {
            req = req.basic_auth(user, password);
        }
        let info: QueueInfo = req.send().await?.error_for_status()?.json().await?;
        Ok(info.messages_ready + info.messages_unacknowledged)
    }
}
