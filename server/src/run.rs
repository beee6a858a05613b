//! `ANY /api/v1/run/{name}[/{*rest}]`: a stored script as a real endpoint.
//!
//! The script sees the HTTP request itself: its method, the path after the
//! script name (`/` when there is none), the query, a JSON body (when the
//! content type says JSON) or a form body, and the headers. Scripts that
//! call `registerEndpoint` are routed by the runtime from method and path
//! (404 for an unknown path, 405 for a wrong method).

use avap_hostfns::Request as ScriptRequest;
use axum::extract::{Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use serde_json::Value;

use super::audit::{self, RunRecord, RunTarget};
use super::error::ApiError;
use super::execute::{admit_stored, envelope_response};
use super::extract::{parse, read_body};
use super::openapi::{ApiErrorBody, Envelope, EnvelopeOrError};
use super::{AppState, Program};
use crate::exec::RunSettings;

/// Run a stored script as an endpoint (the HTTP request is its input).
///
/// The script sees the method, the path `/`, the query, a JSON or form body
/// and the headers.
#[utoipa::path(
    method(get, put, post, delete, options, head, patch, trace),
    path = "/api/v1/run/{name}",
    tag = "runs",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The stored script.")),
    responses(RunResponses),
)]
pub async fn run_stored(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    run(state, name, None, req).await
}

/// Run a stored script routed by `registerEndpoint` (method and path).
///
/// The script sees `/{rest}` as its path; otherwise as `/api/v1/run/{name}`.
#[utoipa::path(
    method(get, put, post, delete, options, head, patch, trace),
    path = "/api/v1/run/{name}/{rest}",
    tag = "runs",
    params(
        ("name" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The stored script."),
        ("rest" = String, Path, description = "The path the script sees (for `registerEndpoint`); may hold `/`."),
    ),
    responses(RunResponses),
)]
pub async fn run_stored_at(
    State(state): State<AppState>,
    Path((name, rest)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    run(state, name, Some(rest), req).await
}

/// Run the stored script `name` with the request; `rest` is the path after
/// its name.
pub(crate) async fn run(
    state: AppState,
    name: String,
    rest: Option<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let actor = audit::actor_of(req.extensions());
    let mut target = RunTarget::stored(&name, None);
    let method = req.method().as_str().to_owned();
    let query = req.uri().query().map(decode_pairs).unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let Some(stored) = state.stored(&name, None).await? else {
        audit::record_outcome(&state, &actor, target, "ScriptNotFound".to_owned());
        return Err(ApiError::ScriptNotFound { name, version: None });
    };
    target.resolved(stored.version, stored.module.sha256());
    let limits = match admit_stored(&state, &name, &stored.module, state.live().limits).await {
        Ok(limits) => limits,
        Err(refused) => {
            audit::record_outcome(&state, &actor, target, refused.kind().to_owned());
            return Err(refused);
        }
    };
    let body = read_body(req, &state).await?;
    let BodyParams { json, form } = body_params(&content_type, &body)?;
    let request = ScriptRequest {
        method,
        path: script_path(rest.as_deref()),
        query,
        json,
        form,
        headers,
    };
    let settings = RunSettings {
        limits,
        time_zone: None,
        now: None,
    };
    let record = RunRecord::new(&state, &actor, target);
    let run = state.execute_script(&name, Program::Loaded(stored.module), request, settings);
    let result = state.metrics().run(Some(&name), run).await;
    record.finish(&result);
    Ok(envelope_response(result?))
}

/// What the two run routes answer (one list for both).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Described, never built.
enum RunResponses {
    #[response(
        status = 200,
        description = "The run's envelope; the status is the script's `_status` when it sets one."
    )]
    Ok(Envelope),
    #[response(
        status = 400,
        description = "A runtime error (envelope), or a body that is not what its content type says (`InvalidJson`, `InvalidRequest`)."
    )]
    BadRequest(EnvelopeOrError),
    #[response(
        status = 403,
        description = "The script uses a capability this server denies (`CapabilityDenied`)."
    )]
    Denied(ApiErrorBody),
    #[response(
        status = 404,
        description = "No such stored script (`ScriptNotFound`), or a `registerEndpoint` script has no endpoint on the path (envelope)."
    )]
    NotFound(EnvelopeOrError),
    #[response(
        status = 405,
        description = "A `registerEndpoint` script has no endpoint for the method (envelope)."
    )]
    MethodNotAllowed(Envelope),
    #[response(status = 413, description = "The body is over the server's limit (`BodyTooLarge`).")]
    TooLarge(ApiErrorBody),
    #[response(
        status = 422,
        description = "A run limit was hit: fuel, memory, stack or output (envelope)."
    )]
    Limit(Envelope),
    #[response(
        status = 500,
        description = "A fault inside the runtime (envelope) or the server (`InternalError`); the detail is logged, not sent."
    )]
    Fault(EnvelopeOrError),
    #[response(
        status = 502,
        description = "Edge nodes: the mirrored artifact failed verification (`ArtifactRejected`)."
    )]
    Rejected(ApiErrorBody),
    #[response(
        status = 503,
        description = "No run slot became free in time (`Overloaded`), or the database is unavailable (`DatabaseUnavailable`).",
        headers(("Retry-After" = u64, description = "Seconds to wait."))
    )]
    Unavailable(ApiErrorBody),
    #[response(
        status = 504,
        description = "The run's time limit was hit (envelope `TimeLimit`), or the request timeout (`RequestTimeout`)."
    )]
    TimedOut(EnvelopeOrError),
}

