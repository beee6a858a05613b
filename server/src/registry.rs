//! The script registry: `/api/v1/scripts[/{name}[/rollback|/rebuild]]`.
//!
//! Storing checks, compiles and signs the source with the server key; a
//! source with compile errors gets the 400 `CompileError` envelope (with
//! `diagnostics`) and nothing is stored. Storing the current source again
//! makes no new version.
//!
//! Every write is audited: a change commits its `audit_log` row with it
//! (in [`store`](super::store)); a refused one (compile error, not found,
//! unchanged) is written here afterwards with its outcome.
//!
//! Libraries ([`libraries`](super::libraries)): a stored script may
//! `include("name")` another. A version is built against the libraries'
//! versions current at the time, recorded in its signed meta and indexed in
//! `script_libraries`; a library update changes nothing until a dependent
//! is rebuilt (`POST .../rebuild`). Storing the same source again is still
//! `unchanged` when a library has moved on: only a rebuild picks it up, so
//! what a store does never depends on other scripts' updates. A library
//! that current versions include is not deleted (409 `LibraryInUse`)
//! unless `?force=true`.
//!
//! On an edge node the registry is a read-only mirror ([`edge`](super::edge)):
//! writes answer 409 `EdgeReadOnly` naming the registry to write to (and are
//! audited as refused); the list and a script's entry reflect the mirror.

use avap_hostfns::artifact::{Meta, PolicyLimits, RatePolicy, RunPolicy};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::audit;
use super::error::ApiError;
use super::execute::{LimitsSpec, envelope_response};
use super::extract::{JsonBody, object, whole};
use super::openapi::{ApiErrorBody, EnvelopeOrError};
use super::store::{Actor, AuditRow, Deleted, Dependent, NewVersion, Put, Rollback, ScriptSummary, VersionMeta};
use super::{Built, audit::query};

/// The body of `POST /api/v1/scripts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreRequest {
    /// 1 to 64 of `A-Za-z0-9_-`.
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub name: String,
    /// AVAP source; compile errors are a 400 and nothing is stored.
    pub source: String,
    /// This script's own per-run limits, each clamped to the server's
    /// maximum when it runs (unset: the maximum). Stored in its signed
    /// artifact: changing them makes a new version.
    #[serde(default, deserialize_with = "object::opt")]
    pub limits: Option<LimitsSpec>,
    /// Requests per second per client to this script (`/api/v1/run/{name}`),
    /// on top of the server's own rate limits.
    #[serde(default, deserialize_with = "object::opt")]
    pub rate_limit: Option<RateLimitSpec>,
}

/// A stored script's rate limit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Requests per second per client (API key, else IP), 1 or more.
    #[serde(deserialize_with = "whole::one")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub per_second: i64,
    /// Requests a client may send at once before the rate applies (default: `per_second`).
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub burst: Option<u64>,
}

/// The policy a store request asks for, checked: the rate 1 to 1,000,000
/// per second. Limits are taken as a request's are (clamped when the
/// script runs; a zero is a script that cannot run, as asked).
fn run_policy(body: &StoreRequest) -> Result<RunPolicy, ApiError> {
    if let Some(spec) = &body.limits {
        let given = [
            ("fuel", spec.fuel),
            ("time_ms", spec.time_ms),
            ("memory_mb", spec.memory_mb),
            ("stack_kb", spec.stack_kb),
            ("output_kb", spec.output_kb),
        ];
        // Stored in the artifact's JSON meta: keep to what every JSON reader holds exactly.
        if let Some((key, _)) = given.iter().find(|(_, value)| value.is_some_and(|n| n > MAX_LIMIT)) {
            return Err(ApiError::invalid(format!(
                "`limits.{key}` must be at most {MAX_LIMIT} (leave it out for the server's maximum)"
            )));
        }
    }
    let limits = body.limits.as_ref().map(|spec| PolicyLimits {
        fuel: spec.fuel,
        time_ms: spec.time_ms,
        memory_mb: spec.memory_mb,
        stack_kb: spec.stack_kb,
        output_kb: spec.output_kb,
    });
    let rate_limit = match &body.rate_limit {
        None => None,
        Some(rate) => {
            let in_range = |n: u64| (1..=MAX_RATE).contains(&n);
            let per_second = u64::try_from(rate.per_second).unwrap_or(0);
            let burst = rate.burst.unwrap_or(per_second);
            if !in_range(per_second) || !in_range(burst) {
                return Err(ApiError::invalid(format!(
                    "`rate_limit.per_second` and `rate_limit.burst` must be 1 to {MAX_RATE}"
                )));
            }
            Some(RatePolicy {
                per_second: u32::try_from(per_second).unwrap_or(u32::MAX),
                burst: u32::try_from(burst).unwrap_or(u32::MAX),
            })
        }
    };
    Ok(RunPolicy { limits, rate_limit })
}

