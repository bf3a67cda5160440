//! `payflow dev`: every component in one process (gateway, auth, wallet,
//! transaction with its relay, worker, notification), wired to each other on loopback,
//! after applying migrations. For local use, not production.

use clap::Args;
use payflow_common::config::{DbArgs, RedisArgs};
use payflow_common::shutdown::CancellationToken;
use payflow_messaging::AmqpArgs;
use rand::Rng;

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    amqp: AmqpArgs,
    /// Address every component binds to.
    #[arg(long = "dev-bind", env = "PAYFLOW_DEV_BIND", default_value = "127.0.0.1")]
    bind: String,
    /// Gateway port.
    #[arg(long = "gateway-port", env = "PAYFLOW_GATEWAY_PORT", default_value_t = 3000)]
    gateway_port: u16,
    /// Auth port.
    #[arg(long = "auth-port", env = "PAYFLOW_AUTH_PORT", default_value_t = 3004)]
    auth_port: u16,
    /// Wallet port.
    #[arg(long = "wallet-port", env = "PAYFLOW_WALLET_PORT", default_value_t = 3001)]
    wallet_port: u16,
    /// Transaction port.
    #[arg(long = "transaction-port", env = "PAYFLOW_TRANSACTION_PORT", default_value_t = 3002)]
    transaction_port: u16,
    /// Notification port.
    #[arg(long = "notification-port", env = "PAYFLOW_NOTIFICATION_PORT", default_value_t = 3003)]
    notification_port: u16,
    /// Worker metrics port.
    #[arg(long = "worker-port", env = "PAYFLOW_WORKER_PORT", default_value_t = 3005)]
    worker_port: u16,
}

/// One component's configuration: these flags plus the environment.
fn component<T: clap::Args>(flags: &[String]) -> anyhow::Result<T> {
    Ok(payflow_common::config::parse_component(flags.iter().cloned())?)
}

pub async fn run(a: DevArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    crate::migrate(&a.db).await?;
    let token = std::env::var("PAYFLOW_SERVICE_TOKEN").unwrap_or_else(|_| {
        let bytes: [u8; 24] = rand::thread_rng().gen();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    let url = |port: u16| format!("http://{}:{port}", a.bind);
    let jwks = format!("{}/.well-known/jwks.json", url(a.auth_port));
    // `--name=value`, so values that start with dashes (PEM keys) stay values.
    let flag = |name: &str, value: String| format!("--{name}={value}");
    let db = flag("database-url", a.db.database_url.clone());
    let redis = flag("redis-url", a.redis.redis_url.clone());
    let bind = flag("bind", a.bind.clone());
    let service_token = flag("service-token", token);

    let auth: payflow_auth::Config = component(&[
        db.clone(),
        redis.clone(),
        bind.clone(),
        service_token.clone(),
        flag("auth-port", a.auth_port.to_string()),
        flag("wallet-url", url(a.wallet_port)),
    ])?;
    let wallet: payflow_wallet::Config = component(&[
        db.clone(),
        bind.clone(),
        service_token.clone(),
        flag("wallet-port", a.wallet_port.to_string()),
        flag("jwks-url", jwks.clone()),
    ])?;
    let amqp = [
        flag("amqp-url", a.amqp.amqp_url.clone()),
        flag("amqp-prefix", a.amqp.prefix.clone()),
        flag("amqp-delivery-limit", a.amqp.delivery_limit.to_string()),
    ];
    let to_wallet = [flag("wallet-url", url(a.wallet_port)), service_token.clone()];
    let transaction: payflow_transaction::Config = component(
        &[
            db.clone(),
            bind.clone(),
            flag("transaction-port", a.transaction_port.to_string()),
            flag("jwks-url", jwks.clone()),
        ]
        .into_iter()
        .chain(amqp.clone())
        .chain(to_wallet.clone())
        .collect::<Vec<_>>(),
    )?;
    let worker: payflow_transaction::WorkerConfig = component(
        &[db.clone(), bind.clone(), flag("worker-port", a.worker_port.to_string())]
            .into_iter()
            .chain(amqp.clone())
            .chain(to_wallet)
            .collect::<Vec<_>>(),
    )?;
    let notification: payflow_notification::Config = component(
        &[
            db.clone(),
            bind.clone(),
            flag("notification-port", a.notification_port.to_string()),
            flag("jwks-url", jwks.clone()),
        ]
        .into_iter()
        .chain(amqp.clone())
        .collect::<Vec<_>>(),
    )?;
    let gateway: payflow_gateway::Config = component(&[
        redis,
        bind,
        flag("gateway-port", a.gateway_port.to_string()),
        flag("jwks-url", jwks),
        flag("auth-url", url(a.auth_port)),
        flag("wallet-url", url(a.wallet_port)),
        flag("transaction-url", url(a.transaction_port)),
        flag("notification-url", url(a.notification_port)),
    ])?;

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(payflow_auth::run(auth, cancel.clone()));
    tasks.spawn(payflow_wallet::run(wallet, cancel.clone()));
    tasks.spawn(payflow_gateway::run(gateway, cancel.clone()));
    tasks.spawn(payflow_transaction::run(transaction, cancel.clone()));
    tasks.spawn(payflow_transaction::worker::run(worker, cancel.clone()));
    tasks.spawn(payflow_notification::run(notification, cancel.clone()));
    let reversal: payflow_transaction::ReversalConfig = component(&[
        db.clone(),
        flag("wallet-url", url(a.wallet_port)),
        service_token.clone(),
        flag("amqp-prefix", a.amqp.prefix.clone()),
    ])?;
    tasks.spawn(reverse_every_minute(reversal, cancel.clone()));
    tracing::info!(gateway = %url(a.gateway_port), "payflow dev is up");
    let mut first_error = None;
    while let Some(result) = tasks.join_next().await {
        let outcome = result.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = outcome {
            // One component down means the local stack is broken: stop the rest.
            cancel.cancel();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// What the CronJob does in Kubernetes: a reversal pass every minute.
async fn reverse_every_minute(
    cfg: payflow_transaction::ReversalConfig,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return Ok(()),
        }
        if let Err(e) = payflow_transaction::reversal::run(&cfg).await {
            tracing::warn!(error = format!("{e:#}"), "reversal pass failed");
        }
    }
}
