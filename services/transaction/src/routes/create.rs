//! `POST /api/transactions`: validate, deduplicate, record, hold, enqueue.
//!
//! Order of effects, each committed before the next starts (each write is
//! shared with the requests arriving at the same moment: `crate::batches`):
//! 1. the transaction row (PENDING), so any later crash leaves something the reversal finds;
//! 2. the hold at wallet (a pending transfer with a timeout, keyed by the transaction id);
//! 3. the settle message in the outbox together with the stored idempotent answer.
//!
//! A crash after 1 or 2 leaves a PENDING transaction without a message. A retry
//! with the same Idempotency-Key, once the record has had no heartbeat for 10 s
//! (at once when the attempt failed without crashing and handed it over),
//! takes it over and finishes steps 2 and 3; otherwise the reversal voids its hold (or records a
//! void of an id wallet never saw) and fails it. A caller that goes away stops
//! nothing: writes run to completion (`payflow_common::server`).

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use payflow_common::bearer::AuthUser;
use payflow_common::correlation::CorrelationId;
use payflow_common::error::{ApiError, ApiResult, FieldError};
use payflow_common::extract::{parse_json, read_body, strip_position};
use payflow_common::idempotency_key::IdempotencyKey;
use payflow_common::money::parse_json_amount;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::watch;
use uuid::Uuid;

use crate::idempotency::{self, Begin};
use crate::model::{Status, Transaction};
use crate::state::AppState;
use crate::store::{self, Accepted, FreshKey, NewTransaction};
use crate::wallet_client::{Hold, HoldRequest, Resolution};

/// Fields a client must never set; refused rather than silently ignored.
const FORBIDDEN: &[&str] = &["id", "status", "balance", "error_message", "completed_at"];

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(rename = "toUserId")]
    to_user_id: Option<Value>,
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(rename = "fromUserId")]
    from_user_id: Option<Value>,
    description: Option<Value>,
}

/// A request that passed validation.
struct Valid {
    to: Uuid,
    amount: i64,
    description: Option<String>,
}

fn validate(bytes: &[u8], caller: Uuid, s: &AppState) -> ApiResult<Valid> {
    let map: serde_json::Map<String, Value> = parse_json(bytes)?;
    let mut details: Vec<FieldError> = FORBIDDEN
        .iter()
        .filter(|f| map.contains_key(**f))
        .map(|f| FieldError::new(*f, "must not be set by the client"))
        .collect();
    // Older clients may name the currency; only the one this PayFlow moves is
    // accepted, never another silently moved as this one.
    if let Some(c) = map.get("currency") {
        if !c.as_str().is_some_and(|c| c.eq_ignore_ascii_case(s.currency.code())) {
            details.push(FieldError::new("currency", format!("must be {}", s.currency.code())));
        }
    }
    // The syntax passed above; what is left is the shape (a field given twice).
    let body: Body = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::validation(vec![FieldError::new("body", strip_position(&e.to_string()))]))?;

    if let Some(from) = &body.from_user_id {
        if from.as_str().and_then(|f| Uuid::parse_str(f).ok()) != Some(caller) {
            return Err(ApiError::forbidden());
        }
    }
    let to = match body.to_user_id.as_ref().map(|v| v.as_str().and_then(|t| Uuid::parse_str(t).ok())) {
        None => {
            details.push(FieldError::new("toUserId", "is required"));
            None
        }
        Some(None) => {
            details.push(FieldError::new("toUserId", "must be a user id (UUID)"));
            None
        }
        Some(Some(t)) if t == caller => {
            return Err(ApiError::bad_request(
                "self_transfer",
                "Cannot transfer to yourself",
                vec![FieldError::new("toUserId", "must differ from the sender")],
            ))
        }
        Some(Some(t)) => Some(t),
    };
    let amount = match body.amount {
        None => {
            details.push(FieldError::new("amount", "is required"));
            None
        }
        Some(raw) => match parse_json_amount(raw, s.currency, s.max_amount) {
            Ok(a) => Some(a),
            Err(e) => {
                details.push(FieldError::new("amount", e.0));
                None
            }
        },
    };
    let description = match body.description {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) if d.chars().count() <= 255 && !d.contains('\0') => Some(d),
        // Postgres text cannot hold a NUL: refused here rather than failing the insert.
        Some(Value::String(d)) if d.contains('\0') => {
            details.push(FieldError::new("description", "must not contain NUL characters"));
            None
        }
        Some(_) => {
            details.push(FieldError::new("description", "must be a string of at most 255 characters"));
            None
        }
    };
    match (to, amount) {
        (Some(to), Some(amount)) if details.is_empty() => Ok(Valid { to, amount, description }),
        _ => Err(ApiError::validation(details)),
    }
}

