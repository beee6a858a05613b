//! The script registry: `/api/v1/scripts[/{name}[/rollback]]`.
//!
//! Storing checks, compiles and signs the source with the server key; a
//! source with compile errors gets the 400 `CompileError` envelope (with
//! `diagnostics`) and nothing is stored. Storing the current source again
//! makes no new version.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::AppState;
use super::error::ApiError;
use super::execute::envelope_response;
use super::extract::JsonBody;
use super::store::{NewVersion, Put, Rollback, VersionMeta};

/// The body of `POST /api/v1/scripts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreRequest {
    pub name: String,
    pub source: String,
}

/// The body of `POST /api/v1/scripts/{name}/rollback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub version: i64,
}

/// `^[A-Za-z0-9_-]{1,64}$`: safe in a URL path segment and a file name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "script name {name:?} is not 1 to 64 of A-Z, a-z, 0-9, `_` and `-`"
        )))
    }
}

fn stored(name: &str, meta: &VersionMeta, unchanged: bool) -> Value {
    let mut v = json!({
        "name": name,
        "version": meta.version,
        "source_sha256": meta.source_sha256,
        "artifact_sha256": meta.artifact_sha256,
    });
    if unchanged {
        v["unchanged"] = json!(true);
    }
    v
}

/// `POST /api/v1/scripts`: 201 with the new version, 200 `unchanged`, or
/// 400 with the diagnostics.
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<StoreRequest>,
) -> Result<Response, ApiError> {
    check_name(&body.name)?;
    let limit = state.config().max_script_bytes;
    if body.source.len() > limit {
        return Err(ApiError::ScriptTooLarge {
            size: body.source.len(),
            limit,
        });
    }
    let source_sha256 = hex::encode(Sha256::digest(body.source.as_bytes()));
    if let Some(current) = state.store().current(&body.name).await?
        && current.meta.source_sha256 == source_sha256
    {
        return Ok(Json(stored(&body.name, &current.meta, true)).into_response());
    }
    let built = match state.build(&body.name, body.source.clone()).await? {
        Ok(built) => built,
        Err(report) => return Ok(envelope_response(report)),
    };
    let artifact_sha256 = hex::encode(Sha256::digest(&built.artifact));
    let put = state
        .store()
        .put(&NewVersion {
            name: &body.name,
            source: &body.source,
            source_sha256: &source_sha256,
            artifact: &built.artifact,
            artifact_sha256: &artifact_sha256,
        })
        .await?;
    Ok(match put {
        Put::Unchanged(meta) => Json(stored(&body.name, &meta, true)).into_response(),
        Put::Created(meta) => (StatusCode::CREATED, Json(stored(&body.name, &meta, false))).into_response(),
    })
}

/// `GET /api/v1/scripts`: `[{name, version, updated_at}]` by name.
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.store().list().await?)))
}

/// `GET /api/v1/scripts/{name}`: the current version with its source, and every version.
pub async fn show(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let store = state.store();
    let current = store
        .current(&name)
        .await?
        .ok_or(ApiError::ScriptNotFound { name, version: None })?;
    let versions = store.versions(&current.name).await?;
    Ok(Json(json!({
        "name": current.name,
        "version": current.meta.version,
        "source": current.source,
        "source_sha256": current.meta.source_sha256,
        "artifact_sha256": current.meta.artifact_sha256,
        "created_at": current.created_at,
        "updated_at": current.updated_at,
        "versions": versions,
    })))
}

/// `DELETE /api/v1/scripts/{name}`: 204, or 404.
pub async fn delete(State(state): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    if state.store().delete(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::ScriptNotFound { name, version: None })
    }
}

/// `POST /api/v1/scripts/{name}/rollback` with `{"version": N}`: make N current.
pub async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<RollbackRequest>,
) -> Result<Json<Value>, ApiError> {
    if body.version < 1 {
        return Err(ApiError::invalid("`version` counts from 1"));
    }
    match state.store().rollback(&name, body.version).await? {
        Rollback::Done => Ok(Json(json!({"name": name, "version": body.version}))),
        Rollback::NoScript => Err(ApiError::ScriptNotFound { name, version: None }),
        Rollback::NoVersion => Err(ApiError::ScriptNotFound {
            name,
            version: Some(body.version),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names() {
        assert!(valid_name("hello_world-2"));
        assert!(valid_name(&"a".repeat(64)));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("é"));
    }
}
