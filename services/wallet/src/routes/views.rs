//! JSON shapes and error mapping of the wallet API.

use payflow_common::error::ApiError;
use payflow_common::money::{format_minor, Currency};
use payflow_common::telemetry::rfc3339;
use serde_json::{json, Value};

use crate::ledger::{LedgerError, Transfer, Wallet};

/// `{"user_id","name","balance","available_balance","currency","created_at","updated_at"}`
pub fn wallet_json(w: &Wallet) -> Value {
    let currency = Currency::parse(&w.currency).unwrap_or(Currency::USD);
    json!({
        "user_id": w.user_id,
        "name": w.name,
        "balance": format_minor(w.balance, currency),
        "available_balance": format_minor(w.balance - w.pending_debits, currency),
        "currency": w.currency,
        "created_at": rfc3339(w.created_at),
        "updated_at": rfc3339(w.updated_at),
    })
}

/// Internal view: amounts in minor units, as the services exchange them.
pub fn transfer_json(t: &Transfer) -> Value {
    json!({
        "id": t.id,
        "kind": t.kind,
        "from_user_id": t.from_user_id,
        "to_user_id": t.to_user_id,
        "amount": t.amount,
        "currency": t.currency,
        "state": t.state,
        "timeout_at": t.timeout_at.map(rfc3339),
        "created_at": rfc3339(t.created_at),
        "resolved_at": t.resolved_at.map(rfc3339),
    })
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::SenderNotFound => ApiError::not_found("Sender wallet not found").with_code("sender_not_found"),
            LedgerError::RecipientNotFound => {
                ApiError::not_found("Recipient not found").with_code("recipient_not_found")
            }
            LedgerError::SameAccount => ApiError::bad_request("self_transfer", "Cannot transfer to yourself", vec![]),
            LedgerError::CurrencyMismatch => {
                ApiError::unprocessable("currency_mismatch", "Wallet currencies do not match")
            }
            LedgerError::InsufficientFunds => ApiError::unprocessable("insufficient_funds", "Insufficient funds"),
            LedgerError::Conflict => {
                ApiError::conflict("transfer_conflict", "Transfer id already used with different fields")
            }
            LedgerError::AlreadyPosted => ApiError::conflict("transfer_posted", "Transfer already posted"),
            LedgerError::AlreadyVoided => ApiError::conflict("transfer_voided", "Transfer already voided"),
            LedgerError::NotFound => ApiError::not_found("Transfer not found").with_code("transfer_not_found"),
            LedgerError::Retry => ApiError::unavailable("Please retry"),
            LedgerError::Db(e) => e.into(),
        }
    }
}
