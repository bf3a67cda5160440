use clap::Args;
use payflow_common::config::{DbArgs, JwtVerifyArgs, ListenArgs, ServiceTokenArgs};

/// Settings of the wallet service.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Port of the wallet HTTP API.
    #[arg(long = "wallet-port", env = "PAYFLOW_WALLET_PORT", default_value_t = 3001)]
    pub port: u16,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub service_token: ServiceTokenArgs,
    #[command(flatten)]
    pub jwt: JwtVerifyArgs,
    /// Money credited to every new wallet, in the wallet's currency ("0" for none).
    #[arg(long = "signup-credit", env = "PAYFLOW_SIGNUP_CREDIT", default_value = "1000.00")]
    pub signup_credit: String,
    /// Currency of new wallets (ISO 4217).
    #[arg(long = "default-currency", env = "PAYFLOW_DEFAULT_CURRENCY", default_value = "USD")]
    pub default_currency: String,
    /// Seconds past its timeout after which wallet voids a hold that nobody posted or voided,
    /// giving its money back (0: never). The reversal resolves holds long before; this frees
    /// money whose transaction was lost.
    #[arg(long = "hold-expiry-grace-secs", env = "PAYFLOW_HOLD_EXPIRY_GRACE_SECS", default_value_t = 120)]
    pub hold_expiry_grace_secs: u64,
}
