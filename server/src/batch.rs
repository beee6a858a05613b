//! `POST /api/v1/execute/batch`: `{"items": [<execute request>, …]}` or the
//! bare array `[<execute request>, …]` (at most [`MAX_ITEMS`]), each item run through the same path as
//! `POST /api/v1/execute` (so the run slots bound them, and each is audited).
//! The reply is always 200 with `{"results": [{"status", "body"}, …]}` in
//! item order.
//!
//! * Without `"transaction": true` the items run concurrently and
//!   independently: one that is malformed, fails or is shed gets its own
//!   status and error body and never affects its siblings.
//! * With `"transaction": true` (see [`transactional`]) they run one after
//!   another, in order, and every application-database statement of every
//!   item runs on one connection inside one transaction: committed when
//!   every item's run ended without an error, rolled back otherwise.

use std::time::Duration;

use avap_runtime::{Effects, RunReport};
use axum::Json;
use axum::body::to_bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::execute::{ExecuteRequest, envelope_response, execute_one, execute_one_with};
use super::openapi::{ApiErrorBody, EnvelopeOrError};
use super::store::Actor;

/// The most items one batch may hold.
pub const MAX_ITEMS: usize = 64;

/// The body of `POST /api/v1/execute/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Up to 64 execute requests (see `ExecuteRequest`). Each item is parsed
    /// on its own, so an item that is not one is just that item's 400 result.
    #[schema(max_items = 64, value_type = Vec<Value>)]
    items: Vec<Value>,
    /// Run the items one after another, in order, with every
    /// application-database statement inside one transaction: committed when
    /// every item's run ends without an error, rolled back otherwise (later
    /// items are then not run). Connectors and outbound HTTP stay outside it.
    #[serde(default)]
    transaction: bool,
}

/// `{"items": …, "transaction": …}`, or the bare array of items.
pub struct BatchBody(BatchRequest);

impl axum::extract::FromRequest<AppState> for BatchBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = super::extract::read_body(req, state).await?;
        match super::extract::parse::<Value>(&bytes)? {
            Value::Array(items) => Ok(BatchBody(BatchRequest {
                items,
                transaction: false,
            })),
            object @ Value::Object(_) => serde_json::from_value(object)
                .map(BatchBody)
                .map_err(|e| ApiError::from_json(&e)),
            other => Err(ApiError::invalid(format!(
                "the body must be {{\"items\": [...]}} or an array of execute requests, not {}",
                match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    _ => "a string",
                }
            ))),
        }
    }
}

/// The reply of `POST /api/v1/execute/batch` (described only: built as JSON).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct BatchResponse {
    /// One per item, in item order.
    results: Vec<BatchResult>,
    /// With `"transaction": true` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction: Option<TransactionOutcome>,
    /// When rolled back: the index of the first item that failed (null: the commit itself failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_item: Option<u64>,
    /// When rolled back: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// One item's outcome: its status and body as `POST /api/v1/execute` would answer.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct BatchResult {
    /// The item's HTTP status; 424 for an item not run because the transaction rolled back first.
    #[schema(minimum = 100, maximum = 599)]
    status: u16,
    /// The envelope, or the error (kind `NotRun` for an item not run).
    body: EnvelopeOrError,
    /// With `"transaction": true` only: what became of this item's writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction: Option<TransactionOutcome>,
}

/// What became of a transactional batch's writes.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum TransactionOutcome {
    Committed,
    RolledBack,
}

/// Run up to 64 execute requests at once.
///
/// Concurrently and independently, or with `"transaction": true` in order
/// inside one database transaction. The reply is 200 whatever the items
/// did: each result has its own status.
#[utoipa::path(
    post,
    path = "/api/v1/execute/batch",
    tag = "runs",
    // The bare-array form is added to the document by `openapi::refine`.
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per item, in order, each with its own status.", body = BatchResponse),
        (status = 400, description = "The batch itself is malformed (`InvalidJson`, `InvalidRequest`) or has more than 64 items.", body = ApiErrorBody),
        (status = 413, description = "The body is over the server's limit (`BodyTooLarge`).", body = ApiErrorBody),
    ),
)]
pub async fn execute_batch(
    State(state): State<AppState>,
    actor: Actor,
    BatchBody(body): BatchBody,
) -> Result<Json<Value>, ApiError> {
    if body.items.len() > MAX_ITEMS {
        return Err(ApiError::invalid(format!(
            "a batch holds at most {MAX_ITEMS} items, this one has {}",
            body.items.len()
        )));
    }
    if body.transaction {
        return Ok(Json(transactional::run(&state, &actor, body.items).await));
    }
    let tasks: Vec<_> = body
        .items
        .into_iter()
        .map(|item| tokio::spawn(run_item(state.clone(), actor.clone(), item)))
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        let result = match task.await {
            Ok(result) => result,
            Err(e) => {
                let error = ApiError::Internal(anyhow::anyhow!("batch item task failed: {e}"));
                into_result(error.into_response()).await
            }
        };
        results.push(result);
    }
    Ok(Json(json!({ "results": results })))
}