/// The path the script sees: what follows the script name, from `/`.
fn script_path(rest: Option<&str>) -> String {
    match rest {
        None | Some("") => "/".to_owned(),
        Some(r) if r.starts_with('/') => r.to_owned(),
        Some(r) => format!("/{r}"),
    }
}

/// What `addParam` may read from a body.
#[derive(Debug, Default, PartialEq)]
struct BodyParams {
    json: Option<Value>,
    form: Vec<(String, String)>,
}

/// The JSON or form body by content type; other bodies are not parameters.
fn body_params(content_type: &str, body: &[u8]) -> Result<BodyParams, ApiError> {
    let is_json = content_type == "application/json" || content_type.ends_with("+json");
    if is_json && !body.iter().all(u8::is_ascii_whitespace) {
        let json = Some(parse::<Value>(body)?);
        return Ok(BodyParams { json, form: Vec::new() });
    }
    if content_type == "application/x-www-form-urlencoded" {
        let text = std::str::from_utf8(body).map_err(|_| ApiError::invalid("the form body is not UTF-8"))?;
        return Ok(BodyParams {
            json: None,
            form: decode_pairs(text),
        });
    }
    Ok(BodyParams::default())
}

/// `a=1&b=x+y&c=%C3%A9` as pairs in order (`application/x-www-form-urlencoded`
/// rules: `+` is a space, bad escapes are kept as they are).
fn decode_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        decode_pairs(text)
    }

    #[test]
    fn query_and_form_decoding() {
        let want = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        assert_eq!(
            pairs("name=Lin&x=a+b&e=%C3%A9&flag&&t=1&t=2"),
            want(&[
                ("name", "Lin"),
                ("x", "a b"),
                ("e", "é"),
                ("flag", ""),
                ("t", "1"),
                ("t", "2")
            ])
        );
        assert_eq!(pairs("bad=%zz&end=%4"), want(&[("bad", "%zz"), ("end", "%4")]));
        assert_eq!(pairs("k%3Dv=1%262"), want(&[("k=v", "1&2")]));
    }

    #[test]
    fn paths_and_bodies() {
        assert_eq!(script_path(None), "/");
        assert_eq!(script_path(Some("users/7")), "/users/7");
        let params = body_params("application/json", br#"{"a": 1}"#).unwrap();
        assert_eq!(params.json, Some(serde_json::json!({"a": 1})));
        assert!(params.form.is_empty());
        assert_eq!(body_params("application/json", b"").unwrap(), BodyParams::default());
        assert_eq!(body_params("application/json", b"{").unwrap_err().kind(), "InvalidJson");
        let params = body_params("application/x-www-form-urlencoded", b"a=1").unwrap();
        assert_eq!(params.form, [("a".to_owned(), "1".to_owned())]);
        assert_eq!(body_params("text/plain", b"{").unwrap(), BodyParams::default());
    }
}
