//! What the in-process server tests share: a server on a fresh `SQLite`
//! registry, and one request through the whole router (`oneshot`).
#![allow(dead_code)] // Each test crate uses its own part.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use avap_server::{AppState, Location, ServerConfig, Store, app};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt as _;

/// A fresh directory for one server of test crate `tag`.
pub fn fresh_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("avap-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// The state of a server with `config` on a fresh `SQLite` registry;
/// requests without an API key are let in (as on a loopback address).
pub async fn state(tag: &str, config: ServerConfig) -> AppState {
    let dir = fresh_dir(tag);
    let store = Store::connect(&Location::Sqlite(dir.join("avap.sqlite")))
        .await
        .expect("the registry");
    let key = avap_hostfns::artifact::generate_key().expect("a key");
    let config = ServerConfig {
        allow_anonymous: true,
        ..config
    };
    AppState::new(config, store, key).expect("the state")
}

/// The whole HTTP API of [`state`].
pub async fn router(tag: &str, config: ServerConfig) -> Router {
    app(state(tag, config).await)
}

/// `method path` with a JSON `body`: the status and the JSON answer
/// (`Value::Null` when it is not JSON).
pub async fn send_json(app: &Router, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("a request");
    let response = app.clone().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}