/// One item, as `{"status", "body"}`.
async fn run_item(state: AppState, actor: Actor, item: Value) -> Value {
    let response = match parse_item(item) {
        Ok(request) => match execute_one(&state, &actor, request).await {
            Ok(report) => envelope_response(report),
            Err(e) => e.into_response(),
        },
        Err(e) => e.into_response(),
    };
    into_result(response).await
}

/// An item as an execute request: a JSON object (serde would fill the
/// struct from an array too).
fn parse_item(item: Value) -> Result<ExecuteRequest, ApiError> {
    if !item.is_object() {
        return Err(ApiError::invalid(
            "a batch item must be a JSON object (an execute request)",
        ));
    }
    serde_json::from_value(item).map_err(|e| ApiError::from_json(&e))
}

/// A response of the single-execute path as a batch result.
async fn into_result(response: Response) -> Value {
    let status = response.status().as_u16();
    let body = match to_bytes(response.into_body(), usize::MAX).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    json!({"status": status, "body": body})
}

/// `"transaction": true`.
///
/// * The items run one after another in the request's task (never spawned),
///   each through [`execute_one_with`] with the server's effects, except
///   that the application database is [`Databases::in_transaction`]'s: one
///   pooled connection, `BEGIN` before the first statement, a savepoint per
///   statement. Stored scripts (`{"name": …}`) and inline ones behave the
///   same. Connectors (`avapConnector`) and outbound HTTP stay outside the
///   transaction.
/// * An item *fails* when its request is malformed, it cannot run (unknown
///   script, no run slot, …) or its run ends with an error (the envelope's
///   `status` is false; a script's own `_status` does not count). The first
///   failure stops the batch: the later items are not run, and the
///   transaction rolls back.
/// * The reply adds `"transaction": "committed" | "rolled_back"`, and when
///   rolled back `"failed_item"` (the index of the first failed item, or
///   `null` when the commit itself failed) and `"reason"`. Every result carries `"transaction"` too; items not run
///   have status 424 and a `NotRun` error.
/// * The whole batch gets at most the sum of its items' time limits; when
///   that runs out, the current item is cut off, and the batch rolls back.
///   A cancelled request (client gone, request timeout) drops the
///   transaction unfinished, which rolls it back.
///
/// [`Databases::in_transaction`]: avap_hostfns::effects::db::Databases::in_transaction
mod transactional {
    use std::sync::Arc;

    use avap_hostfns::effects::db::{Databases, Transaction, TransactionOutcome};
    use tokio::time::Instant;

    use super::{
        Actor, ApiError, AppState, Duration, Effects, ExecuteRequest, IntoResponse, RunReport, Value,
        envelope_response, execute_one_with, into_result, json,
    };

    /// How one item ended.
    enum ItemEnd {
        /// Ran without an error.
        Succeeded(Value),
        Failed(Value),
        /// Not run: an earlier item failed or the time budget ran out.
        NotRun,
    }

