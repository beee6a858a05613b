//! `POST /api/v1/execute/file`: run an uploaded file once (multipart/form-data).
//!
//! Parts: `file` (required) is AVAP source or a signed `.wasm` artifact,
//! told apart by the wasm magic bytes `\0asm` (never by the file name);
//! `params`, `limits` and `request` are JSON text with the meaning of the
//! same fields of `POST /api/v1/execute`. Any other part is a 400.
//!
//! * A source runs exactly like an inline script (size limit, compile cache).
//! * An artifact must verify against the runtime's trusted keys (the server
//!   key and `<data-dir>/trusted_keys/*.pub`) before it is loaded: unsigned
//!   or signed by another key is 403 `UntrustedArtifact`, anything else
//!   wrong with it (truncated, tampered, not ours) 400 `InvalidArtifact`.

use avap_hostfns::artifact::{self, ArtifactError};
use axum::Json;
use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::audit::{self, RunRecord, RunTarget};
use super::error::ApiError;
use super::execute::{ExecuteRequest, LimitsSpec, RequestSpec, envelope_response, execute_one};
use super::extract::object;
use super::openapi::{ApiErrorBody, Envelope, EnvelopeOrError};
use super::store::Actor;
use super::{AppState, Program};
use crate::exec::RunSettings;

/// The first bytes of every wasm module.
const WASM_MAGIC: &[u8] = b"\0asm";

/// An uploaded request, parts parsed.
#[derive(Debug, Default)]
struct Upload {
    file: Option<Vec<u8>>,
    params: Option<Value>,
    limits: Option<LimitsSpec>,
    request: Option<RequestSpec>,
}

/// The parts of `POST /api/v1/execute/file` (described only: read part by
/// part). `params`, `limits` and `request` are JSON text.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct FileUpload {
    /// AVAP source (UTF-8 text), or a signed `.wasm` artifact (told apart by
    /// the `\0asm` magic); anything else is a 400.
    file: String,
    /// The body the script sees (`addParam`); `null` is as good as no part.
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    /// Per-run limits as in `ExecuteRequest`.
    limits: Option<LimitsSpec>,
    /// Method, path, query, headers as in `ExecuteRequest`.
    request: Option<RequestSpec>,
}

/// Upload a `.avap` source or a signed `.wasm` artifact and run it once.
#[utoipa::path(
    post,
    path = "/api/v1/execute/file",
    tag = "runs",
    request_body(content = inline(FileUpload), content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The run's envelope; the status is the script's `_status` when it sets one.", body = Envelope),
        (status = 400, description = "A compile or runtime error (envelope); a malformed upload, an unknown, repeated or malformed part or no `file` (`InvalidRequest`); or an artifact that is corrupt or tampered with (`InvalidArtifact`).", body = EnvelopeOrError),
        (status = 403, description = "The artifact is unsigned or signed by a key this server does not trust (`UntrustedArtifact`), or the script uses a denied capability (`CapabilityDenied`).", body = ApiErrorBody),
        (status = 404, description = "A `registerEndpoint` script has no endpoint on the path (envelope).", body = Envelope),
        (status = 405, description = "A `registerEndpoint` script has no endpoint for the method (envelope).", body = Envelope),
        (status = 413, description = "The body (`BodyTooLarge`) or the source (`ScriptTooLarge`) is over the server's limit.", body = ApiErrorBody),
        (status = 422, description = "A run limit was hit: fuel, memory, stack or output (envelope).", body = Envelope),
        (status = 500, description = "A fault inside the runtime (envelope) or the server (`InternalError`); the detail is logged, not sent.", body = EnvelopeOrError),
        (status = 503, description = "No run or compile slot became free in time (`Overloaded`), or the database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 504, description = "The run's time limit was hit (envelope `TimeLimit`), or the request timeout (`RequestTimeout`).", body = EnvelopeOrError),
    ),
)]
pub async fn execute_file(
    State(state): State<AppState>,
    actor: Actor,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let multipart = multipart.map_err(|e| {
        ApiError::invalid(format!(
            "{}; send multipart/form-data with a `file` part",
            e.body_text()
        ))
    })?;
    let upload = read_parts(&state, multipart).await?;
    let Some(file) = upload.file else {
        return Err(ApiError::invalid(
            "no `file` part: send the .avap source or signed .wasm artifact as the `file` part",
        ));
    };
    let request = ExecuteRequest {
        script: None,
        name: None,
        version: None,
        params: upload.params,
        limits: upload.limits,
        request: upload.request,
    };
    if file.starts_with(WASM_MAGIC) {
        return run_artifact(&state, &actor, file, request).await;
    }
    let source = String::from_utf8(file).map_err(|e| {
        ApiError::invalid(format!(
            "the `file` part is neither a wasm artifact nor UTF-8 AVAP source: {e}"
        ))
    })?;
    let request = ExecuteRequest {
        script: Some(source),
        ..request
    };
    execute_one(&state, &actor, request).await.map(envelope_response)
}

