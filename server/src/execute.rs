//! `POST /api/v1/execute`: compile (or take from the cache) an inline
//! script, or load a stored one, and run it once; the response is the run's
//! envelope with its status (`_status`, or the error kind's status).

use avap_hostfns::Request;
use avap_runtime::{Limits, RunReport};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::audit::{RunRecord, RunTarget};
use super::error::ApiError;
use super::extract::{JsonBody, object, whole};
use super::openapi::{ApiErrorBody, Envelope, EnvelopeOrError};
use super::store::Actor;
use super::{AppState, Program};
use crate::exec::RunSettings;

/// The body of `POST /api/v1/execute`: exactly one of `script` and `name`.
// The `OpenAPI` document adds that rule to the derived schema (openapi.rs).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// AVAP source, run once (compiled or taken from the compile cache).
    #[serde(default)]
    pub script: Option<String>,
    /// A stored script, run at its current version or at `version`.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub name: Option<String>,
    /// A version of the stored script (default: its current one); only with `name`.
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(minimum = 1)]
    pub version: Option<i64>,
    /// The JSON body the script sees (`addParam`): an object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    /// Per-run limits; each is clamped to the server's maximum.
    #[serde(default, deserialize_with = "object::opt")]
    pub limits: Option<LimitsSpec>,
    /// The rest of the HTTP request the script sees.
    #[serde(default, deserialize_with = "object::opt")]
    pub request: Option<RequestSpec>,
}

/// Per-run limits in the units of `avap run --limits`, each clamped to the
/// server's maximum (`GET /api/v1/info`); unset ones are that maximum.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(maximum = 9_223_372_036_854_775_807_u64)]
    pub fuel: Option<u64>,
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(maximum = 9_223_372_036_854_775_807_u64)]
    pub time_ms: Option<u64>,
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(maximum = 9_223_372_036_854_775_807_u64)]
    pub memory_mb: Option<u64>,
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(maximum = 9_223_372_036_854_775_807_u64)]
    pub stack_kb: Option<u64>,
    #[serde(default, deserialize_with = "whole::opt")]
    #[schema(maximum = 9_223_372_036_854_775_807_u64)]
    pub output_kb: Option<u64>,
}

impl LimitsSpec {
    /// The asked limits, each at most `max`; unset ones are `max`.
    pub fn clamp(&self, max: Limits) -> Limits {
        let pick = |asked: Option<u64>, unit: u64, max: u64| asked.map_or(max, |n| n.saturating_mul(unit).min(max));
        Limits {
            fuel: pick(self.fuel, 1, max.fuel),
            time_ms: pick(self.time_ms, 1, max.time_ms),
            memory_bytes: pick(self.memory_mb, 1 << 20, max.memory_bytes),
            stack_bytes: pick(self.stack_kb, 1 << 10, max.stack_bytes),
            output_bytes: pick(self.output_kb, 1 << 10, max.output_bytes),
        }
    }
}

/// A stored script's own policy at the start of a run: its `rate_limit`
/// charged to the client being served (429 past it), and `max` tightened
/// by its `limits`. Precedence: the server's maximums, then the script's
/// limits, then what the request asks — the tightest wins.
pub(crate) async fn admit_stored(
    state: &AppState,
    name: &str,
    module: &avap_runtime::LoadedModule,
    max: Limits,
) -> Result<Limits, ApiError> {
    let policy = &module.meta().policy;
    if let Some(rate) = policy.rate_limit {
        state.protect().admit_script(name, rate.per_second, rate.burst).await?;
    }
    Ok(match &policy.limits {
        None => max,
        Some(limits) => LimitsSpec {
            fuel: limits.fuel,
            time_ms: limits.time_ms,
            memory_mb: limits.memory_mb,
            stack_kb: limits.stack_kb,
            output_kb: limits.output_kb,
        }
        .clamp(max),
    })
}

/// Method, path, query and headers of the request the script sees
/// (default `GET /`, nothing else).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    pub method: Option<String>,
    pub path: Option<String>,
    /// `{"name": "value"}`; an array value repeats the key.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub query: Map<String, Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub headers: Map<String, Value>,
}

impl ExecuteRequest {
    /// The request the script sees: `GET /` unless told otherwise, as with `avap run`.
    pub(super) fn script_request(&self) -> Result<Request, ApiError> {
        let json = match &self.params {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => {
                return Err(ApiError::invalid(
                    "`params` must be a JSON object (the body addParam reads)",
                ));
            }
        };
        let spec = self.request.as_ref();
        Ok(Request {
            method: spec
                .and_then(|r| r.method.as_deref())
                .unwrap_or("GET")
                .to_ascii_uppercase(),
            path: spec.and_then(|r| r.path.clone()).unwrap_or_else(|| "/".to_owned()),
            query: spec.map(|r| pairs(&r.query)).unwrap_or_default(),
            json,
            form: Vec::new(),
            headers: spec.map(|r| pairs(&r.headers)).unwrap_or_default(),
        })
    }
}