/// The largest limit a stored script may carry (the schema's maximum).
const MAX_LIMIT: u64 = i64::MAX as u64;

/// The highest rate (and burst) a stored script may ask for.
const MAX_RATE: u64 = 1_000_000;

/// The policy recorded in a stored artifact (empty if it cannot be read).
fn policy_of(artifact: &[u8]) -> RunPolicy {
    stored_meta(artifact).map(|meta| meta.policy).unwrap_or_default()
}

/// The meta of a stored artifact; `None` if it cannot be read.
fn stored_meta(artifact: &[u8]) -> Option<Meta> {
    avap_hostfns::artifact::inspect(artifact).ok().map(|info| info.meta)
}

/// `limits` and `rate_limit` of a stored script's JSON (nulls when unset).
fn policy_json(policy: &RunPolicy) -> (Value, Value) {
    (json!(policy.limits), json!(policy.rate_limit))
}

/// The body of `POST /api/v1/scripts/{name}/rollback`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to make current.
    #[serde(deserialize_with = "whole::one")]
    #[schema(minimum = 1)]
    pub version: i64,
}

/// A version stored, or found unchanged (described only: built as JSON).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct StoredVersion {
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    name: String,
    version: i64,
    source_sha256: String,
    artifact_sha256: String,
    /// `true` when the source was the current version's: nothing stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    unchanged: Option<bool>,
}

/// A stored script (described only: built as JSON). An edge node shows
/// what it mirrors: no source and no older versions, and `mirrored_from`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ScriptDetail {
    name: String,
    version: i64,
    artifact_sha256: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    /// Every version, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    versions: Option<Vec<VersionMeta>>,
    /// Edge nodes: the registry the mirror follows.
    #[serde(skip_serializing_if = "Option::is_none")]
    mirrored_from: Option<String>,
    /// The stored scripts the current version includes, at the versions it
    /// was built with (empty when it includes none). Registry nodes only:
    /// an edge node runs the mirrored artifacts, which contain the
    /// libraries' code, and shows neither this nor `dependents`.
    #[serde(skip_serializing_if = "Option::is_none")]
    libraries: Option<Vec<LibraryUse>>,
    /// The current versions of other stored scripts that include this one
    /// (registry nodes only: an edge node does not know).
    #[serde(skip_serializing_if = "Option::is_none")]
    dependents: Option<Vec<DependentScript>>,
}

/// A library of a stored script's current version (described only: built as JSON).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct LibraryUse {
    name: String,
    /// The library's version this script was built with.
    version: i64,
    source_sha256: String,
    /// The library's current version; `null` when it was deleted since.
    current_version: Option<i64>,
    /// `true` when the library has changed since: rebuild to pick it up.
    stale: bool,
}

/// A stored script that includes this one (described only: built as JSON).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct DependentScript {
    name: String,
    /// Its current version.
    version: i64,
    /// This library's version it was built with.
    library_version: i64,
    /// `true` when built with an older version of this library.
    stale: bool,
}

/// A rollback done (described only: built as JSON).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct RolledBack {
    name: String,
    version: i64,
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

