//! The registry read API that edge nodes follow (`registry` scope):
//!
//! * `GET /api/v1/registry/scripts`: the current version of every stored
//!   script as [`ScriptList`] (`{"generation", "scripts": [{name, version,
//!   artifact_sha256, updated_at}]}`), with `ETag: "<generation>"`; a
//!   request whose `If-None-Match` names the current generation gets an
//!   empty 304, so a follower polling an unchanged registry costs one small
//!   query and no body.
//! * `GET /api/v1/registry/artifacts/{sha256}`: the signed artifact bytes
//!   (`application/wasm`) of any stored version with that SHA-256; 404 when
//!   none has it, 400 for a malformed hash. Content-addressed, so the reply
//!   may be cached forever.
//!
//! The generation is a hash of the list itself, not a counter: every node
//! reading the same database gives the same answer, across restarts, with
//! nothing to store. Edge nodes do not serve this API (they answer
//! `EdgeReadOnly`): follow the registry node itself.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::openapi::ApiErrorBody;

/// One script of the list: what a follower needs to mirror its current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegistryEntry {
    pub name: String,
    pub version: i64,
    /// Lowercase hex SHA-256 of the signed artifact.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub artifact_sha256: String,
    /// RFC 3339 UTC: when the script last changed on the registry.
    pub updated_at: String,
}

/// The body of `GET /api/v1/registry/scripts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = RegistryList)]
pub struct ScriptList {
    /// Changes whenever the list does; also the `ETag` (quoted).
    pub generation: String,
    /// By name.
    pub scripts: Vec<RegistryEntry>,
}

/// Whether `text` is a SHA-256 as the registry writes it: 64 lowercase hex digits.
pub fn valid_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The generation of a list: the first 32 hex digits of a SHA-256 over
/// every entry (fields separated by bytes no field contains).
pub fn generation_of(scripts: &[RegistryEntry]) -> String {
    let mut hash = Sha256::new();
    for s in scripts {
        hash.update(s.name.as_bytes());
        hash.update([0]);
        hash.update(s.version.to_string().as_bytes());
        hash.update([0]);
        hash.update(s.artifact_sha256.as_bytes());
        hash.update([0]);
        hash.update(s.updated_at.as_bytes());
        hash.update([b'\n']);
    }
    hex::encode(&hash.finalize()[..16])
}

/// Whether an `If-None-Match` header matches `etag` (`*`, a list, weak tags).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// `GET /api/v1/registry/scripts`.
#[utoipa::path(
    get,
    path = "/api/v1/registry/scripts",
    tag = "edge",
    summary = "The current version of every stored script, for edge nodes",
    params(("If-None-Match" = Option<String>, Header, description = "A previous answer's `ETag`: 304 while the list is unchanged.")),
    responses(
        (status = 200, description = "The list; `ETag` is the quoted generation.", body = ScriptList,
         headers(("ETag" = String, description = "The quoted generation."))),
        (status = 304, description = "Unchanged since the `If-None-Match` generation.",
         headers(("ETag" = String, description = "The quoted generation."))),
        (status = 409, description = "This is an edge node (`EdgeReadOnly`): follow the registry node.", body = ApiErrorBody),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn scripts(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(edge) = state.edge() {
        return Err(edge.read_only());
    }
    let mut scripts: Vec<RegistryEntry> = state
        .store()
        .current_artifacts()
        .await?
        .into_iter()
        .map(|(name, version, artifact_sha256, updated_at)| RegistryEntry {
            name,
            version,
            artifact_sha256,
            updated_at,
        })
        .collect();
    // Byte order, whatever the database's collation: the generation must not depend on it.
    scripts.sort_by(|a, b| a.name.cmp(&b.name));
    let generation = generation_of(&scripts);
    let etag = format!("\"{generation}\"");
    let etag_header = HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal(e.into()))?;
    // Followers must ask every time; the 304 keeps that cheap.
    let no_cache = HeaderValue::from_static("no-cache");
    if not_modified(&headers, &etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag_header), (header::CACHE_CONTROL, no_cache)],
        )
            .into_response());
    }
    let body = ScriptList { generation, scripts };
    Ok((
        [(header::ETAG, etag_header), (header::CACHE_CONTROL, no_cache)],
        Json(body),
    )
        .into_response())
}

/// `GET /api/v1/registry/artifacts/{sha256}`.
#[utoipa::path(
    get,
    path = "/api/v1/registry/artifacts/{sha256}",
    tag = "edge",
    summary = "A signed artifact by its SHA-256, for edge nodes",
    params(("sha256" = String, Path, pattern = "^[0-9a-f]{64}$", description = "`artifact_sha256` of a stored version.")),
    responses(
        (status = 200, description = "The signed artifact (content-addressed: cacheable forever).", body = Vec<u8>, content_type = "application/wasm"),
        (status = 400, description = "Not 64 lowercase hex digits (`InvalidRequest`).", body = ApiErrorBody),
        (status = 404, description = "No stored version has this artifact (`ArtifactNotFound`).", body = ApiErrorBody),
        (status = 409, description = "This is an edge node (`EdgeReadOnly`): follow the registry node.", body = ApiErrorBody),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn artifact(State(state): State<AppState>, Path(sha256): Path<String>) -> Result<Response, ApiError> {
    if let Some(edge) = state.edge() {
        return Err(edge.read_only());
    }
    if !valid_sha256(&sha256) {
        return Err(ApiError::invalid(format!(
            "{sha256:?} is not an artifact SHA-256: write 64 lowercase hex digits, as `artifact_sha256` \
             in GET /api/v1/registry/scripts"
        )));
    }
    let Some(bytes) = state.store().artifact_by_sha256(&sha256).await? else {
        return Err(ApiError::ArtifactNotFound { sha256 });
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/wasm")),
            // The same hash is always the same bytes.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, version: i64) -> RegistryEntry {
        RegistryEntry {
            name: name.to_owned(),
            version,
            artifact_sha256: "a".repeat(64),
            updated_at: "2026-01-01T00:00:00.000Z".to_owned(),
        }
    }

    #[test]
    fn generations_follow_every_field() {
        let one = [entry("a", 1), entry("b", 1)];
        let g = generation_of(&one);
        assert_eq!(g.len(), 32);
        assert_eq!(g, generation_of(&[entry("a", 1), entry("b", 1)]));
        assert_ne!(g, generation_of(&[entry("a", 1), entry("b", 2)]));
        assert_ne!(g, generation_of(&[entry("a", 1)]));
        // Field boundaries count: "ab"+"1" is not "a"+"b1".
        assert_ne!(generation_of(&[entry("a1", 1)]), generation_of(&[entry("a", 11)]));
        assert_ne!(generation_of(&[]), g);
    }

    #[test]
    fn if_none_match_forms() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
            not_modified(&h, "\"abc\"")
        };
        assert!(with("\"abc\""));
        assert!(with("W/\"abc\""));
        assert!(with("\"x\", \"abc\""));
        assert!(with("*"));
        assert!(!with("\"abd\""));
        assert!(!with("abc"));
        assert!(!not_modified(&HeaderMap::new(), "\"abc\""));
    }

    #[test]
    fn hashes() {
        assert!(valid_sha256(&"0f".repeat(32)));
        assert!(!valid_sha256(&"0F".repeat(32)));
        assert!(!valid_sha256(&"0f".repeat(31)));
        assert!(!valid_sha256("../../etc/passwd"));
    }
}
