//! `GET /api/v1/run/{name}/openapi.json`, in process (router `oneshot`): a
//! stored script's routes and `addParam` names as an `OpenAPI` 3.1 document,
//! checked against utoipa's typed model of 3.1 (it refuses a wrong
//! `openapi` version, an unknown parameter location, a malformed operation).

mod support;

use avap_server::ServerConfig;
use axum::Router;
use axum::http::StatusCode;
use serde_json::{Value, json};

async fn server(name: &str) -> Router {
    support::router(&format!("script-api-{name}"), ServerConfig::for_this_machine()).await
}

async fn send(app: &Router, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    support::send_json(app, method, path, body).await
}

async fn store(app: &Router, name: &str, source: &str) {
    let (status, body) = send(
        app,
        "POST",
        "/api/v1/scripts",
        Some(json!({"name": name, "source": source})),
    )
    .await;
    assert!(status.is_success(), "storing {name}: {status} {body}");
}

/// The document, after checking it reads as `OpenAPI` 3.1.
async fn document(app: &Router, name: &str) -> Value {
    let (status, doc) = send(app, "GET", &format!("/api/v1/run/{name}/openapi.json"), None).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    // Part by part first, so a failure says where.
    for (path, item) in doc["paths"].as_object().unwrap() {
        serde_json::from_value::<utoipa::openapi::PathItem>(item.clone())
            .unwrap_or_else(|e| panic!("path {path}: {e}\n{item:#}"));
    }
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        serde_json::from_value::<utoipa::openapi::RefOr<utoipa::openapi::Schema>>(schema.clone())
            .unwrap_or_else(|e| panic!("schema {name}: {e}\n{schema:#}"));
    }
    let typed: utoipa::openapi::OpenApi =
        serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("not OpenAPI 3.1: {e}\n{doc:#}"));
    assert_eq!(serde_json::to_value(&typed.openapi).unwrap(), "3.1.0");
    // Every reference resolves inside the document.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let target = &part[..part.find('"').unwrap()];
        assert!(doc["components"]["schemas"][target].is_object(), "{target} is missing");
    }
    doc
}

fn parameter_names(operation: &Value) -> Vec<&str> {
    operation["parameters"]
        .as_array()
        .map(|ps| ps.iter().map(|p| p["name"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

const USERS: &str = r#"addParam(lang, lang)
function paging(){
    addParam(offset, offset)
}
function listUsers(){
    addParam(limit, limit)
    paging()
    users = [limit, offset, lang]
}
function auth(){
    addParam("token", token)
}
function createUser(){
    addParam(name, name)
    created = name
}
registerEndpoint("/users", "GET", [], "List users", listUsers, users)
registerEndpoint("/users", "POST", [auth], "Create a user", createUser, created)
"#;

#[tokio::test]
async fn a_script_with_two_endpoints_describes_both_with_their_params() {
    let app = server("users").await;
    store(&app, "users", USERS).await;
    let doc = document(&app, "users").await;
    assert_eq!(doc["info"]["title"], "users");
    assert_eq!(doc["info"]["version"], "1");
    assert_eq!(doc["servers"], json!([{"url": "/api/v1/run/users"}]));
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.keys().collect::<Vec<_>>(), ["/users"]);
    let users = paths["/users"].as_object().unwrap();
    assert_eq!(users.keys().collect::<Vec<_>>(), ["get", "post"]);

    let get = &users["get"];
    assert_eq!(get["summary"], "List users");
    // The top level's, then the handler's own, then what it calls.
    assert_eq!(parameter_names(get), ["lang", "limit", "offset"]);
    assert_eq!(get["parameters"][1]["in"], "query");
    assert_eq!(get["parameters"][1]["required"], false);
    assert!(get.get("requestBody").is_none());
    assert_eq!(
        get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Envelope"
    );

    let post = &users["post"];
    assert_eq!(post["summary"], "Create a user");
    assert!(post["description"].as_str().unwrap().contains("`auth`"), "{post}");
    assert_eq!(parameter_names(post), ["lang", "token", "name"]);
    let body = &post["requestBody"]["content"]["application/json"]["schema"];
    assert!(body["properties"]["name"].is_object(), "{body}");
    // The envelope is the server's own schema.
    let (_, server_doc) = send(&app, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(
        doc["components"]["schemas"]["Envelope"],
        server_doc["components"]["schemas"]["Envelope"]
    );
    // Runs need the `execute` scope; this server lets anonymous requests in.
    assert_eq!(doc["security"], json!([{"bearer": []}, {"apiKey": []}, {}]));

    // What it describes is what runs.
    let (status, run) = send(&app, "GET", "/api/v1/run/users/users?limit=5", None).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    let (status, run) = send(&app, "POST", "/api/v1/run/users/users", Some(json!({"name": "Lin"}))).await;
    assert_eq!((status, &run["result"]), (StatusCode::OK, &json!({"created": "Lin"})));

    // A new version is described as such.
    store(&app, "users", &USERS.replace("List users", "All users")).await;
    let doc = document(&app, "users").await;
    assert_eq!(doc["info"]["version"], "2");
    assert_eq!(doc["paths"]["/users"]["get"]["summary"], "All users");
}

#[tokio::test]
async fn a_script_without_endpoints_has_one_route_for_every_method() {
    let app = server("plain").await;
    store(
        &app,
        "hello",
        "addParam(who, who)\nmessage = \"Hello \" + who\naddResult(message)\n",
    )
    .await;
    let doc = document(&app, "hello").await;
    let root = doc["paths"]["/"].as_object().unwrap();
    assert_eq!(doc["paths"].as_object().unwrap().len(), 1);
    let mut methods: Vec<&str> = root.keys().map(String::as_str).collect();
    methods.sort_unstable();
    assert_eq!(
        methods,
        ["delete", "get", "head", "options", "patch", "post", "put", "trace"]
    );
    assert_eq!(parameter_names(&root["get"]), ["who"]);
    assert!(root["post"]["requestBody"]["content"]["application/json"].is_object());
}

#[tokio::test]
async fn an_unknown_script_is_not_found() {
    let app = server("unknown").await;
    let (status, body) = send(&app, "GET", "/api/v1/run/nobody/openapi.json", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["kind"], "ScriptNotFound", "{body}");
}

#[tokio::test]
async fn only_get_is_shadowed_at_the_document_path() {
    let app = server("shadow").await;
    let source = "function hook(){\n    got = \"posted\"\n}\n\
                  registerEndpoint(\"/openapi.json\", \"POST\", [], \"A hook\", hook, got)\n";
    store(&app, "hook", source).await;
    // GET describes the script, even its endpoint at the same path…
    let doc = document(&app, "hook").await;
    assert!(doc["paths"]["/openapi.json"]["post"].is_object(), "{doc}");
    // …and every other method still runs it.
    let (status, run) = send(&app, "POST", "/api/v1/run/hook/openapi.json", None).await;
    assert_eq!(
        (status, &run["result"]),
        (StatusCode::OK, &json!({"got": "posted"})),
        "{run}"
    );
    let (status, run) = send(&app, "PUT", "/api/v1/run/hook/openapi.json", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{run}");
    assert_eq!(run["error"]["kind"], "MethodNotAllowed", "{run}");
}
