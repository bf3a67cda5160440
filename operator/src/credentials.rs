//! The generated Secret of a PayFlow: created once when absent, never
//! regenerated (rotating a database password or the JWT key is an explicit
//! act, not a side effect of a reconcile), never logged.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::ResourceExt;
use rand::RngCore;
use serde_json::json;

use crate::crd::PayFlow;
use crate::desired::{self, Credentials, Names};
use crate::error::{Error, Result};

fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Fresh values for every key the spec needs.
fn generate(pf: &PayFlow, names: &Names) -> Result<BTreeMap<String, String>> {
    let mut data = BTreeMap::new();
    for key in desired::credential_keys(pf) {
        let value = match key {
            "jwt-private-key" => {
                payflow_common::jwt::JwtSigner::generate_pem().map_err(|e| Error::Other(e.to_string()))?
            }
            _ => random_token(24),
        };
        data.insert(key.to_string(), value);
    }
    let pg = data.get("postgres-password").cloned().unwrap_or_default();
    let mq = data.get("rabbitmq-password").cloned().unwrap_or_default();
    let ns = pf.namespace().unwrap_or_else(|| "default".into());
    for (k, v) in desired::managed_urls(names, &ns, &pg, &mq) {
        data.insert(k, v);
    }
    Ok(data)
}

/// Reads the Secret, creating it first when absent. Returns its data and
/// whether it was created now.
pub async fn ensure(api: &Api<Secret>, pf: &PayFlow) -> Result<(Credentials, bool)> {
    let names = Names { instance: pf.metadata.name.as_deref().unwrap_or("payflow") };
    let name = names.credentials();
    if let Some(existing) = api.get_opt(&name).await? {
        return Ok((Credentials { data: decode(&existing) }, false));
    }
    let data = generate(pf, &names)?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": names.labels("credentials"),
            "ownerReferences": [desired::owner_reference(pf)],
        },
        "type": "Opaque",
        "stringData": data,
    }))?;
    match api.create(&PostParams { field_manager: Some(desired::MANAGER.into()), ..Default::default() }, &secret).await
    {
        Ok(_) => Ok((Credentials { data }, true)),
        // Created concurrently (another replica, a retry): use what is there.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = api.get(&name).await?;
            Ok((Credentials { data: decode(&existing) }, false))
        }
        Err(e) => {
            tracing::warn!(payflow = %pf.name_any(), "could not create the credentials secret");
            Err(e.into())
        }
    }
}

pub fn decode(secret: &Secret) -> BTreeMap<String, String> {
    secret.data.iter().flatten().map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned())).collect()
}