async fn read_parts(state: &AppState, mut multipart: Multipart) -> Result<Upload, ApiError> {
    let mut upload = Upload::default();
    let mut seen: Vec<String> = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(|e| multipart_error(state, &e))? {
        let name = field.name().unwrap_or("").to_owned();
        let bytes = field.bytes().await.map_err(|e| multipart_error(state, &e))?;
        match name.as_str() {
            "file" => upload.file = Some(bytes.to_vec()),
            "params" => upload.params = json_part(&name, &bytes)?,
            "limits" => upload.limits = json_part(&name, &bytes)?,
            "request" => upload.request = json_part(&name, &bytes)?,
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown part `{other}`: the parts are `file`, `params`, `limits` and `request`"
                )));
            }
        }
        if seen.contains(&name) {
            return Err(ApiError::invalid(format!("the `{name}` part is sent twice")));
        }
        seen.push(name);
    }
    Ok(upload)
}

fn multipart_error(state: &AppState, e: &MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge {
            limit: state.config().max_body_bytes,
        }
    } else {
        ApiError::invalid(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// A part holding a JSON object of type `T`; `null` is as good as no part,
/// as in an execute request.
fn json_part<T: DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<Option<T>, ApiError> {
    let invalid = |e: serde_json::Error| ApiError::invalid(format!("the `{name}` part: {e}"));
    object::from_value(serde_json::from_slice(bytes).map_err(invalid)?).map_err(invalid)
}

/// Verify, load and run a signed artifact once.
async fn run_artifact(
    state: &AppState,
    actor: &Actor,
    artifact: Vec<u8>,
    request: ExecuteRequest,
) -> Result<Response, ApiError> {
    let sha256 = hex::encode(Sha256::digest(&artifact));
    if let Err(refusal) = artifact::verify(&artifact, state.trusted_keys(), false) {
        let (status, kind, message) = refused(&refusal);
        audit::record_outcome(state, actor, RunTarget::artifact(sha256), kind.to_owned());
        let body = json!({"error": {"kind": kind, "message": message}});
        return Ok((status, Json(body)).into_response());
    }
    let script_request = request.script_request()?;
    let settings = RunSettings {
        limits: request.limits.unwrap_or_default().clamp(state.live().limits),
        time_zone: None,
        now: None,
    };
    let record = RunRecord::new(state, actor, RunTarget::artifact(sha256));
    let run = state.execute(Program::Artifact(artifact), script_request, settings);
    let result = state.metrics().run(None, run).await;
    record.finish(&result);
    result.map(envelope_response)
}

/// Status, kind and message of an artifact that does not verify.
fn refused(e: &ArtifactError) -> (StatusCode, &'static str, String) {
    const HOW: &str = "sign it with this server's key, or put the signer's .pub file in \
                       <data-dir>/trusted_keys/ and restart the server";
    match e {
        ArtifactError::Unsigned => (
            StatusCode::FORBIDDEN,
            "UntrustedArtifact",
            format!("the uploaded artifact is not signed; {HOW}"),
        ),
        ArtifactError::UntrustedKey { key_id } => (
            StatusCode::FORBIDDEN,
            "UntrustedArtifact",
            format!("the uploaded artifact is signed by key {key_id}, which this server does not trust; {HOW}"),
        ),
        other => (
            StatusCode::BAD_REQUEST,
            "InvalidArtifact",
            format!("the uploaded artifact cannot be used: {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_key_and_pick_the_status() {
        let (status, kind, message) = refused(&ArtifactError::UntrustedKey {
            key_id: "0123456789abcdef".to_owned(),
        });
        assert_eq!((status, kind), (StatusCode::FORBIDDEN, "UntrustedArtifact"));
        assert!(message.contains("0123456789abcdef"), "{message}");
        assert_eq!(refused(&ArtifactError::Unsigned).0, StatusCode::FORBIDDEN);
        let (status, kind, _) = refused(&ArtifactError::BadSignature);
        assert_eq!((status, kind), (StatusCode::BAD_REQUEST, "InvalidArtifact"));
    }
}
