//! `POST /api/v1/execute/batch`: `{"items": [<execute request>, …]}` (at
//! most [`MAX_ITEMS`]), run concurrently, each through the same path as
//! `POST /api/v1/execute` (so the run slots bound them). The reply is always
//! 200 with `{"results": [{"status", "body"}, …]}` in item order; an item
//! that is malformed, fails or is shed gets its own status and error body
//! and never affects its siblings.

use axum::Json;
use axum::body::to_bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::execute::{ExecuteRequest, envelope_response, execute_one};
use super::extract::JsonBody;
use super::store::Actor;

/// The most items one batch may hold.
pub const MAX_ITEMS: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Each item is parsed on its own, so one malformed item is just that item's 400.
    items: Vec<Value>,
}

pub async fn execute_batch(
    State(state): State<AppState>,
    actor: Actor,
    JsonBody(body): JsonBody<BatchRequest>,
) -> Result<Json<Value>, ApiError> {
    if body.items.len() > MAX_ITEMS {
        return Err(ApiError::invalid(format!(
            "a batch holds at most {MAX_ITEMS} items, this one has {}",
            body.items.len()
        )));
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
    let response = match serde_json::from_value::<ExecuteRequest>(item) {
        Ok(request) => match execute_one(&state, &actor, request).await {
            Ok(report) => envelope_response(report),
            Err(e) => e.into_response(),
        },
        Err(e) => ApiError::from_json(&e).into_response(),
    };
    into_result(response).await
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
