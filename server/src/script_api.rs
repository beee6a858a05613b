//! `GET /api/v1/run/{name}/openapi.json`: a stored script's own API, as an
//! `OpenAPI` 3.1 document built from its artifact's signed meta.
//!
//! * One path item per path the script declares with `registerEndpoint`
//!   (written as literals: [`Meta::endpoints`]), one operation per method,
//!   its summary the endpoint's description.
//! * Parameters: the `addParam` names the request reads where the source
//!   spells them out ([`Meta::params`]): the top level's, the middleware's and
//!   the handler's, with the functions they call. `addParam` reads the query
//!   string first, then a JSON body's field, then a form field, and coerces
//!   the text, so the type is unknown: a query or form parameter is
//!   described as the text it is on the wire (`string`), a JSON body field
//!   as any JSON value.
//! * A script without `registerEndpoint` has one route, `/`, for every method.
//!   One that registers its routes only from computed values has none known.
//! * Every operation answers with the run envelope (the server's own
//!   `Envelope` schema), or an error for a request that was not run.
//!
//! The route is a static segment, so it beats the `{*rest}` wildcard: for
//! GET (and HEAD) it shadows a script endpoint at `/openapi.json`; other
//! methods on that path still run the script ([`run_at_openapi_path`]).
//! It reads only the loaded module's meta, so edge nodes serve it from
//! their mirror like the run routes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use avap_hostfns::artifact::{EndpointMeta, Meta};
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::openapi::{ANY_METHODS, ApiErrorBody, schemas_for, security_of, security_schemes};
use super::{AppState, ServerConfig};

/// The script path this route takes from the wildcard.
pub const DOCUMENT_PATH: &str = "openapi.json";

/// The command whose presence says a script routes by method and path.
const REGISTER_ENDPOINT: &str = "registerEndpoint";

/// Methods whose requests carry a body `addParam` may read.
const BODY_METHODS: [&str; 3] = ["post", "put", "patch"];

/// Describe a stored script's API (`OpenAPI` 3.1).
///
/// The routes it declares with `registerEndpoint` (methods, paths,
/// descriptions) and the `addParam` names it reads where the source spells
/// them out; the current version.
#[utoipa::path(
    get,
    path = "/api/v1/run/{name}/openapi.json",
    tag = "runs",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The stored script.")),
    responses(
        (status = 200, description = "The script's API (`OpenAPI` 3.1).", body = Object),
        (status = 404, description = "No such stored script (`ScriptNotFound`).", body = ApiErrorBody),
        (status = 502, description = "Edge nodes: the mirrored artifact failed verification (`ArtifactRejected`).", body = ApiErrorBody),
        (status = 503, description = "The database is unavailable (`DatabaseUnavailable`).", body = ApiErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn script_openapi(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let Some(stored) = state.stored(&name, None).await? else {
        return Err(ApiError::ScriptNotFound { name, version: None });
    };
    Ok(Json(describe(
        &name,
        stored.version,
        stored.module.meta(),
        state.config(),
    )))
}

/// Other methods on `/api/v1/run/{name}/openapi.json`: the script's own
/// endpoint at `/openapi.json`, as the wildcard route would run it.
pub async fn run_at_openapi_path(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    super::run::run(state, name, Some(DOCUMENT_PATH.to_owned()), req).await
}

/// The document for version `version` of the stored script `name`.
pub fn describe(name: &str, version: i64, meta: &Meta, config: &ServerConfig) -> Value {
    let registers = meta.imports.iter().any(|i| i.name == REGISTER_ENDPOINT);
    let mut description = format!(
        "Routes of the stored script `{name}` (source SHA-256 {}), from its signed artifact. Parameters are the \
         `addParam` names written in the source: read from the query string, else a JSON body's field, else a \
         form field. Names reached only through middleware or calls computed at run time are not listed.",
        meta.source_sha256
    );
    let paths = if registers {
        if meta.endpoints.is_empty() {
            description.push_str(
                " The script registers its endpoints from computed values only, so none is known before it runs.",
            );
        }
        endpoint_paths(meta)
    } else {
        let operations = ANY_METHODS
            .iter()
            .map(|method| {
                let summary = format!("Run `{name}`");
                (*method, operation(&summary, None, method, &meta.params.top_level))
            })
            .collect();
        BTreeMap::from([("/".to_owned(), operations)])
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": name,
            "version": version.to_string(),
            "description": description,
        },
        "servers": [{"url": format!("/api/v1/run/{name}")}],
        "security": security_of(config, &format!("/api/v1/run/{name}")),
        "paths": paths,
        "components": {
            "schemas": schemas_for(&["Envelope", "EnvelopeOrError"]),
            "securitySchemes": security_schemes(),
        },
    })
}

