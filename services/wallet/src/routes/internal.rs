use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use payflow_common::error::{ApiError, ApiResult, FieldError};
use payflow_common::extract::{parse_path_id, ApiJson, PathParam};
use payflow_common::ids::{TransferId, UserId};
use payflow_common::money::Currency;
use serde::Deserialize;
use serde_json::Value;

use super::views::{transfer_json, wallet_json};
use crate::ledger::{self, NewTransfer, Outcome};
use crate::state::AppState;

/// Default life of a hold when the caller does not say.
const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// Longest hold a caller may ask for (a day).
const MAX_TIMEOUT_SECS: u64 = 86_400;

fn answer(outcome: Outcome<Value>) -> (StatusCode, Json<Value>) {
    match outcome {
        Outcome::Created(v) => (StatusCode::CREATED, Json(v)),
        Outcome::Existing(v) => (StatusCode::OK, Json(v)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateWallet {
    user_id: UserId,
    name: String,
    currency: Option<Currency>,
}

/// `POST /internal/wallets`: idempotent on `userId`; credits the sign-up amount once.
///
/// `currency`, when given, must be the configured one (`PAYFLOW_DEFAULT_CURRENCY`): the
/// transaction service moves that currency only, so a wallet in any other could never pay
/// or be paid (and three capital letters are not necessarily a currency). A wallet that
/// exists in another currency (created before the setting changed) answers 409
/// `wallet_currency_conflict` when `currency` is given; without it (auth's call) the
/// existing wallet is the answer, whatever its currency.
pub async fn create_wallet(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateWallet>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = req.name.trim();
    let mut details = Vec::new();
    if name.is_empty() || name.chars().count() > 100 {
        details.push(FieldError::new("name", "must be 1-100 characters"));
    }
    if req.currency.is_some_and(|c| c != state.currency) {
        details.push(FieldError::new("currency", format!("must be {}", state.currency.code())));
    }
    if !details.is_empty() {
        return Err(ApiError::validation(details));
    }
    let currency = state.currency;
    let outcome = ledger::create_wallet(&state.pool, req.user_id, name, currency, state.signup_credit).await?;
    if let Outcome::Existing(w) = &outcome {
        if req.currency.is_some() && w.currency != currency.code() {
            return Err(ApiError::conflict(
                "wallet_currency_conflict",
                format!("The user's wallet exists in {}, not {currency}", w.currency),
            ));
        }
    }
    Ok(answer(match outcome {
        Outcome::Created(w) => Outcome::Created(wallet_json(&w)),
        Outcome::Existing(w) => Outcome::Existing(wallet_json(&w)),
    }))
}

pub async fn get_wallet(State(state): State<AppState>, PathParam(raw): PathParam) -> ApiResult<Json<Value>> {
    let user: UserId = parse_path_id(&raw, "userId")?;
    let wallet = ledger::get_wallet(&state.pool, user).await?.ok_or_else(|| ApiError::not_found("Wallet not found"))?;
    Ok(Json(wallet_json(&wallet)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateTransfer {
    id: TransferId,
    from_user_id: UserId,
    to_user_id: UserId,
    /// Minor units.
    amount: i64,
    currency: Currency,
    timeout_seconds: Option<u64>,
}

impl CreateTransfer {
    /// The hold this asks for, or what is wrong with it.
    fn parse(self) -> ApiResult<NewTransfer> {
        let mut details = Vec::new();
        if self.amount <= 0 {
            details.push(FieldError::new("amount", "must be a positive number of minor units"));
        }
        let timeout = self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if timeout == 0 || timeout > MAX_TIMEOUT_SECS {
            details.push(FieldError::new("timeoutSeconds", format!("must be 1-{MAX_TIMEOUT_SECS}")));
        }
        if !details.is_empty() {
            return Err(ApiError::validation(details));
        }
        Ok(NewTransfer {
            id: self.id,
            from: self.from_user_id,
            to: self.to_user_id,
            amount: self.amount,
            currency: self.currency,
            timeout: Duration::from_secs(timeout),
        })
    }
}

fn created_answer(outcome: Outcome<ledger::Transfer>) -> (StatusCode, Json<Value>) {
    answer(match outcome {
        Outcome::Created(t) => Outcome::Created(transfer_json(&t)),
        Outcome::Existing(t) => Outcome::Existing(transfer_json(&t)),
    })
}

/// `POST /internal/transfers`: places the hold of a payment (201), or finds
/// the identical earlier request (200).
pub async fn create_transfer(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateTransfer>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let new = req.parse()?;
    Ok(created_answer(ledger::create_pending(&state.pool, &new).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldBatch {
    transfers: Vec<CreateTransfer>,
}

/// Most holds one batch may place (keeps the body under the 10 KB limit).
const MAX_HOLD_BATCH: usize = 40;

/// `POST /internal/transfers/hold-batch` `{"transfers":[...]}`: the holds of
/// many payments in one commit. Answers 200 with `[{"id","status","body"}]`,
/// in request order, each item what `POST /internal/transfers` would have
/// answered for it (201 created, 200 the same request again, 4xx refused).
pub async fn hold_batch(State(state): State<AppState>, ApiJson(req): ApiJson<HoldBatch>) -> ApiResult<Json<Value>> {
    if req.transfers.is_empty() || req.transfers.len() > MAX_HOLD_BATCH {
        return Err(ApiError::validation(vec![FieldError::new(
            "transfers",
            format!("must hold 1-{MAX_HOLD_BATCH} transfers"),
        )]));
    }
    let ids: Vec<TransferId> = req.transfers.iter().map(|t| t.id).collect();
    let parsed: Vec<ApiResult<NewTransfer>> = req.transfers.into_iter().map(CreateTransfer::parse).collect();
    let valid: Vec<NewTransfer> = parsed.iter().filter_map(|p| p.as_ref().ok().cloned()).collect();
    let mut held = ledger::create_pending_many(&state.pool, &valid).await?.into_iter();
    let items = ids
        .into_iter()
        .zip(parsed)
        .map(|(id, p)| {
            let answer = p.and_then(|_| held.next().unwrap_or(Err(ledger::LedgerError::Retry)).map_err(ApiError::from));
            let (status, body) = match answer {
                Ok(outcome) => {
                    let (status, Json(body)) = created_answer(outcome);
                    (status, body)
                }
                Err(e) => (e.status, e.to_json()),
            };
            serde_json::json!({"id": id.0, "status": status.as_u16(), "body": body})
        })
        .collect();
    Ok(Json(Value::Array(items)))
}

pub async fn get_transfer(State(state): State<AppState>, PathParam(raw): PathParam) -> ApiResult<Json<Value>> {
    let id: TransferId = parse_path_id(&raw, "id")?;
    let t = ledger::get_transfer(&state.pool, id).await?.ok_or_else(|| ApiError::not_found("Transfer not found"))?;
    Ok(Json(transfer_json(&t)))
}

pub async fn post_transfer(State(state): State<AppState>, PathParam(raw): PathParam) -> ApiResult<Json<Value>> {
    let id: TransferId = parse_path_id(&raw, "id")?;
    Ok(Json(transfer_json(&ledger::post(&state.pool, id).await?)))
}

pub async fn void_transfer(State(state): State<AppState>, PathParam(raw): PathParam) -> ApiResult<Json<Value>> {
    let id: TransferId = parse_path_id(&raw, "id")?;
    Ok(Json(transfer_json(&ledger::void(&state.pool, id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostBatch {
    ids: Vec<TransferId>,
}

/// Most transfers one batch may post (keeps the body under the 10 KB limit).
const MAX_BATCH: usize = 200;

/// `POST /internal/transfers/post-batch` `{"ids":[...]}` → `[{"id","outcome"}]`,
/// outcome `posted`, `voided` or `not_found`.
pub async fn post_batch(State(state): State<AppState>, ApiJson(req): ApiJson<PostBatch>) -> ApiResult<Json<Value>> {
    if req.ids.is_empty() || req.ids.len() > MAX_BATCH {
        return Err(ApiError::validation(vec![FieldError::new("ids", format!("must hold 1-{MAX_BATCH} ids"))]));
    }
    let ids: Vec<uuid::Uuid> = req.ids.iter().map(|i| i.0).collect();
    let results = ledger::post_many(&state.pool, &ids).await?;
    Ok(Json(Value::Array(
        results.into_iter().map(|(id, outcome)| serde_json::json!({"id": id, "outcome": outcome})).collect(),
    )))
}
