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

/// Liveness and readiness: 200 whenever this node can serve runs, with
/// `"status": "ok"`, or `"degraded"` and the names of the failing parts in
/// `"degraded"` when a backing service is down — the database not answering
/// (or not within [`PING_TIMEOUT`]): cached stored scripts keep running,
/// registry writes answer 503 — so a load balancer keeps a degraded node in
/// rotation. The body also shows the caches and run slots.
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut degraded: Vec<&str> = Vec::new();
    let backend = state.store().backend();
    let database = match tokio::time::timeout(PING_TIMEOUT, state.store().ping()).await {
        Ok(answer) => answer,
        Err(_) => Err(anyhow::anyhow!(
            "the database did not answer within {} s",
            PING_TIMEOUT.as_secs()
        )),
    };
    let db = match &database {
        Ok(()) => json!({"status": "ok", "backend": backend}),
        Err(e) => {
            degraded.push("database");
            json!({"status": "error", "backend": backend, "message": format!("{e:#}")})
        }
    };
    let mut body = json!({
        "version": VERSION,
        "database": db,
        "cache": state.cache_state(),
    });
    // Each further backing service adds its own entry to `body` here and
    // its name to `degraded` when it is down.
    // Redis: "ok", "degraded" (unreachable: local caches, per-node rate
    // limits) or "off" (not configured).
    let redis = state.redis_health();
    body["redis"] = json!(redis);
    if redis == "degraded" {
        degraded.push("redis");
    }
    // Edge nodes: the registry they follow; unreachable is degraded (the
    // mirror on disk is still served).
    if let Some(edge) = state.edge() {
        let (registry, unreachable) = edge.health();
        body["registry"] = registry;
        if unreachable {
            degraded.push("registry");
        }
    }
    body["status"] = json!(if degraded.is_empty() { "ok" } else { "degraded" });
    body["degraded"] = json!(degraded);
    (StatusCode::OK, Json(body))
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
            "max_concurrent_compiles": config.max_concurrent_compiles,
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