    pub(super) async fn run(state: &AppState, actor: &Actor, items: Vec<Value>) -> Value {
        let requests: Vec<Result<ExecuteRequest, ApiError>> = items.into_iter().map(super::parse_item).collect();
        let budget = time_budget(state, &requests);
        let (effects, transaction) = shared_effects(state);
        let deadline = Instant::now() + budget;

        let mut ends = Vec::with_capacity(requests.len());
        let mut failed_item = None;
        let mut out_of_time = false;
        for (index, request) in requests.into_iter().enumerate() {
            if failed_item.is_some() {
                ends.push(ItemEnd::NotRun);
                continue;
            }
            let started = Instant::now();
            let end = match tokio::time::timeout_at(deadline, run_one(state, actor, request, effects.clone())).await {
                Ok(end) => end,
                Err(_) => {
                    out_of_time = true;
                    ItemEnd::Failed(json!({
                        "status": 504,
                        "body": {"status": false, "elapsed": started.elapsed().as_secs_f64(), "error": {
                            "kind": "TimeLimit",
                            "message": format!(
                                "the batch ran out of its time budget ({} ms, the sum of its items' time limits) \
                                 during this item",
                                budget.as_millis()
                            ),
                        }},
                    }))
                }
            };
            if matches!(end, ItemEnd::Failed(_)) {
                failed_item = Some(index);
            }
            ends.push(end);
        }
        // The runs are over: nothing else holds the transaction's connection.
        drop(effects);
        let commit = failed_item.is_none();
        let outcome = match transaction {
            Some(transaction) => transaction.finish(commit).await,
            None if commit => TransactionOutcome::Committed,
            None => TransactionOutcome::RolledBack { reason: None },
        };
        reply(ends, &outcome, failed_item, out_of_time.then_some(budget))
    }

    /// The server's effects with the application database replaced by a
    /// transaction of its own (no database configured: the effects as they
    /// are, and no transaction).
    fn shared_effects(state: &AppState) -> (Effects, Option<Arc<Transaction>>) {
        let mut effects = state.live().effects.clone();
        match effects.db.as_deref().map(Databases::in_transaction) {
            Some((databases, transaction)) => {
                effects.db = Some(Arc::new(databases));
                (effects, Some(transaction))
            }
            None => (effects, None),
        }
    }

    /// The sum of the items' time limits (each as clamped for its run).
    fn time_budget(state: &AppState, requests: &[Result<ExecuteRequest, ApiError>]) -> Duration {
        let max = state.live().limits;
        let ms = requests
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| r.limits.as_ref().map_or(max, |l| l.clamp(max)).time_ms)
            .fold(0u64, u64::saturating_add);
        Duration::from_millis(ms)
    }

    async fn run_one(
        state: &AppState,
        actor: &Actor,
        request: Result<ExecuteRequest, ApiError>,
        effects: Effects,
    ) -> ItemEnd {
        let report: Result<RunReport, ApiError> = match request {
            Ok(request) => execute_one_with(state, actor, request, Some(effects)).await,
            Err(e) => Err(e),
        };
        match report {
            Ok(report) => {
                let succeeded = report.envelope.is_ok();
                let result = into_result(envelope_response(report)).await;
                if succeeded {
                    ItemEnd::Succeeded(result)
                } else {
                    ItemEnd::Failed(result)
                }
            }
            Err(e) => ItemEnd::Failed(into_result(e.into_response()).await),
        }
    }

    fn reply(
        ends: Vec<ItemEnd>,
        outcome: &TransactionOutcome,
        failed_item: Option<usize>,
        ran_out: Option<Duration>,
    ) -> Value {
        let (word, reason) = match outcome {
            TransactionOutcome::Committed => ("committed", None),
            TransactionOutcome::RolledBack { reason } => {
                let reason = match (failed_item, ran_out, reason) {
                    (Some(i), Some(budget), _) => format!(
                        "item {i} was cut off: the batch ran out of its time budget ({} ms, the sum of its items' \
                         time limits)",
                        budget.as_millis()
                    ),
                    (Some(i), None, _) => format!("item {i} failed"),
                    (None, _, Some(why)) => why.clone(),
                    (None, _, None) => "the transaction could not be committed".to_owned(),
                };
                ("rolled_back", Some(reason))
            }
        };
        let results: Vec<Value> = ends
            .into_iter()
            .map(|end| {
                let mut result = match end {
                    ItemEnd::Succeeded(r) | ItemEnd::Failed(r) => r,
                    ItemEnd::NotRun => json!({
                        "status": 424,
                        "body": {"error": {
                            "kind": "NotRun",
                            "message": format!(
                                "not run: the batch transaction was rolled back ({})",
                                reason.as_deref().unwrap_or("an earlier item failed")
                            ),
                        }},
                    }),
                };
                result["transaction"] = Value::from(word);
                result
            })
            .collect();
        let mut reply = json!({"results": results, "transaction": word});
        if let Some(reason) = reason {
            reply["failed_item"] = failed_item.map_or(Value::Null, Value::from);
            reply["reason"] = Value::from(reason);
        }
        reply
    }
}
