//! [`ApiError`]: every error a client of the server can see, as
//! `{"error": {"kind", "message"}}` JSON with the matching status.
//!
//! Script outcomes (compile errors, runtime errors, limits) are not
//! `ApiError`s: they are run envelopes. An `ApiError` means the request was
//! not run at all. Internal details never reach the client: they go to
//! stderr, and the client gets a generic message.

use std::fmt;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub enum ApiError {
    /// The body is not JSON (syntax error or early end).
    InvalidJson {
        message: String,
        line: usize,
        column: usize,
    },
    /// The body is JSON of the wrong shape: unknown field, wrong type, missing `script`.
    InvalidRequest {
        message: String,
        /// Where in the body, when the JSON parser knows.
        position: Option<(usize, usize)>,
    },
    /// The request body is over the server's limit.
    BodyTooLarge {
        limit: usize,
    },
    /// The script source is over the server's limit.
    ScriptTooLarge {
        size: usize,
        limit: usize,
    },
    /// The script uses a command class this deployment's policy denies.
    CapabilityDenied(String),
    NotFound {
        path: String,
    },
    /// No stored script of that name (or no such version of it).
    ScriptNotFound {
        name: String,
        version: Option<i64>,
    },
    MethodNotAllowed,
    /// No API key where one is required, or a wrong or revoked one (401).
    Unauthorized(String),
    /// A request made with a signing API key whose signature does not hold
    /// (401, kind `Unauthorized`, with the `reason`; see `request_signing`).
    BadSignature(super::request_signing::Rejection),
    /// This node's replay check is full of signatures still inside the
    /// window (503): refused rather than forgetting one early.
    ReplayCacheFull {
        capacity: usize,
    },
    /// A valid API key without the scope this route needs (403).
    Forbidden {
        needed: &'static str,
    },
    /// No run slot became free within the queue wait.
    Overloaded {
        waited: Duration,
    },
    /// The job queue holds its most unfinished jobs (503).
    JobQueueFull {
        limit: u64,
    },
    /// The client sent more requests than its rate allows (429).
    RateLimited {
        retry_after_secs: u64,
    },
    /// The request took longer than the server's request timeout (504).
    RequestTimeout {
        limit: Duration,
    },
    /// Deleting a library that current versions of other stored scripts
    /// include, without `?force=true` (409, with `dependents`).
    LibraryInUse {
        name: String,
        dependents: Vec<String>,
    },
    /// A rebuild of `version`, which a store or rollback replaced while it
    /// compiled (409): nothing stored.
    RebuildSuperseded {
        name: String,
        version: i64,
    },
    /// A registry write (or the registry API) on an edge node, whose
    /// scripts are a read-only mirror of `registry` (409).
    EdgeReadOnly {
        registry: String,
    },
    /// An edge node's mirrored artifact failed its hash or signature check
    /// at load (502): not run; fetched again at the next sync.
    ArtifactRejected {
        name: String,
        sha256: String,
        reason: String,
    },
    /// A version other than the current one asked of an edge node (404,
    /// kind `ScriptNotFound`).
    NotMirrored {
        name: String,
        version: i64,
        current: i64,
    },
    /// No stored version has this artifact SHA-256 (registry API, 404).
    ArtifactNotFound {
        sha256: String,
    },
    /// The server's database does not answer (503): nothing was changed.
    /// The detail is logged, never sent.
    DatabaseUnavailable(anyhow::Error),
    /// A stored script is signed by a key this node does not trust: the
    /// nodes sharing the registry have different server keys (500; logged
    /// with what to do).
    ClusterKeyMismatch {
        key_id: String,
    },
    /// No job with this id (or it was pruned after `jobs_retention_s`) (404).
    JobNotFound {
        id: String,
    },
    /// A job is not in a state the change applies to (409): cancelling a
    /// finished job, retrying one that is not dead.
    JobStateConflict(String),
    /// An idempotency key reused for a different job body (409).
    IdempotencyConflict(String),
    /// A reload found the configuration invalid; nothing changed (422).
    /// Only admins reach the reload, so the message names the file and key.
    ConfigInvalid(String),
    /// A reload asked of a server not started from a configuration (409).
    ReloadUnavailable(String),
    /// Something failed on our side; the detail is logged, never sent.
    Internal(anyhow::Error),
}