/// On an edge node the registry is a read-only mirror: writes go to the registry node.
fn refuse_on_edge(state: &AppState) -> Result<(), ApiError> {
    state.edge().map_or(Ok(()), |edge| Err(edge.read_only()))
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

/// What a store request did, for the audit trail.
enum Stored {
    /// A new version; its audit row committed with it.
    Created(Response),
    /// Nothing stored: `outcome` says why (`unchanged`, `CompileError`).
    NotStored {
        response: Response,
        outcome: &'static str,
        version: Option<i64>,
    },
}

/// `POST /api/v1/scripts`: 201 with the new version, 200 `unchanged`, or
/// 400 with the diagnostics. Every request that names a script is audited.
#[utoipa::path(
    post,
    path = "/api/v1/scripts",
    tag = "registry",
    summary = "Store (compile and sign) a script as a new version",
    request_body = StoreRequest,
    responses(
        (status = 201, description = "Stored as a new version.", body = StoredVersion),
        (status = 200, description = "The source is the current version's: nothing stored (`unchanged`).", body = StoredVersion),
        (status = 400, description = "Compile diagnostics (envelope `CompileError`; nothing stored), or an invalid request or name (`InvalidJson`, `InvalidRequest`).", body = EnvelopeOrError),
        (status = 403, description = "The script uses a capability this server denies (`CapabilityDenied`), or the key lacks the `admin` scope (`Forbidden`).", body = ApiErrorBody),
        (status = 409, description = "An edge node's registry is read-only (`EdgeReadOnly`).", body = ApiErrorBody),
        (status = 413, description = "The body (`BodyTooLarge`) or the source (`ScriptTooLarge`) is over the server's limit.", body = ApiErrorBody),
        (status = 503, description = "No compile slot became free in time (`Overloaded`), or the database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    actor: Actor,
    JsonBody(body): JsonBody<StoreRequest>,
) -> Result<Response, ApiError> {
    // An invalid name is not worth keeping (it may be anything the client sent).
    let script = valid_name(&body.name).then(|| body.name.clone());
    let refused = |outcome: &str, version: Option<i64>| AuditRow {
        script: script.clone(),
        version,
        ..AuditRow::new(&actor, "store", outcome)
    };
    let stored = store_script(&state, &actor, body).await;
    answer_audited(&state, stored, refused).await
}

/// The answer to a registry write: a change was audited with its commit;
/// anything else (unchanged, a compile error, a refusal) is audited here
/// with its outcome, through `refused`.
async fn answer_audited(
    state: &AppState,
    stored: Result<Stored, ApiError>,
    refused: impl Fn(&str, Option<i64>) -> AuditRow,
) -> Result<Response, ApiError> {
    match stored {
        Ok(Stored::Created(response)) => Ok(response),
        Ok(Stored::NotStored {
            response,
            outcome,
            version,
        }) => {
            audit::refused(state, refused(outcome, version)).await;
            Ok(response)
        }
        Err(e) => {
            audit::refused(state, refused(e.kind(), None)).await;
            Err(e)
        }
    }
}

async fn store_script(state: &AppState, actor: &Actor, body: StoreRequest) -> Result<Stored, ApiError> {
    refuse_on_edge(state)?;
    check_name(&body.name)?;
    let limit = state.config().max_script_bytes;
    if body.source.len() > limit {
        return Err(ApiError::ScriptTooLarge {
            size: body.source.len(),
            limit,
        });
    }
    let policy = run_policy(&body)?;
    let source_sha256 = hex::encode(Sha256::digest(body.source.as_bytes()));
    let unchanged = |meta: &VersionMeta| Stored::NotStored {
        response: Json(stored(&body.name, meta, true)).into_response(),
        outcome: "unchanged",
        version: Some(meta.version),
    };
    if let Some(current) = state.store().current(&body.name).await?
        && current.meta.source_sha256 == source_sha256
        && state
            .store()
            .artifact(&body.name, Some(current.meta.version))
            .await?
            .is_some_and(|(_, artifact)| policy_of(&artifact) == policy)
    {
        return Ok(unchanged(&current.meta));
    }
    let built = match state.build(&body.name, body.source.clone(), policy).await? {
        Ok(built) => built,
        Err(report) => {
            return Ok(Stored::NotStored {
                response: envelope_response(report),
                outcome: "CompileError",
                version: None,
            });
        }
    };
    let put = put_built(state, actor, &body.name, &body.source, &built, None).await?;
    Ok(match put {
        // Only a rebuild can be superseded.
        Put::Superseded => return Err(ApiError::Internal(anyhow::anyhow!("a store was superseded"))),
        Put::Unchanged(meta) => unchanged(&meta),
        Put::Created(meta) => {
            Stored::Created((StatusCode::CREATED, Json(stored(&body.name, &meta, false))).into_response())
        }
    })
}

/// Store `built` as the next version of `name` (unless its source and
/// artifact are the current version's), audited as `store`, or as
/// `rebuild` when it rebuilds version `rebuilds` (then only while that
/// version is still current).
async fn put_built(
    state: &AppState,
    actor: &Actor,
    name: &str,
    source: &str,
    built: &Built,
    rebuilds: Option<i64>,
) -> Result<Put, ApiError> {
    let source_sha256 = hex::encode(Sha256::digest(source.as_bytes()));
    let artifact_sha256 = hex::encode(Sha256::digest(&built.artifact));
    let put = state
        .store()
        .put(
            &NewVersion {
                name,
                source,
                source_sha256: &source_sha256,
                artifact: &built.artifact,
                artifact_sha256: &artifact_sha256,
                libraries: &built.libraries,
                action: if rebuilds.is_some() { "rebuild" } else { "store" },
                rebuilds,
            },
            actor,
        )
        .await?;
    state.script_changed(name);
    Ok(put)
}

/// `GET /api/v1/scripts`: `[{name, version, updated_at}]` by name.
#[utoipa::path(
    get,
    path = "/api/v1/scripts",
    tag = "registry",
    summary = "List stored scripts",
    responses(
        (status = 200, description = "Every stored script at its current version, by name.", body = Vec<ScriptSummary>),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if let Some(edge) = state.edge() {
        return Ok(Json(edge.scripts_json()));
    }
    Ok(Json(json!(state.store().list().await?)))
}

/// `GET /api/v1/scripts/{name}`: the current version with its source, and every version.
#[utoipa::path(
    get,
    path = "/api/v1/scripts/{name}",
    tag = "registry",
    summary = "A stored script and its versions",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The script.")),
    responses(
        (status = 200, description = "The current version with its source, and every version.", body = ScriptDetail),
        (status = 404, description = "No such script (`ScriptNotFound`).", body = ApiErrorBody),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn show(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    if let Some(edge) = state.edge() {
        return edge.script_json(&name).map(Json);
    }
    let store = state.store();
    let current = store
        .current(&name)
        .await?
        .ok_or(ApiError::ScriptNotFound { name, version: None })?;
    let versions = store.versions(&current.name).await?;
    let artifact = store
        .artifact(&current.name, Some(current.meta.version))
        .await?
        .map(|(_, artifact)| artifact)
        .unwrap_or_default();
    // One read of the meta for both its policy and its libraries.
    let (policy, used) = stored_meta(&artifact).map_or_else(Default::default, |meta| (meta.policy, meta.libraries));
    let (limits, rate_limit) = policy_json(&policy);
    let mut libraries = Vec::new();
    for lib in used {
        let current = store.current(&lib.name).await?.map(|c| c.meta);
        // By source too: a library deleted and stored again counts from version 1 again.
        let stale = current
            .as_ref()
            .is_none_or(|c| c.version != lib.version || c.source_sha256 != lib.source_sha256);
        libraries.push(json!({
            "name": lib.name,
            "version": lib.version,
            "source_sha256": lib.source_sha256,
            "current_version": current.map(|c| c.version),
            "stale": stale,
        }));
    }
    let dependents: Vec<Value> = store
        .dependents(&current.name)
        .await?
        .into_iter()
        .map(|d: Dependent| {
            json!({
                "name": d.name,
                "version": d.version,
                "library_version": d.library_version,
                "stale": d.library_version != current.meta.version
                    || d.library_source_sha256 != current.meta.source_sha256,
            })
        })
        .collect();
    Ok(Json(json!({
        "name": current.name,
        "version": current.meta.version,
        "source": current.source,
        "source_sha256": current.meta.source_sha256,
        "artifact_sha256": current.meta.artifact_sha256,
        "created_at": current.created_at,
        "updated_at": current.updated_at,
        "versions": versions,
        "limits": limits,
        "rate_limit": rate_limit,
        "libraries": libraries,
        "dependents": dependents,
    })))
}

/// The query of `DELETE /api/v1/scripts/{name}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// Delete a library even though current versions of other scripts
    /// include it (their stored versions keep running: they contain its code).
    #[serde(default)]
    pub force: bool,
}

/// `DELETE /api/v1/scripts/{name}`: 204, 404, or 409 for a library in use
/// (audited either way).
#[utoipa::path(
    delete,
    path = "/api/v1/scripts/{name}",
    tag = "registry",
    summary = "Delete a stored script and every version of it",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The script."), DeleteParams),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "A bad query string (`InvalidRequest`).", body = ApiErrorBody),
        (status = 404, description = "No such script (`ScriptNotFound`).", body = ApiErrorBody),
        (status = 409, description = "An edge node's registry is read-only (`EdgeReadOnly`), or the script is a library that current versions of other scripts include (`LibraryInUse`, with `dependents`; `?force=true` deletes it anyway).", body = ApiErrorBody),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    actor: Actor,
    Path(name): Path<String>,
    params: Result<Query<DeleteParams>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let result = match refuse_on_edge(&state).and_then(|()| query(params)) {
        Err(refused) => Err(refused),
        Ok(Query(params)) => match state.store().delete(&name, &actor, params.force).await {
            Ok(Deleted::Done) => Ok(StatusCode::NO_CONTENT),
            Ok(Deleted::NoScript) => Err(ApiError::ScriptNotFound {
                name: name.clone(),
                version: None,
            }),
            Ok(Deleted::InUse(dependents)) => Err(ApiError::LibraryInUse {
                name: name.clone(),
                dependents: dependents.into_iter().map(|d| d.name).collect(),
            }),
            Err(e) => Err(ApiError::from(e)),
        },
    };
    state.script_changed(&name);
    if let Err(e) = &result {
        let row = AuditRow {
            script: Some(name),
            ..AuditRow::new(&actor, "delete", e.kind())
        };
        audit::refused(&state, row).await;
    }
    result
}

/// `POST /api/v1/scripts/{name}/rollback` with `{"version": N}`: make N
/// current (audited whether or not it could).
#[utoipa::path(
    post,
    path = "/api/v1/scripts/{name}/rollback",
    tag = "registry",
    summary = "Make an earlier version current",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The script.")),
    request_body = RollbackRequest,
    responses(
        (status = 200, description = "Rolled back.", body = RolledBack),
        (status = 400, description = "An invalid request (`InvalidJson`, `InvalidRequest`).", body = ApiErrorBody),
        (status = 404, description = "No such script or version (`ScriptNotFound`).", body = ApiErrorBody),
        (status = 409, description = "An edge node's registry is read-only (`EdgeReadOnly`).", body = ApiErrorBody),
        (status = 413, description = "The body is over the server's limit (`BodyTooLarge`).", body = ApiErrorBody),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn rollback(
    State(state): State<AppState>,
    actor: Actor,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<RollbackRequest>,
) -> Result<Json<Value>, ApiError> {
    let result = roll_back(&state, &actor, &name, body.version).await;
    if let Err(e) = &result {
        let row = AuditRow {
            script: Some(name),
            version: Some(body.version),
            ..AuditRow::new(&actor, "rollback", e.kind())
        };
        audit::refused(&state, row).await;
    }
    result
}

async fn roll_back(state: &AppState, actor: &Actor, name: &str, version: i64) -> Result<Json<Value>, ApiError> {
    refuse_on_edge(state)?;
    if version < 1 {
        return Err(ApiError::invalid("`version` counts from 1"));
    }
    let rolled_back = state.store().rollback(name, version, actor).await?;
    state.script_changed(name);
    let name = name.to_owned();
    match rolled_back {
        Rollback::Done => Ok(Json(json!({"name": name, "version": version}))),
        Rollback::NoScript => Err(ApiError::ScriptNotFound { name, version: None }),
        Rollback::NoVersion => Err(ApiError::ScriptNotFound {
            name,
            version: Some(version),
        }),
    }
}

/// `POST /api/v1/scripts/{name}/rebuild`: compile the current source
/// against the libraries' current versions, with its own policy; a new
/// version (201) if the artifact differs, else 200 `unchanged` (audited as
/// `rebuild` either way).
#[utoipa::path(
    post,
    path = "/api/v1/scripts/{name}/rebuild",
    tag = "registry",
    summary = "Rebuild a stored script against the current versions of its libraries",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The script.")),
    responses(
        (status = 201, description = "Rebuilt as a new version.", body = StoredVersion),
        (status = 200, description = "Built the same as the current version (`unchanged`): nothing stored.", body = StoredVersion),
        (status = 400, description = "The current source no longer compiles against the current libraries (envelope `CompileError`; nothing stored).", body = EnvelopeOrError),
        (status = 403, description = "The script uses a capability this server denies (`CapabilityDenied`), or the key lacks the `admin` scope (`Forbidden`).", body = ApiErrorBody),
        (status = 404, description = "No such script (`ScriptNotFound`).", body = ApiErrorBody),
        (status = 409, description = "An edge node's registry is read-only (`EdgeReadOnly`), or the script was stored or rolled back while it was rebuilt (`RebuildSuperseded`: nothing stored; rebuild again if needed).", body = ApiErrorBody),
        (status = 503, description = "No compile slot became free in time (`Overloaded`), or the database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn rebuild(
    State(state): State<AppState>,
    actor: Actor,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let refused = |outcome: &str, version: Option<i64>| AuditRow {
        script: Some(name.clone()),
        version,
        ..AuditRow::new(&actor, "rebuild", outcome)
    };
    let rebuilt = rebuild_script(&state, &actor, &name).await;
    answer_audited(&state, rebuilt, refused).await
}

async fn rebuild_script(state: &AppState, actor: &Actor, name: &str) -> Result<Stored, ApiError> {
    refuse_on_edge(state)?;
    let not_found = || ApiError::ScriptNotFound {
        name: name.to_owned(),
        version: None,
    };
    let current = state.store().current(name).await?.ok_or_else(not_found)?;
    let (_, artifact) = state
        .store()
        .artifact(name, Some(current.meta.version))
        .await?
        .ok_or_else(not_found)?;
    let built = match state.build(name, current.source.clone(), policy_of(&artifact)).await? {
        Ok(built) => built,
        Err(report) => {
            return Ok(Stored::NotStored {
                response: envelope_response(report),
                outcome: "CompileError",
                version: Some(current.meta.version),
            });
        }
    };
    Ok(
        match put_built(state, actor, name, &current.source, &built, Some(current.meta.version)).await? {
            Put::Superseded => {
                return Err(ApiError::RebuildSuperseded {
                    name: name.to_owned(),
                    version: current.meta.version,
                });
            }
            Put::Unchanged(meta) => Stored::NotStored {
                response: Json(stored(name, &meta, true)).into_response(),
                outcome: "unchanged",
                version: Some(meta.version),
            },
            Put::Created(meta) => {
                Stored::Created((StatusCode::CREATED, Json(stored(name, &meta, false))).into_response())
            }
        },
    )
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