/// Name/value pairs from a JSON object: strings as they are, other scalars
/// as JSON text, arrays as one pair per element.
fn pairs(map: &Map<String, Value>) -> Vec<(String, String)> {
    fn text(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        match v {
            Value::Array(items) => out.extend(items.iter().map(|i| (k.clone(), text(i)))),
            other => out.push((k.clone(), text(other))),
        }
    }
    out
}

/// Run an inline or stored script once.
///
/// The reply is the run's envelope with the run's status: 200 (or the
/// script's `_status`), 400 for a compile or runtime error, 422 for a limit
/// hit, 504 for the time limit.
#[utoipa::path(
    post,
    path = "/api/v1/execute",
    tag = "runs",
    request_body = ExecuteRequest,
    responses(
        (status = 200, description = "The run's envelope; the status is the script's `_status` when it sets one. `Avap-Usage` says what the run used.", body = Envelope, headers(("Avap-Usage" = String, description = "What the run used: `fuel=N, wall_ms=F, peak_memory_bytes=N` (an RFC 8941 dictionary)."))),
        (status = 400, description = "A compile or runtime error (envelope), or an invalid request (`InvalidJson`, `InvalidRequest`).", body = EnvelopeOrError),
        (status = 403, description = "The script uses a capability this server denies (`CapabilityDenied`).", body = ApiErrorBody),
        (status = 404, description = "No such stored script or version (`ScriptNotFound`), or a `registerEndpoint` script has no endpoint on the path (envelope).", body = EnvelopeOrError),
        (status = 405, description = "A `registerEndpoint` script has no endpoint for the method (envelope).", body = Envelope),
        (status = 413, description = "The body (`BodyTooLarge`) or the script (`ScriptTooLarge`) is over the server's limit.", body = ApiErrorBody),
        (status = 422, description = "A run limit was hit: fuel, memory, stack or output (envelope).", body = Envelope),
        (status = 500, description = "A fault inside the runtime (envelope) or the server (`InternalError`); the detail is logged, not sent.", body = EnvelopeOrError),
        (status = 502, description = "Edge nodes: the mirrored artifact failed verification (`ArtifactRejected`).", body = ApiErrorBody),
        (status = 503, description = "No run or compile slot became free in time (`Overloaded`), or the database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 504, description = "The run's time limit was hit (envelope `TimeLimit`), or the request timeout (`RequestTimeout`).", body = EnvelopeOrError),
    ),
)]
pub async fn execute(
    State(state): State<AppState>,
    actor: Actor,
    JsonBody(body): JsonBody<ExecuteRequest>,
) -> Result<Response, ApiError> {
    let report = execute_one(&state, &actor, body).await?;
    let usage = usage_header(&report.usage);
    let mut response = envelope_response(report);
    response.headers_mut().insert(USAGE_HEADER, usage);
    Ok(response)
}

/// The response header with what a run used (see [`usage_header`]).
pub const USAGE_HEADER: &str = "avap-usage";

/// What a run used, as an RFC 8941 structured-field dictionary:
/// `fuel=1234, wall_ms=0.412, peak_memory_bytes=65536` (the numbers of
/// `avap run --usage`; `wall_ms` with at most three decimals).
pub fn usage_header(usage: &avap_runtime::Usage) -> HeaderValue {
    let text = format!(
        "fuel={}, wall_ms={:.3}, peak_memory_bytes={}",
        usage.fuel, usage.wall_ms, usage.peak_memory_bytes
    );
    HeaderValue::try_from(text).expect("digits, letters and punctuation are a valid header value")
}

/// One execute request, run (and counted in the metrics and the audit
/// trail); shared with the batch endpoint.
pub async fn execute_one(state: &AppState, actor: &Actor, body: ExecuteRequest) -> Result<RunReport, ApiError> {
    execute_one_with(state, actor, body, None).await
}

/// [`execute_one`] reaching `effects` instead of the configured ones when
/// given (the runs of a transactional batch share its database transaction).
pub async fn execute_one_with(
    state: &AppState,
    actor: &Actor,
    body: ExecuteRequest,
    effects: Option<avap_runtime::Effects>,
) -> Result<RunReport, ApiError> {
    let target = match (&body.script, &body.name) {
        (Some(script), _) => RunTarget::inline(script),
        (None, Some(name)) => RunTarget::stored(name, body.version),
        (None, None) => RunTarget::default(),
    };
    let stored = body.name.clone().filter(|_| body.script.is_none());
    let mut record = RunRecord::new(state, actor, target);
    // Boxed once here, so the large run future is not copied through every
    // layer of futures (and middleware) that awaits this one.
    let run = Box::pin(run_request(state, body, &mut record.target, effects));
    let result = state.metrics().run(stored.as_deref(), run).await;
    record.finish(&result);
    result
}

/// `target` learns the version and artifact a stored script resolved to.
async fn run_request(
    state: &AppState,
    body: ExecuteRequest,
    target: &mut RunTarget,
    effects: Option<avap_runtime::Effects>,
) -> Result<RunReport, ApiError> {
    let run = prepare_run(state, body, target, state.live().limits).await?;
    state
        .execute_script_with(&run.script_name, run.program, run.request, run.settings, effects)
        .await
}