fn json_response(status: u16, body: String, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res =
        (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
    if replayed {
        res.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

pub async fn create(State(s): State<AppState>, user: AuthUser, req: Request) -> ApiResult<Response> {
    let correlation_id =
        req.extensions().get::<CorrelationId>().map(|c| c.0.clone()).unwrap_or_else(|| Uuid::new_v4().to_string());
    let headers = req.headers().clone();
    let bytes = read_body(req).await?;
    let caller = user.id().0;
    let v = validate(&bytes, caller, &s)?;
    let key = IdempotencyKey::from_headers(&headers)?.map(IdempotencyKey::into_string);
    let currency = s.currency.code().to_string();

    let new = NewTransaction {
        id: Uuid::now_v7(),
        from: caller,
        to: v.to,
        amount: v.amount,
        currency,
        description: v.description,
        correlation_id,
    };
    // The transaction the key's record points at: this request's, or the one it resumes.
    let recorded = watch::Sender::new(new.id);
    let Some(k) = key else { return accept(&s, caller, new, None, &recorded).await };
    let result = tokio::select! {
        r = accept(&s, caller, new, Some(&k), &recorded) => r,
        never = idempotency::keep_alive(&s.pool, caller, &k, &recorded) => match never {},
    };
    // An attempt that failed on our side hands its record over, so that the
    // client's retry carries on at once instead of being told that the request
    // is still in flight until the record goes stale.
    if matches!(&result, Err(e) if e.status.is_server_error()) {
        idempotency::abandon_soon(s.pool.clone(), caller, k, *recorded.borrow());
    }
    result
}

/// Records, holds and enqueues `new` (or finishes what an earlier attempt
/// under the same key left), and answers.
async fn accept(
    s: &AppState,
    caller: Uuid,
    new: NewTransaction,
    key: Option<&str>,
    recorded: &watch::Sender<Uuid>,
) -> ApiResult<Response> {
    let idem = key.map(|k| (caller, k));
    let fp = key.map(|_| idempotency::fingerprint(new.to, new.amount, &new.currency, new.description.as_deref()));
    // The common case, a new key (or none), records key and transaction in one statement
    // (shared with the requests arriving at the same moment).
    let fresh =
        key.zip(fp.clone()).map(|(key, fingerprint)| FreshKey { user: caller, key: key.to_string(), fingerprint });
    let t = match s.batches.insert_pending(new.clone(), fresh).await? {
        Some(t) => t,
        None => {
            let (k, fp) = (key.unwrap_or_default(), fp.as_deref().unwrap_or_default());
            match idempotency::begin(&s.pool, caller, k, fp).await? {
                // An abandoned record taken over: record the transaction under it.
                Begin::Fresh => record_under_taken_key(s, &new, caller, k).await?,
                Begin::Replay { status, body } => {
                    s.txn_metrics.replayed.inc();
                    return Ok(json_response(status, body, true));
                }
                Begin::Mismatch => {
                    return Err(ApiError::unprocessable(
                        "idempotency_key_reused",
                        "Idempotency-Key was already used with a different request",
                    ))
                }
                Begin::InFlight => {
                    return Err(ApiError::conflict(
                        "idempotency_key_in_flight",
                        "A request with this Idempotency-Key is still being processed",
                    ))
                }
                Begin::Resume { transaction_id } => {
                    recorded.send_replace(transaction_id);
                    match store::get(&s.pool, transaction_id).await? {
                        Some(t) => return resume(s, caller, k, t, &new.correlation_id).await,
                        // Its row was dropped with nothing held (an unknown hold outcome
                        // cleaned up, then the record not released): start afresh under the key.
                        None => {
                            recorded.send_replace(new.id);
                            record_under_taken_key(s, &new, caller, k).await?
                        }
                    }
                }
            }
        }
    };
    match hold_then_accept(s, &t, idem, &new.correlation_id, false).await? {
        Outcome::Answered(res) => Ok(res),
        Outcome::Unknown(reason) => {
            tracing::warn!(transaction_id = %t.id, %reason, "hold outcome unknown; voiding");
            // Nothing can have moved (no settle message exists). The key is forgotten
            // only once nothing is left: the hold voided and the row dropped. Otherwise
            // it stays with its transaction, as after a crash (a retry resumes it, or
            // the reversal finishes it), so one key never makes two transactions.
            let voided =
                matches!(s.wallet.void(t.id, &new.correlation_id).await, Ok(Resolution::Voided | Resolution::NotFound));
            if voided {
                match store::forget(&s.pool, t.id, idem).await {
                    Ok(true) => {}
                    // The reversal finished it meanwhile: the key stays with it.
                    Ok(false) => tracing::warn!(transaction_id = %t.id, "voided, but no longer PENDING; the key stays"),
                    Err(e) => {
                        tracing::warn!(transaction_id = %t.id, error = %e, "voided, but the row stays; so does its key")
                    }
                }
            }
            Err(ApiError::unavailable("Payments are temporarily unavailable, please retry"))
        }
    }
}

/// What placing the hold came to.
enum Outcome {
    /// Accepted (201, settle message enqueued) or refused by wallet (the
    /// refusal stored as the answer, the row dropped): either way, answered.
    Answered(Response),
    /// Wallet's answer is unknown; the caller decides what to leave behind.
    Unknown(String),
}

/// Places the hold and, once it is held, enqueues the settle message together
/// with the stored answer.
async fn hold_then_accept(
    s: &AppState,
    t: &Transaction,
    idem: Option<(Uuid, &str)>,
    correlation_id: &str,
    replayed: bool,
) -> ApiResult<Outcome> {
    let hold = HoldRequest {
        id: t.id,
        from: t.from_user_id,
        to: t.to_user_id,
        amount: t.amount,
        currency: t.currency.clone(),
        correlation_id: correlation_id.to_string(),
    };
    match s.batches.hold(hold).await {
        Hold::Held => {
            crate::fault::point("transaction-after-hold");
            let body = t.accepted_json().to_string();
            let accepted = Accepted {
                id: t.id,
                correlation_id: correlation_id.to_string(),
                key: idem.map(|(user, k)| (user, k.to_string())),
                response: body.clone(),
            };
            s.batches.accept(accepted).await?;
            s.relay_wake.notify_one();
            s.txn_metrics.accepted.inc();
            crate::fault::point("transaction-after-accept");
            Ok(Outcome::Answered(json_response(201, body, replayed)))
        }
        Hold::Refused(status, err) => {
            let body = json!({"error": err["error"], "code": err["code"]});
            // Not PENDING any more means the reversal finished it; the refusal is
            // still the answer to this request, and a retry resumes the transaction.
            if !store::reject(&s.pool, t.id, idem, status, &body).await? {
                tracing::warn!(transaction_id = %t.id, "hold refused, but no longer PENDING; the key stays");
            }
            s.txn_metrics.rejected.with_label_values(&[&status.to_string()]).inc();
            Ok(Outcome::Answered(json_response(status, body.to_string(), replayed)))
        }
        Hold::Unknown(reason) => Ok(Outcome::Unknown(reason)),
    }
}

/// Records `new` under a key record this request has just taken over.
async fn record_under_taken_key(s: &AppState, new: &NewTransaction, caller: Uuid, key: &str) -> ApiResult<Transaction> {
    match store::insert_pending(&s.pool, new, Some((caller, key))).await {
        Ok(t) => Ok(t),
        Err(e) => {
            if let Err(e) = idempotency::release_unless(&s.pool, caller, key, new.id).await {
                tracing::warn!(error = %e, "could not release idempotency record");
            }
            Err(e.into())
        }
    }
}

/// A record abandoned by a crash after its transaction was recorded, taken
/// over by this retry: finish what the crash interrupted (the hold is
/// idempotent by id; the settle message and the answer commit together), so
/// the retried request settles instead of waiting for the reversal to fail it.
async fn resume(s: &AppState, caller: Uuid, key: &str, t: Transaction, correlation_id: &str) -> ApiResult<Response> {
    if t.status == Status::Pending {
        return match hold_then_accept(s, &t, Some((caller, key)), correlation_id, true).await? {
            Outcome::Answered(res) => Ok(res),
            Outcome::Unknown(reason) => {
                // Left as it is: a later retry resumes it again, or the reversal fails it.
                tracing::warn!(transaction_id = %t.id, %reason, "hold outcome unknown on resume");
                Err(ApiError::unavailable("Payments are temporarily unavailable, please retry"))
            }
        };
    }
    // Final already (the reversal got there first): answer it as it is now.
    let text = t.accepted_json().to_string();
    idempotency::finish(&s.pool, caller, key, 201, &text).await?;
    Ok(json_response(201, text, true))
}
