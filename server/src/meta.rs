//! `GET /api/v1/health`, `GET /api/v1/info` and the JSON 404/405 fallbacks.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;

/// The answer of `GET /api/v1/health` (described only: built as JSON).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Health {
    status: HealthStatus,
    /// The failing parts (`database`, `redis`, `registry`, `jobs`); empty when `ok`.
    degraded: Vec<String>,
    version: String,
    /// `{status: ok|error, backend, message?}`.
    #[schema(value_type = Object)]
    database: Value,
    /// Cache sizes and run slots.
    #[schema(value_type = Object)]
    cache: Value,
    /// `ok`, `degraded` (unreachable) or `off` (no `redis_url`).
    redis: String,
    /// The job queue: `database` (the embedded queue), `ok` (NATS
    /// reachable) or `degraded` (NATS not reachable: jobs are accepted and
    /// wait in the database).
    jobs: String,
    /// Edge nodes: the registry they follow.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    registry: Option<Value>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum HealthStatus {
    Ok,
    Degraded,
}

/// The answer of `GET /api/v1/info` (described only: built as JSON).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Info {
    version: String,
    /// The most a run may use, in the units of an execute request's `limits`.
    #[schema(value_type = Object)]
    limits: Value,
    /// Body and script size limits, run and compile slots, queue wait.
    #[schema(value_type = Object)]
    requests: Value,
    /// `{"allowed": [capability, …]}`.
    #[schema(value_type = Object)]
    capabilities: Value,
    /// Every command: `{name, capability, summary}`.
    #[schema(value_type = Vec<Object>)]
    commands: Value,
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long the database may take to answer the health check's ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness and readiness: 200 whenever this node can serve runs, with
/// `"status": "ok"`, or `"degraded"` and the names of the failing parts in
/// `"degraded"` when a backing service is down — the database not answering
/// (or not within [`PING_TIMEOUT`]): cached stored scripts keep running,
/// registry writes answer 503 — so a load balancer keeps a degraded node in
/// rotation. The body also shows the caches and run slots.
#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "meta",
    summary = "Liveness and readiness: 200 while this node can serve runs",
    responses((status = 200, description = "`ok`, or `degraded` with the failing parts.", body = Health)),
)]
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
    let jobs = state.jobs().health();
    body["jobs"] = json!(jobs);
    if jobs == "degraded" {
        degraded.push("jobs");
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
#[utoipa::path(
    get,
    path = "/api/v1/info",
    tag = "meta",
    summary = "Version, limits, capability policy and commands",
    responses((status = 200, description = "Server information.", body = Info)),
)]
pub async fn info(State(state): State<AppState>) -> Json<Value> {
    let config = state.config();
    let l = state.live().limits;
    let commands: Vec<Value> = avap_hostfns::commands()
        .iter()
        .map(|c| json!({"name": c.name, "capability": c.capability.as_str(), "summary": c.summary}))
        .collect();
    let policy = state.runtime().policy();
    let allowed: Vec<&str> = policy.allowed().map(avap_hostfns::Capability::as_str).collect();
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