/// Path → method → operation, for the endpoints a request can reach: a
/// path the runtime compares with the request's, so one starting with `/`;
/// the first registration of a method and path wins, as when dispatching.
fn endpoint_paths(meta: &Meta) -> BTreeMap<String, BTreeMap<&'static str, Value>> {
    let mut paths: BTreeMap<String, BTreeMap<&'static str, Value>> = BTreeMap::new();
    for endpoint in meta.endpoints.iter().filter(|e| e.path.starts_with('/')) {
        let Some(method) = ANY_METHODS.iter().find(|m| m.eq_ignore_ascii_case(&endpoint.method)) else {
            continue;
        };
        let params = meta.params.for_endpoint(endpoint);
        let summary = if endpoint.description.is_empty() {
            format!("{} {}", endpoint.method, endpoint.path)
        } else {
            endpoint.description.clone()
        };
        paths
            .entry(endpoint.path.clone())
            .or_default()
            .entry(method)
            .or_insert_with(|| operation(&summary, Some(endpoint), method, &params));
    }
    paths
}

/// One operation: its parameters, and the run's answer.
fn operation(summary: &str, endpoint: Option<&EndpointMeta>, method: &str, params: &[String]) -> Value {
    let mut op = Map::new();
    op.insert("summary".into(), json!(summary));
    if let Some(e) = endpoint {
        let mut text = format!("Handled by `{}`", e.handler);
        if !e.middleware.is_empty() {
            let _ = write!(text, " after the middleware `{}`", e.middleware.join("`, `"));
        }
        text.push('.');
        op.insert("description".into(), json!(text));
    }
    if !params.is_empty() {
        let query: Vec<Value> = params
            .iter()
            .map(|p| {
                json!({
                    "name": p,
                    "in": "query",
                    "required": false,
                    "description": "Read with `addParam`; digits become an integer, other numbers a float, JSON text is decoded, an empty value is `None`.",
                    "schema": {"type": "string"},
                })
            })
            .collect();
        op.insert("parameters".into(), Value::Array(query));
        if BODY_METHODS.contains(&method) {
            // Any JSON value in a JSON body (spelled out: some tools take no
            // `{}`), text in a form.
            let fields =
                |schema: Value| -> Map<String, Value> { params.iter().map(|p| (p.clone(), schema.clone())).collect() };
            let json_fields = fields(json!({"type": ["string", "number", "boolean", "array", "object", "null"]}));
            let form_fields = fields(json!({"type": "string"}));
            op.insert(
                "requestBody".into(),
                json!({
                    "required": false,
                    "description": "The same parameters as fields, when the query string does not have them (their types are the script's to check).",
                    "content": {
                        "application/json": {"schema": {"type": "object", "properties": json_fields}},
                        "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": form_fields}},
                    },
                }),
            );
        }
    }
    op.insert("responses".into(), responses());
    Value::Object(op)
}

/// What a run answers: the envelope, whatever the script's `_status`.
fn responses() -> Value {
    let envelope = |description: &str, schema: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}},
        })
    };
    json!({
        "200": envelope("The run's envelope: `result` holds what the script returned.", "Envelope"),
        "default": envelope(
            "A failed run (envelope with `error`; the status is the script's `_status` or the error's), or a \
             request that was not run (`{\"error\": …}`).",
            "EnvelopeOrError",
        ),
    })
}

#[cfg(test)]
mod tests {
    use avap_hostfns::abi;

    use super::*;

    /// The meta of an artifact compiled before `params` and `middleware`
    /// existed: it still describes its routes, with no parameters.
    #[test]
    fn an_old_meta_is_described_without_parameters() {
        let old = json!({
            "format_version": abi::FORMAT_VERSION,
            "compiler_version": "0.1.0",
            "source_name": "users.avap",
            "source_sha256": "00",
            "imports": [
                {"module": abi::COMMAND_MODULE, "name": "addParam", "capability": "request", "line": 2},
                {"module": abi::COMMAND_MODULE, "name": REGISTER_ENDPOINT, "capability": "request", "line": 4},
            ],
            "endpoints": [
                {"method": "GET", "path": "/users", "handler": "list", "description": "List users"},
                {"method": "GET", "path": "unreachable", "handler": "list", "description": ""},
            ],
            "functions": ["list"],
        });
        let meta = Meta::from_json(old.to_string().as_bytes()).expect("an old meta reads");
        let doc = describe("users", 3, &meta, &ServerConfig::for_this_machine());
        assert_eq!(doc["info"]["version"], "3");
        let get = &doc["paths"]["/users"]["get"];
        assert_eq!(get["summary"], "List users");
        assert!(get.get("parameters").is_none(), "{get}");
        // A path without a leading `/` never matches a request's.
        assert_eq!(doc["paths"].as_object().unwrap().len(), 1, "{doc}");
    }

    #[test]
    fn routes_registered_only_at_run_time_are_said_to_be_unknown() {
        let mut meta = Meta::from_json(
            json!({
                "format_version": abi::FORMAT_VERSION, "compiler_version": "0.1.0", "source_name": "x.avap",
                "source_sha256": "00", "endpoints": [], "functions": [],
                "imports": [{"module": abi::COMMAND_MODULE, "name": REGISTER_ENDPOINT, "capability": "request", "line": 1}],
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let doc = describe("x", 1, &meta, &ServerConfig::for_this_machine());
        assert_eq!(doc["paths"], json!({}));
        assert!(doc["info"]["description"].as_str().unwrap().contains("none is known"));
        meta.imports.clear();
        let doc = describe("x", 1, &meta, &ServerConfig::for_this_machine());
        assert_eq!(doc["paths"]["/"].as_object().unwrap().len(), ANY_METHODS.len());
    }
}
