//! `GET /api/v1/openapi.json`: the `OpenAPI` 3.0 document of the HTTP API,
//! written by hand. [`ROUTES`] is every (method, path) the router serves;
//! the document describes exactly those (a test checks both ways).

use axum::Json;
use serde_json::{Map, Value, json};

/// Every route of [`app`](super::app) as (method, `OpenAPI` path); `ANY` is a
/// route that accepts every method.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/execute"),
    ("POST", "/api/v1/execute/batch"),
    ("POST", "/api/v1/execute/file"),
    ("GET", "/api/v1/scripts"),
    ("POST", "/api/v1/scripts"),
    ("GET", "/api/v1/scripts/{name}"),
    ("DELETE", "/api/v1/scripts/{name}"),
    ("POST", "/api/v1/scripts/{name}/rollback"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/registry/scripts"),
    ("GET", "/api/v1/registry/artifacts/{sha256}"),
    ("ANY", "/api/v1/run/{name}"),
    ("ANY", "/api/v1/run/{name}/{*rest}"),
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/info"),
    ("GET", "/api/v1/metrics"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/debug/runs"),
    ("GET", "/api/v1/debug/cache"),
    ("GET", "/api/v1/debug/config"),
    ("POST", "/api/v1/debug/profile"),
];

/// The methods an `ANY` route is documented with.
const ANY_METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

pub async fn openapi() -> Json<Value> {
    Json(document())
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_content(schema: &Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": json_content(&schema("Error"))})
}

/// What one (method, path) does.
fn operation(method: &str, path: &str) -> Value {
    let envelope_responses = json!({
        "200": {"description": "The run's envelope; the status is the script's `_status` (default 200).",
                "content": json_content(&schema("Envelope"))},
        "400": {"description": "A compile or runtime error (envelope), or an invalid request (error).",
                "content": json_content(&json!({"oneOf": [schema("Envelope"), schema("Error")]}))},
        "403": error_response("The script uses a capability this server denies."),
        "413": error_response("The body or the script is over the server's limit."),
        "422": {"description": "A run limit was hit (fuel, memory, stack, output).",
                "content": json_content(&schema("Envelope"))},
        "503": error_response("No run slot became free in time; retry after `Retry-After`."),
        "502": error_response("Edge nodes: the mirrored artifact failed verification (`ArtifactRejected`)."),
        "504": {"description": "The run's time limit was hit.", "content": json_content(&schema("Envelope"))},
    });
    let name_param = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let rest_param = json!({"name": "rest", "in": "path", "required": true,
        "description": "The path the script sees (for `registerEndpoint`).", "schema": {"type": "string"}});
    let ok_json = |description: &str| json!({"200": {"description": description, "content": json_content(&json!({"type": "object"}))}});
    match (method, path) {
        ("POST", "/api/v1/execute") => json!({
            "summary": "Run an inline or stored script once",
            "requestBody": {"required": true, "content": json_content(&schema("ExecuteRequest"))},
            "responses": envelope_responses,
        }),
        ("POST", "/api/v1/execute/batch") => json!({
            "summary": "Run up to 64 execute requests (concurrently, or in order in one database transaction); results in order",
            "requestBody": {"required": true, "content": json_content(&schema("BatchRequest"))},
            "responses": {
                "200": {"description": "One result per item, each with its own status.",
                        "content": json_content(&schema("BatchResponse"))},
                "400": error_response("The batch itself is malformed or has too many items."),
            },
        }),
        ("POST", "/api/v1/execute/file") => {
            let mut responses = envelope_responses.clone();
            responses["400"]["description"] = json!(
                "A compile or runtime error (envelope); a malformed upload, unknown part or missing `file`, \
                 or an artifact that is corrupt or tampered with (`InvalidArtifact`)."
            );
            responses["403"]["description"] = json!(
                "The artifact is unsigned or signed by a key this server does not trust (`UntrustedArtifact`), \
                 or the script uses a denied capability."
            );
            json!({
                "summary": "Upload a .avap source or a signed .wasm artifact and run it once",
                "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": schema("FileUpload")}}},
                "responses": responses,
            })
        }
        ("GET", "/api/v1/registry/scripts") => json!({
            "summary": "The current version of every stored script, for edge nodes (registry scope)",
            "parameters": [{"name": "If-None-Match", "in": "header", "required": false, "schema": {"type": "string"},
                            "description": "A previous answer's `ETag`: 304 while the list is unchanged."}],
            "responses": {
                "200": {"description": "The list; `ETag` is the quoted generation.",
                        "headers": {"ETag": {"schema": {"type": "string"}}},
                        "content": json_content(&schema("RegistryList"))},
                "304": {"description": "Unchanged since the `If-None-Match` generation."},
                "409": error_response("This is an edge node (`EdgeReadOnly`): follow the registry node."),
            },
        }),
        ("GET", "/api/v1/registry/artifacts/{sha256}") => json!({
            "summary": "A signed artifact by its SHA-256, for edge nodes (registry scope)",
            "parameters": [{"name": "sha256", "in": "path", "required": true,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}],
            "responses": {
                "200": {"description": "The signed artifact.",
                        "content": {"application/wasm": {"schema": {"type": "string", "format": "binary"}}}},
                "400": error_response("Not 64 lowercase hex digits."),
                "404": error_response("No stored version has this artifact (`ArtifactNotFound`)."),
                "409": error_response("This is an edge node (`EdgeReadOnly`): follow the registry node."),
            },
        }),
        ("GET", "/api/v1/audit") => json!({
            "summary": "The audit trail, newest first (admin scope)",
            "parameters": [
                {"name": "script", "in": "query", "required": false, "schema": {"type": "string"},
                 "description": "Only rows of this stored script."},
                {"name": "limit", "in": "query", "required": false,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                {"name": "before", "in": "query", "required": false, "schema": {"type": "integer"},
                 "description": "Only rows with a smaller id: the previous page's `next_before`."},
            ],
            "responses": {
                "200": {"description": "Audit rows.", "content": json_content(&schema("AuditPage"))},
                "400": error_response("A bad query (unknown parameter, `limit` out of range)."),
            },
        }),
        ("GET", "/api/v1/scripts") => {
            json!({"summary": "List stored scripts", "responses": ok_json("The stored scripts.")})
        }
        ("POST", "/api/v1/scripts") => json!({
            "summary": "Store (compile and sign) a script as a new version",
            "requestBody": {"required": true, "content": json_content(&schema("StoreRequest"))},
            "responses": {
                "201": {"description": "Stored.", "content": json_content(&json!({"type": "object"}))},
                "400": {"description": "Compile diagnostics (nothing stored) or an invalid request.",
                        "content": json_content(&json!({"oneOf": [schema("Envelope"), schema("Error")]}))},
                "409": error_response("An edge node's registry is read-only (`EdgeReadOnly`)."),
            },
        }),
        ("GET", "/api/v1/scripts/{name}") => json!({
            "summary": "A stored script and its versions", "parameters": [name_param],
            "responses": {"200": ok_json("The script.")["200"], "404": error_response("No such script.")},
        }),
        ("DELETE", "/api/v1/scripts/{name}") => json!({
            "summary": "Delete a stored script", "parameters": [name_param],
            "responses": {"200": ok_json("Deleted.")["200"], "204": {"description": "Deleted."},
                          "404": error_response("No such script."),
                          "409": error_response("An edge node's registry is read-only (`EdgeReadOnly`).")},
        }),
        ("POST", "/api/v1/scripts/{name}/rollback") => json!({
            "summary": "Make an earlier version current", "parameters": [name_param],
            "responses": {"200": ok_json("Rolled back.")["200"], "404": error_response("No such script or version."),
                          "409": error_response("An edge node's registry is read-only (`EdgeReadOnly`).")},
        }),
        ("ANY", "/api/v1/run/{name}") => json!({
            "summary": "Run a stored script as an endpoint (the HTTP request is its input)",
            "parameters": [name_param], "responses": envelope_responses,
        }),
        ("ANY", "/api/v1/run/{name}/{*rest}") => json!({
            "summary": "Run a stored script routed by `registerEndpoint` (method and path)",
            "parameters": [name_param, rest_param], "responses": envelope_responses,
        }),
        ("GET", "/api/v1/health") => {
            json!({"summary": "Liveness and cache state", "security": [], "responses": ok_json("Healthy.")})
        }
        ("GET", "/api/v1/info") => {
            json!({"summary": "Version, limits, capability policy and commands", "responses": ok_json("Server information.")})
        }
        ("GET", "/api/v1/metrics") => json!({
            "summary": "Prometheus metrics (OpenMetrics text 1.0.0)",
            "responses": {"200": {"description": "Metrics.", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}},
        }),
        ("GET", "/api/v1/openapi.json") => {
            json!({"summary": "This document", "security": [], "responses": ok_json("OpenAPI 3.0 document.")})
        }
        ("GET", "/api/v1/debug/runs") => json!({
            "summary": "Runs in progress: request id, script (registry name, `inline`, `upload`), start, elapsed (admin scope)",
            "responses": {"200": {"description": "`{count, runs: [{request_id, script, started_at, elapsed_ms}]}`, oldest first.",
                                  "content": json_content(&json!({"type": "object"}))}},
        }),
        ("GET", "/api/v1/debug/cache") => json!({
            "summary": "Cache sizes, run slots, and which registry scripts are loaded in the stored-script cache (admin scope)",
            "responses": ok_json("The cache summary; `registry.listed` holds the first 100 scripts by name."),
        }),
        ("GET", "/api/v1/debug/config") => json!({
            "summary": "The effective configuration as TOML with each value's origin; passwords and tokens hidden (admin scope)",
            "responses": {"200": {"description": "TOML text, as `avap serve --print-config` prints it.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }),
        ("POST", "/api/v1/debug/profile") => json!({
            "summary": "A CPU profile of the whole server process, as folded stacks for speedscope or flamegraph.pl (admin scope)",
            "parameters": [{"name": "seconds", "in": "query", "required": false,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 60, "default": 10},
                            "description": "How long to sample (99 Hz); must fit in the request timeout."}],
            "responses": {
                "200": {"description": "One `thread;outermost;…;innermost count` line per distinct stack.",
                        "content": {"text/plain": {"schema": {"type": "string"}}}},
                "400": error_response("`seconds` is not 1 to 60, or does not fit in `request_timeout_ms`."),
                "409": error_response("A profile is already being taken (`ProfileInProgress`)."),
            },
        }),
        _ => json!({"responses": {"default": error_response("Undocumented.")}}),
    }
}

/// `/api/v1/run/{name}/{*rest}` is `/api/v1/run/{name}/{rest}` in `OpenAPI`.
fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

fn components() -> Value {
    json!({
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key as a bearer token."},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
        "schemas": {
            "ExecuteRequest": {
                "type": "object", "additionalProperties": false,
                "description": "Exactly one of `script` and `name`.",
                "properties": {
                    "script": {"type": "string", "description": "AVAP source."},
                    "name": {"type": "string", "description": "A stored script."},
                    "version": {"type": "integer", "description": "A version of the stored script (default: current)."},
                    "params": {"type": "object", "description": "The JSON body the script sees (`addParam`)."},
                    "limits": {
                        "type": "object", "additionalProperties": false,
                        "description": "Per-run limits, each clamped to the server's maximum.",
                        "properties": {
                            "fuel": {"type": "integer", "minimum": 0},
                            "time_ms": {"type": "integer", "minimum": 0},
                            "memory_mb": {"type": "integer", "minimum": 0},
                            "stack_kb": {"type": "integer", "minimum": 0},
                            "output_kb": {"type": "integer", "minimum": 0},
                        },
                    },
                    "request": {
                        "type": "object", "additionalProperties": false,
                        "properties": {
                            "method": {"type": "string"},
                            "path": {"type": "string"},
                            "query": {"type": "object"},
                            "headers": {"type": "object"},
                        },
                    },
                },
            },
            "Envelope": {
                "type": "object", "required": ["status", "elapsed"],
                "properties": {
                    "status": {"type": "boolean"},
                    "elapsed": {"type": "number"},
                    "result": {"type": "object"},
                    "error": {
                        "type": "object", "required": ["kind", "message"],
                        "properties": {
                            "kind": {"type": "string"}, "message": {"type": "string"},
                            "line": {"type": "integer"}, "column": {"type": "integer"},
                        },
                    },
                },
            },
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {
                    "type": "object", "required": ["kind", "message"],
                    "properties": {
                        "kind": {"type": "string", "example": "InvalidRequest"},
                        "message": {"type": "string"},
                        "line": {"type": "integer"}, "column": {"type": "integer"},
                    },
                }},
            },
            "BatchRequest": {
                "type": "object", "additionalProperties": false, "required": ["items"],
                "properties": {
                    "items": {"type": "array", "maxItems": 64, "items": schema("ExecuteRequest")},
                    "transaction": {"type": "boolean", "default": false,
                                    "description": "Run the items one after another, in order, with every application-database \
                                                    statement inside one transaction: committed when every item's run ends \
                                                    without an error, rolled back otherwise (later items are then not run). \
                                                    Connectors and outbound HTTP stay outside it."},
                },
            },
            "BatchResponse": {
                "type": "object", "required": ["results"],
                "properties": {
                    "results": {"type": "array", "items": {
                        "type": "object", "required": ["status", "body"],
                        "properties": {
                            "status": {"type": "integer",
                                       "description": "The item's HTTP status; 424 for an item not run because the transaction rolled back first."},
                            "body": {"oneOf": [schema("Envelope"), schema("Error")]},
                            "transaction": {"type": "string", "enum": ["committed", "rolled_back"],
                                            "description": "With `\"transaction\": true` only: what became of this item's writes."},
                        },
                    }},
                    "transaction": {"type": "string", "enum": ["committed", "rolled_back"],
                                    "description": "With `\"transaction\": true` only."},
                    "failed_item": {"type": "integer", "nullable": true,
                                    "description": "When rolled back: the index of the first item that failed (null: the commit \
                                                    itself failed)."},
                    "reason": {"type": "string", "description": "When rolled back: why."},
                },
            },
            "FileUpload": {
                "type": "object", "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "AVAP source, or a signed .wasm artifact (told apart by the `\\0asm` magic)."},
                    "params": {"type": "string", "description": "JSON object: the body the script sees (`addParam`)."},
                    "limits": {"type": "string", "description": "JSON object: per-run limits as in ExecuteRequest."},
                    "request": {"type": "string", "description": "JSON object: method, path, query, headers as in ExecuteRequest."},
                },
            },
            "AuditPage": {
                "type": "object", "required": ["entries", "next_before"],
                "properties": {
                    "entries": {"type": "array", "items": schema("AuditEntry")},
                    "next_before": {"type": "integer", "nullable": true,
                                    "description": "Pass as `before` for the next page; null on the last page."},
                },
            },
            "AuditEntry": {
                "type": "object",
                "required": ["id", "at", "actor", "action", "outcome"],
                "properties": {
                    "id": {"type": "integer"},
                    "at": {"type": "string", "format": "date-time"},
                    "actor": {"type": "string", "description": "API key id, or `anonymous`."},
                    "action": {"type": "string", "enum": ["store", "delete", "rollback", "run"]},
                    "script": {"type": "string", "nullable": true, "description": "Null for inline runs and uploads."},
                    "version": {"type": "integer", "nullable": true},
                    "artifact_sha256": {"type": "string", "nullable": true},
                    "outcome": {"type": "string", "description": "`ok`, `unchanged`, or an error kind."},
                    "request_id": {"type": "string", "nullable": true},
                },
            },
            "RegistryList": {
                "type": "object", "required": ["generation", "scripts"],
                "properties": {
                    "generation": {"type": "string", "description": "Changes whenever the list does (the ETag)."},
                    "scripts": {"type": "array", "items": {
                        "type": "object", "required": ["name", "version", "artifact_sha256", "updated_at"],
                        "properties": {
                            "name": {"type": "string"},
                            "version": {"type": "integer"},
                            "artifact_sha256": {"type": "string"},
                            "updated_at": {"type": "string", "format": "date-time"},
                        },
                    }},
                },
            },
            "StoreRequest": {
                "type": "object", "additionalProperties": false, "required": ["name", "source"],
                "properties": {"name": {"type": "string"}, "source": {"type": "string"}},
            },
        },
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for &(method, path) in ROUTES {
        let item = paths
            .entry(openapi_path(path))
            .or_insert_with(|| Value::Object(Map::new()));
        let methods: Vec<String> = if method == "ANY" {
            ANY_METHODS.iter().map(|m| (*m).to_owned()).collect()
        } else {
            vec![method.to_ascii_lowercase()]
        };
        for m in methods {
            item[m] = operation(method, path);
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "avap serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Compile and run AVAP scripts over HTTP.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}, {}],
        "paths": paths,
        "components": components(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().unwrap();
        for &(method, path) in ROUTES {
            let m = if method == "ANY" {
                "get".to_owned()
            } else {
                method.to_ascii_lowercase()
            };
            assert!(paths[&openapi_path(path)][&m].is_object(), "{method} {path}");
            assert!(
                paths[&openapi_path(path)][&m]["responses"].is_object(),
                "{method} {path}"
            );
        }
        for path in paths.keys() {
            assert!(ROUTES.iter().any(|&(_, p)| openapi_path(p) == *path), "{path}");
        }
        let text = doc.to_string();
        let mut at = 0;
        while let Some(i) = text[at..].find("\"$ref\":\"#/components/schemas/") {
            let start = at + i + "\"$ref\":\"#/components/schemas/".len();
            let end = start + text[start..].find('"').unwrap();
            assert!(
                doc["components"]["schemas"][&text[start..end]].is_object(),
                "{}",
                &text[start..end]
            );
            at = end;
        }
    }
}