/// An execute request resolved to what runs, ready for a run slot.
#[derive(Debug)]
pub struct PreparedRun {
    /// What the run span and the debug list call it: the stored name, or `inline`.
    pub script_name: String,
    pub program: Program,
    pub request: Request,
    pub settings: RunSettings,
}

/// Check an execute request and resolve its program, with limits clamped
/// to `max` (the server's per-run maximums; a job's allow a longer time).
pub(crate) async fn prepare_run(
    state: &AppState,
    body: ExecuteRequest,
    target: &mut RunTarget,
    mut max: Limits,
) -> Result<PreparedRun, ApiError> {
    let config = state.config();
    let request = body.script_request()?;
    // What the run span and the debug list call it.
    let script_name = body.name.clone().unwrap_or_else(|| "inline".to_owned());
    let program = match (body.script, body.name) {
        (Some(script), None) => {
            if body.version.is_some() {
                return Err(ApiError::invalid("`version` goes with `name` (a stored script)"));
            }
            if script.len() > config.max_script_bytes {
                return Err(ApiError::ScriptTooLarge {
                    size: script.len(),
                    limit: config.max_script_bytes,
                });
            }
            Program::Inline(script)
        }
        (None, Some(name)) => {
            let stored = state
                .stored(&name, body.version)
                .await?
                .ok_or(ApiError::ScriptNotFound {
                    name: name.clone(),
                    version: body.version,
                })?;
            target.resolved(stored.version, stored.module.sha256());
            max = admit_stored(state, &name, &stored.module, max).await?;
            Program::Loaded(stored.module)
        }
        _ => {
            return Err(ApiError::invalid(
                "give exactly one of `script` (AVAP source) and `name` (a stored script)",
            ));
        }
    };
    let settings = RunSettings {
        limits: body.limits.unwrap_or_default().clamp(max),
        time_zone: None,
        now: None,
    };
    Ok(PreparedRun {
        script_name,
        program,
        request,
        settings,
    })
}

/// The envelope as the response body, with the run's status.
pub fn envelope_response(report: RunReport) -> Response {
    let mut envelope = report.envelope;
    if let Some(error) = envelope.error().filter(|e| e["kind"] == "InternalError") {
        // A runtime fault, not the script's doing: log it, do not show it.
        tracing::error!("internal error in a run: {}", error["message"]);
        let mut shown = error.clone();
        shown["message"] = Value::from("internal error while running the script");
        envelope = avap_runtime::Envelope::failed(envelope.elapsed(), shown);
    }
    // `_status` may be 100..=599, but a 1xx cannot be a final HTTP status.
    let status = StatusCode::from_u16(report.http_status)
        .ok()
        .filter(|s| !s.is_informational())
        .unwrap_or(StatusCode::OK);
    // The envelope is JSON text already: sent as it is.
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        envelope.into_text(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_clamped_to_the_server_maximum() {
        let max = super::super::ServerConfig::LIMITS;
        let asked = LimitsSpec {
            fuel: Some(u64::MAX),
            time_ms: Some(50),
            memory_mb: Some(u64::MAX),
            stack_kb: None,
            output_kb: Some(1),
        };
        let got = asked.clamp(max);
        assert_eq!(got.fuel, max.fuel);
        assert_eq!(got.time_ms, 50);
        assert_eq!(got.memory_bytes, max.memory_bytes);
        assert_eq!(got.stack_bytes, max.stack_bytes);
        assert_eq!(got.output_bytes, 1024);
        assert_eq!(LimitsSpec::default().clamp(max), max);
    }

    #[test]
    fn script_request_defaults_and_pairs() {
        let body: ExecuteRequest = serde_json::from_value(serde_json::json!({
            "script": "",
            "params": {"id": 7},
            "request": {"method": "post", "query": {"tag": ["a", "b"], "n": 1}}
        }))
        .unwrap();
        let mut r = body.script_request().unwrap();
        r.query.sort();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/");
        assert_eq!(r.json, Some(serde_json::json!({"id": 7})));
        assert_eq!(
            r.query,
            [("n", "1"), ("tag", "a"), ("tag", "b")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn limits_and_request_are_objects_not_arrays() {
        let parse = |body: serde_json::Value| serde_json::from_value::<ExecuteRequest>(body).map(|_| ());
        assert!(parse(serde_json::json!({"script": "", "limits": [null]})).is_err());
        assert!(parse(serde_json::json!({"script": "", "request": ["GET"]})).is_err());
        assert!(parse(serde_json::json!({"script": "", "limits": null, "request": {"method": "GET"}})).is_ok());
        let limits =
            serde_json::from_value::<ExecuteRequest>(serde_json::json!({"script": "", "limits": {"fuel": 5.0}}))
                .unwrap()
                .limits
                .unwrap();
        assert_eq!(limits.fuel, Some(5));
    }

    #[test]
    fn params_must_be_an_object() {
        let body: ExecuteRequest = serde_json::from_value(serde_json::json!({"script": "", "params": [1]})).unwrap();
        assert_eq!(body.script_request().unwrap_err().kind(), "InvalidRequest");
    }
}