impl ApiError {
    /// From a `serde_json` error on a request body: syntax errors are
    /// `InvalidJson`, shape errors (unknown field, wrong type) `InvalidRequest`.
    pub fn from_json(e: &serde_json::Error) -> ApiError {
        // serde_json's Display ends with " at line L column C"; keep the message without it.
        let full = e.to_string();
        let message = full
            .rfind(" at line ")
            .map_or(full.as_str(), |at| &full[..at])
            .to_owned();
        let position = (e.line() > 0).then(|| (e.line(), e.column()));
        match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                let (line, column) = position.unwrap_or((1, 0));
                ApiError::InvalidJson { message, line, column }
            }
            serde_json::error::Category::Data | serde_json::error::Category::Io => {
                ApiError::InvalidRequest { message, position }
            }
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest {
            message: message.into(),
            position: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::Unauthorized(message.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson { .. } | ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } | ApiError::ScriptTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::CapabilityDenied(_) | ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) | ApiError::BadSignature(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. }
            | ApiError::ScriptNotFound { .. }
            | ApiError::NotMirrored { .. }
            | ApiError::ArtifactNotFound { .. }
            | ApiError::JobNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::EdgeReadOnly { .. }
            | ApiError::LibraryInUse { .. }
            | ApiError::RebuildSuperseded { .. }
            | ApiError::JobStateConflict(_)
            | ApiError::IdempotencyConflict(_)
            | ApiError::ReloadUnavailable(_) => StatusCode::CONFLICT,
            ApiError::ConfigInvalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::ArtifactRejected { .. } => StatusCode::BAD_GATEWAY,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Overloaded { .. }
            | ApiError::JobQueueFull { .. }
            | ApiError::ReplayCacheFull { .. }
            | ApiError::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::ClusterKeyMismatch { .. } | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable `kind` clients match on.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidJson { .. } => "InvalidJson",
            ApiError::InvalidRequest { .. } => "InvalidRequest",
            ApiError::BodyTooLarge { .. } => "BodyTooLarge",
            ApiError::ScriptTooLarge { .. } => "ScriptTooLarge",
            ApiError::CapabilityDenied(_) => "CapabilityDenied",
            ApiError::NotFound { .. } => "NotFound",
            ApiError::ScriptNotFound { .. } | ApiError::NotMirrored { .. } => "ScriptNotFound",
            ApiError::EdgeReadOnly { .. } => "EdgeReadOnly",
            ApiError::LibraryInUse { .. } => "LibraryInUse",
            ApiError::RebuildSuperseded { .. } => "RebuildSuperseded",
            ApiError::ArtifactRejected { .. } => "ArtifactRejected",
            ApiError::ArtifactNotFound { .. } => "ArtifactNotFound",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::Unauthorized(_) | ApiError::BadSignature(_) => "Unauthorized",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::Overloaded { .. } | ApiError::ReplayCacheFull { .. } => "Overloaded",
            ApiError::JobQueueFull { .. } => "JobQueueFull",
            ApiError::RateLimited { .. } => "RateLimited",
            ApiError::RequestTimeout { .. } => "RequestTimeout",
            ApiError::DatabaseUnavailable(_) => "DatabaseUnavailable",
            ApiError::ClusterKeyMismatch { .. } => "ClusterKeyMismatch",
            ApiError::JobNotFound { .. } => "JobNotFound",
            ApiError::JobStateConflict(_) => "JobStateConflict",
            ApiError::IdempotencyConflict(_) => "IdempotencyConflict",
            ApiError::ConfigInvalid(_) => "ConfigInvalid",
            ApiError::ReloadUnavailable(_) => "ReloadUnavailable",
            ApiError::Internal(_) => "InternalError",
        }
    }

    fn body(&self) -> serde_json::Value {
        let mut error = json!({"kind": self.kind(), "message": self.to_string()});
        let position = match self {
            ApiError::InvalidJson { line, column, .. } => Some((*line, *column)),
            ApiError::InvalidRequest { position, .. } => *position,
            _ => None,
        };
        if let Some((line, column)) = position {
            error["line"] = json!(line);
            error["column"] = json!(column);
        }
        if let ApiError::LibraryInUse { dependents, .. } = self {
            error["dependents"] = json!(dependents);
        }
        if let ApiError::BadSignature(rejection) = self {
            error["reason"] = json!(rejection.reason.code());
        }
        json!({ "error": error })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::InvalidJson { message, line, column } => {
                write!(
                    f,
                    "the request body is not valid JSON: {message} at line {line} column {column}"
                )
            }
            ApiError::InvalidRequest {
                message,
                position: Some((line, column)),
            } => write!(f, "invalid request: {message} at line {line} column {column}"),
            ApiError::InvalidRequest {
                message,
                position: None,
            } => write!(f, "invalid request: {message}"),
            ApiError::BodyTooLarge { limit } => {
                write!(
                    f,
                    "the request body is larger than this server's limit of {limit} bytes"
                )
            }
            ApiError::ScriptTooLarge { size, limit } => write!(
                f,
                "the script is {size} bytes, larger than this server's limit of {limit} bytes; split it or store it"
            ),
            ApiError::CapabilityDenied(message)
            | ApiError::Unauthorized(message)
            | ApiError::JobStateConflict(message)
            | ApiError::IdempotencyConflict(message)
            | ApiError::ConfigInvalid(message)
            | ApiError::ReloadUnavailable(message) => f.write_str(message),
            ApiError::NotFound { path } => write!(f, "no such endpoint: {path} (the API is under /api/v1/)"),
            ApiError::ScriptNotFound { name, version: None } => write!(f, "no stored script named `{name}`"),
            ApiError::ScriptNotFound { name, version: Some(v) } => {
                write!(f, "stored script `{name}` has no version {v}")
            }
            ApiError::MethodNotAllowed => f.write_str("this endpoint does not accept that HTTP method"),
            ApiError::BadSignature(rejection) => f.write_str(&rejection.message),
            ApiError::ReplayCacheFull { capacity } => write!(
                f,
                "this server remembers {capacity} signed requests within the replay window, its most; retry shortly"
            ),
            ApiError::Forbidden { needed } => write!(f, "this API key does not have the `{needed}` scope"),
            ApiError::Overloaded { waited } => write!(
                f,
                "the server is at its limit of concurrent runs and none finished within {} ms; retry later",
                waited.as_millis()
            ),
            ApiError::JobQueueFull { limit } => write!(
                f,
                "the job queue holds {limit} unfinished jobs, its most (jobs_max_queued); retry once some have run"
            ),
            ApiError::RateLimited { retry_after_secs } => {
                write!(f, "too many requests from this client; retry in {retry_after_secs} s")
            }
            ApiError::RequestTimeout { limit } => write!(
                f,
                "the request took longer than this server's limit of {} ms",
                limit.as_millis()
            ),
            ApiError::LibraryInUse { name, dependents } => write!(
                f,
                "script `{name}` is a library that the current versions of {} include ({}); \
                 store them without the include and rebuild, or delete with ?force=true (their stored \
                 versions keep working: they contain the library's code)",
                dependents.len(),
                dependents.join(", ")
            ),
            ApiError::RebuildSuperseded { name, version } => write!(
                f,
                "script `{name}` was stored or rolled back while version {version} was being rebuilt: \
                 nothing stored (rebuild again to rebuild the new current version)"
            ),
            ApiError::EdgeReadOnly { registry } => write!(
                f,
                "this is an edge node: its scripts are a read-only mirror of the registry at {registry}; \
                 store, delete and roll back scripts there (and point other edge nodes at it)"
            ),
            ApiError::ArtifactRejected { name, sha256, reason } => write!(
                f,
                "script `{name}` is not run: its mirrored artifact (sha256 {sha256}) on this edge node failed \
                 verification ({reason}); it will be fetched again from the registry at the next sync"
            ),
            ApiError::NotMirrored { name, version, current } => write!(
                f,
                "edge nodes mirror current versions only: script `{name}` is at version {current} here, \
                 not {version}; run older versions on the registry node"
            ),
            ApiError::ArtifactNotFound { sha256 } => write!(
                f,
                "no stored version has artifact sha256 {sha256} (see GET /api/v1/registry/scripts)"
            ),
            ApiError::DatabaseUnavailable(_) => f.write_str(
                "the server's database is unavailable, so the registry cannot be read or changed now \
                 (nothing was changed; stored scripts already loaded keep running); retry later",
            ),
            ApiError::ClusterKeyMismatch { key_id } => write!(
                f,
                "the stored script is signed by key {key_id}, which this server does not trust: \
                 the servers sharing this registry have different keys. An operator fixes it by \
                 giving every node the same keys/server.key, or by copying the other node's \
                 keys/server.pub into this node's trusted_keys/ and restarting it"
            ),
            ApiError::JobNotFound { id } => write!(
                f,
                "no job {id:?} (finished jobs are kept for jobs_retention_s, then deleted; GET /api/v1/jobs lists them)"
            ),
            ApiError::Internal(_) => f.write_str("internal server error"),
        }
    }
}

