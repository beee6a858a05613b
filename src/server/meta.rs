//! `GET /api/v1/health`, `GET /api/v1/info` and the JSON 404/405 fallbacks.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long the database may take to answer the health check's ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness and readiness: 200 with `"status": "ok"` when the database
/// answers, 503 with `"status": "unavailable"` and the reason when not (or
/// when it does not answer within [`PING_TIMEOUT`]); with the state of the
/// caches and run slots.
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = match tokio::time::timeout(PING_TIMEOUT, state.store().ping()).await {
        Ok(answer) => answer,
        Err(_) => Err(anyhow::anyhow!(
            "the database did not answer within {} s",
            PING_TIMEOUT.as_secs()
        )),
    };
    let (status, code, db) = match &database {
        Ok(()) => ("ok", StatusCode::OK, json!({"status": "ok"})),
        Err(e) => (
            "unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "error", "message": format!("{e:#}")}),
        ),
    };
    (
        code,
        Json(json!({
            "status": status,
            "version": VERSION,
            "database": db,
            "cache": state.cache_state(),
        })),
    )
}

/// What this server is and allows: limits in the units of the execute
/// request's `limits`, the capability policy and the command catalogue.
pub async fn info(State(state): State<AppState>) -> Json<Value> {
    let config = state.config();
    let l = config.limits;
    let commands: Vec<Value> = avap_hostfns::commands()
        .iter()
        .map(|c| json!({"name": c.name, "capability": c.capability.as_str(), "summary": c.summary}))
        .collect();
    let allowed: Vec<&str> = config.policy.allowed().map(avap_hostfns::Capability::as_str).collect();
    Json(json!({
        "version": VERSION,
        "limits": {
            "fuel": l.fuel,
            "time_ms": l.time_ms,
            "memory_mb": l.memory_bytes >> 20,
            "stack_kb": l.stack_bytes >> 10,
            "output_kb": l.output_bytes >> 10,
        },
        "requests": {
            "max_body_bytes": config.max_body_bytes,
            "max_script_bytes": config.max_script_bytes,
            "max_concurrent_runs": config.max_concurrent_runs,
            "queue_wait_ms": u64::try_from(config.queue_wait.as_millis()).unwrap_or(u64::MAX),
        },
        "capabilities": {"allowed": allowed},
        "commands": commands,
    }))
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound {
        path: uri.path().to_owned(),
    }
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