/// Database and other internal failures.
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        if super::store::is_unavailable(&e) {
            ApiError::DatabaseUnavailable(e)
        } else {
            ApiError::Internal(e)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(e) => tracing::error!("internal error: {e:#}"),
            ApiError::ClusterKeyMismatch { key_id } => tracing::error!(
                key_id,
                "a stored script is signed by key {key_id}, which this node does not trust; \
                 copy that node's keys/server.pub into trusted_keys/ (or share one server.key) and restart"
            ),
            ApiError::DatabaseUnavailable(e) => tracing::warn!("database unavailable: {e:#}"),
            _ => {}
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if matches!(
            self,
            ApiError::Overloaded { .. }
                | ApiError::JobQueueFull { .. }
                | ApiError::ReplayCacheFull { .. }
                | ApiError::DatabaseUnavailable(_)
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ApiError::RateLimited { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
        }
        if matches!(self, ApiError::Unauthorized(_) | ApiError::BadSignature(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> ApiError {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            script: String,
        }
        ApiError::from_json(&serde_json::from_str::<Body>(text).expect_err("must fail"))
    }

    #[test]
    fn syntax_errors_are_invalid_json_with_position() {
        let e = parse_err("{\"script\": \n  oops}");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body(),
            json!({"error": {
                "kind": "InvalidJson",
                "message": "the request body is not valid JSON: expected value at line 2 column 3",
                "line": 2, "column": 3,
            }})
        );
    }

    #[test]
    fn unknown_fields_are_invalid_requests() {
        let e = parse_err(r#"{"script": "", "scirpt": 1}"#);
        assert_eq!(e.kind(), "InvalidRequest");
        assert!(e.to_string().contains("unknown field `scirpt`"), "{e}");
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let e = ApiError::Internal(anyhow::anyhow!("secret path /etc/avap/key"));
        assert_eq!(
            e.body(),
            json!({"error": {"kind": "InternalError", "message": "internal server error"}})
        );
    }
}
