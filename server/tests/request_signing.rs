//! Request signing in process: signing keys made as `avap apikey create
//! --signed` makes them (sealed secret in the registry, the secrets key in
//! the data directory), requests through `app(state)` with `oneshot`. Each
//! way a signed request can fail has its 401 `reason`; replays are caught
//! on one node, and across nodes through the machine's Redis. With
//! `TEST_SERVER_DATABASE=postgres` (as `.ci/run` runs it a second time) the
//! registry is a fresh `PostgreSQL` database instead of a `SQLite` file.
//! The documented curl + openssl client runs against a real server in the
//! workspace's `tests/server_auth.rs`.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use avap_server::auth::{self, Scope};
use avap_server::config::Settings;
use avap_server::signing_secrets::{self, SecretsKey};
use avap_server::{AppState, Location, ServerConfig, Store, app};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
const HELLO: &str = "addParam(name, who)\nmessage = \"Hello, \" + who\naddResult(message)\n";

fn unique(tag: &str) -> String {
    let mut random = [0u8; 5];
    getrandom::fill(&mut random).expect("random");
    format!("t{}{tag}", hex::encode(random))
}

async fn postgres_admin(sql: &str) {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(&format!("{POSTGRES}/test"))
        .await
        .expect("PostgreSQL");
    sqlx::query(sql).execute(&mut admin).await.expect(sql);
}

/// One registry database and data directory, which the nodes of a test
/// share as a cluster's nodes do.
struct Registry {
    dir: PathBuf,
    location: Location,
    postgres: Option<String>,
    store: Store,
}

impl Registry {
    async fn new(name: &str) -> Registry {
        let tag = unique(name);
        let dir = std::env::temp_dir().join(format!("avap-signing-{tag}"));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let (location, postgres) = if std::env::var("TEST_SERVER_DATABASE").as_deref() == Ok("postgres") {
            let database = format!("avap_it_signing_{tag}");
            postgres_admin(&format!("CREATE DATABASE {database}")).await;
            (Location::Postgres(format!("{POSTGRES}/{database}")), Some(database))
        } else {
            (Location::Sqlite(dir.join("avap.sqlite")), None)
        };
        let store = Store::connect(&location).await.expect("the registry");
        Registry {
            dir,
            location,
            postgres,
            store,
        }
    }

    /// A node on this registry, whose data directory is `data_dir`, with
    /// `settings` as `avap serve` would resolve them (keys required).
    async fn node(&self, data_dir: &std::path::Path, change: impl FnOnce(&mut Settings)) -> (AppState, Router) {
        let mut settings = Settings::defaults(data_dir.to_path_buf());
        settings.require_api_key = true;
        change(&mut settings);
        let config = ServerConfig {
            data_dir: Some(data_dir.to_path_buf()),
            ..settings.server_config()
        };
        let store = Store::connect(&self.location).await.expect("the registry");
        let key = avap_hostfns::artifact::generate_key().expect("a key");
        let state = AppState::new(config, store, key).expect("the state");
        state.start_background().await;
        (state.clone(), app(state))
    }

    /// A signing key, made as `avap apikey create --signed` makes one: `(key, secret)`.
    async fn signing_key(&self, scopes: &[Scope]) -> (String, String) {
        let (secrets_key, _) = SecretsKey::load_or_create(&self.dir).expect("the secrets key");
        let new = auth::generate().expect("a key");
        let secret = signing_secrets::generate_secret().expect("a secret");
        let sealed = secrets_key.seal(&new.id, &secret).expect("sealed");
        self.store
            .create_signing_api_key(&new.id, None, &new.hash, &auth::scopes_text(scopes), &sealed)
            .await
            .expect("stored");
        (new.key, secret)
    }

    async fn plain_key(&self, scopes: &[Scope]) -> String {
        let new = auth::generate().expect("a key");
        self.store
            .create_api_key(&new.id, None, &new.hash, &auth::scopes_text(scopes))
            .await
            .expect("stored");
        new.key
    }

    async fn close(self) {
        self.store.close().await;
        if let Some(database) = self.postgres {
            postgres_admin(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// The signature a client computes, written here from the documented
/// recipe (not with the server's own functions).
fn signature(secret: &str, method: &str, path: &str, timestamp: &str, body: &str) -> String {
    let canonical = format!(
        "{method}\n{path}\n{timestamp}\n{}",
        hex::encode(Sha256::digest(body.as_bytes()))
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(canonical.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// One request as the holder of `key`; `signing` = `(timestamp, signature)` headers.
fn request(method: &str, path: &str, key: &str, body: &str, signing: Option<(&str, &str)>) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some((timestamp, signature)) = signing {
        request = request
            .header("X-Avap-Timestamp", timestamp)
            .header("X-Avap-Signature", signature);
    }
    request.body(Body::from(body.to_owned())).expect("a request")
}

/// A request signed now with `secret`.
fn signed(method: &str, path: &str, key: &str, secret: &str, body: &str) -> Request<Body> {
    signed_at(now(), method, path, key, secret, body)
}

fn signed_at(at: u64, method: &str, path: &str, key: &str, secret: &str, body: &str) -> Request<Body> {
    let timestamp = at.to_string();
    let sig = signature(secret, method, path, &timestamp, body);
    request(method, path, key, body, Some((&timestamp, &sig)))
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    www_authenticate: Option<String>,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// A 401 with this `reason`, in the server's one error shape.
    #[track_caller]
    fn assert_refused(&self, reason: &str) {
        assert_eq!(self.status, StatusCode::UNAUTHORIZED, "{}", self.text);
        let error = &self.json()["error"];
        assert_eq!(
            (error["kind"].as_str(), error["reason"].as_str()),
            (Some("Unauthorized"), Some(reason)),
            "{}",
            self.text
        );
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.text
        );
        assert_eq!(self.www_authenticate.as_deref(), Some("Bearer"));
    }
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let www_authenticate = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body");
    Reply {
        status,
        www_authenticate,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn hello(who: &str) -> String {
    json!({"script": HELLO, "params": {"name": who}}).to_string()
}

#[tokio::test]
async fn signed_requests_run_and_each_failure_has_its_reason() {
    let registry = Registry::new("reasons").await;
    let (key, secret) = registry.signing_key(&[Scope::Execute, Scope::Jobs]).await;
    let (_state, node) = registry
        .node(&registry.dir, |s| {
            s.request_signing_window_s = 60;
            s.max_body_bytes = 4096;
        })
        .await;

    // Signed: runs. The query is part of what is signed.
    let r = send(
        &node,
        signed("POST", "/api/v1/execute", &key, &secret, &hello("Signed")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["result"]["message"], "Hello, Signed");
    let r = send(&node, signed("GET", "/api/v1/jobs?limit=5", &key, &secret, "")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Not signed, or the headers unusable.
    send(&node, request("POST", "/api/v1/execute", &key, &hello("A"), None))
        .await
        .assert_refused("signature_missing");
    let timestamp = now().to_string();
    send(
        &node,
        request(
            "POST",
            "/api/v1/execute",
            &key,
            &hello("A"),
            Some((&timestamp, "not-hex")),
        ),
    )
    .await
    .assert_refused("signature_malformed");
    let good = signature(&secret, "POST", "/api/v1/execute", &timestamp, &hello("A"));
    send(
        &node,
        request("POST", "/api/v1/execute", &key, &hello("A"), Some(("soon", &good))),
    )
    .await
    .assert_refused("timestamp_invalid");

    // Signed correctly, but too long ago or too far ahead (window: 60 s).
    for at in [now() - 120, now() + 120] {
        send(
            &node,
            signed_at(at, "POST", "/api/v1/execute", &key, &secret, &hello("Old")),
        )
        .await
        .assert_refused("timestamp_outside_window");
    }

    // Signed over something else: another body, another query, another secret.
    let expected = signature(&secret, "POST", "/api/v1/execute", &timestamp, &hello("Mallory"));
    let r = send(
        &node,
        request(
            "POST",
            "/api/v1/execute",
            &key,
            &hello("Mallory"),
            Some((&timestamp, &good)),
        ),
    )
    .await;
    r.assert_refused("signature_mismatch");
    assert!(
        !r.text.contains(&expected) && !r.text.contains(&secret),
        "nothing secret leaks: {}",
        r.text
    );
    let tampered_query = {
        let sig = signature(&secret, "GET", "/api/v1/jobs?limit=5", &timestamp, "");
        request("GET", "/api/v1/jobs?limit=500", &key, "", Some((&timestamp, &sig)))
    };
    send(&node, tampered_query).await.assert_refused("signature_mismatch");
    let (_, other_secret) = registry.signing_key(&[Scope::Execute]).await;
    send(
        &node,
        signed("POST", "/api/v1/execute", &key, &other_secret, &hello("B")),
    )
    .await
    .assert_refused("signature_mismatch");

    // The same signed request twice: the second is a replay.
    let body = hello("Once");
    let sig = signature(&secret, "POST", "/api/v1/execute", &timestamp, &body);
    let once = || request("POST", "/api/v1/execute", &key, &body, Some((&timestamp, &sig)));
    assert_eq!(send(&node, once()).await.status, StatusCode::OK);
    send(&node, once()).await.assert_refused("signature_replayed");

    // Refusals are counted by reason.
    let metrics = send(
        &node,
        Request::get("/api/v1/metrics").body(Body::empty()).expect("a request"),
    )
    .await;
    for (reason, count) in [
        ("signature_missing", 1),
        ("signature_malformed", 1),
        ("timestamp_invalid", 1),
        ("timestamp_outside_window", 2),
        ("signature_mismatch", 3),
        ("signature_replayed", 1),
    ] {
        let line = format!("avap_signed_requests_refused_total{{reason=\"{reason}\"}} {count}\n");
        assert!(metrics.text.contains(&line), "{line} in {}", metrics.text);
    }

    // The signature is checked before the scope: unsigned is 401, signed 403.
    send(&node, request("GET", "/api/v1/scripts", &key, "", None))
        .await
        .assert_refused("signature_missing");
    let r = send(&node, signed("GET", "/api/v1/scripts", &key, &secret, "")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

    // The body is read only up to max_body_bytes, as the handlers would.
    let large = json!({"script": HELLO, "params": {"name": "x".repeat(5000)}}).to_string();
    let r = send(&node, signed("POST", "/api/v1/execute", &key, &secret, &large)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
    assert_eq!(r.json()["error"]["kind"], "BodyTooLarge");

    // Keys without a secret work as before; signing headers change nothing.
    let plain = registry.plain_key(&[Scope::Execute]).await;
    let r = send(&node, request("POST", "/api/v1/execute", &plain, &hello("Plain"), None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = send(
        &node,
        request("POST", "/api/v1/execute", &plain, &hello("Plain"), Some(("x", "y"))),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // A revoked signing key is refused however well it signs.
    registry.store.revoke_api_key(&key[5..13]).await.expect("revoked");
    drop(node);
    let (_state, fresh) = registry.node(&registry.dir, |_| {}).await;
    let r = send(&fresh, signed("POST", "/api/v1/execute", &key, &secret, &hello("Gone"))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert!(r.json()["error"].get("reason").is_none(), "{}", r.text);
    registry.close().await;
}

#[tokio::test]
async fn replays_are_caught_across_nodes_through_redis() {
    let registry = Registry::new("redis").await;
    let (key, secret) = registry.signing_key(&[Scope::Execute]).await;
    let prefix = unique("signing");
    let redis = |s: &mut Settings| {
        s.redis_url = "redis://127.0.0.1:6379".to_owned();
        s.redis_prefix.clone_from(&prefix);
    };
    let (a_state, a) = registry.node(&registry.dir, redis).await;
    let (_b_state, b) = registry.node(&registry.dir, redis).await;
    assert_eq!(a_state.redis_health(), "ok", "the machine's Redis is needed");
    let body = hello("Cluster");
    let timestamp = now().to_string();
    let sig = signature(&secret, "POST", "/api/v1/execute", &timestamp, &body);
    let once = || request("POST", "/api/v1/execute", &key, &body, Some((&timestamp, &sig)));
    let r = send(&a, once()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // The other node has never seen it, but Redis has.
    send(&b, once()).await.assert_refused("signature_replayed");
    send(&a, once()).await.assert_refused("signature_replayed");
    registry.close().await;
}

#[tokio::test]
async fn the_secrets_key_file_is_read_when_needed_and_again_when_replaced() {
    let registry = Registry::new("nokey").await;
    let (key, secret) = registry.signing_key(&[Scope::Execute]).await;
    // Another data directory: the secrets key file was not copied there.
    let elsewhere = registry.dir.join("other-node");
    std::fs::create_dir_all(&elsewhere).expect("a directory");
    let (_state, node) = registry.node(&elsewhere, |_| {}).await;
    let r = send(&node, signed("POST", "/api/v1/execute", &key, &secret, &hello("X"))).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text);
    assert_eq!(
        r.json()["error"]["kind"],
        "InternalError",
        "the detail is logged, not sent"
    );
    // Once the file is there, the node reads it.
    std::fs::create_dir_all(elsewhere.join("keys")).expect("keys/");
    std::fs::copy(
        registry.dir.join(signing_secrets::SECRETS_KEY_FILE),
        elsewhere.join(signing_secrets::SECRETS_KEY_FILE),
    )
    .expect("copied");
    let r = send(&node, signed("POST", "/api/v1/execute", &key, &secret, &hello("Y"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // The file replaced (rotated) under a running node: keys sealed with
    // the new one work without a restart, the old ones no longer open.
    std::fs::remove_file(registry.dir.join(signing_secrets::SECRETS_KEY_FILE)).expect("removed");
    let (new_key, new_secret) = registry.signing_key(&[Scope::Execute]).await;
    std::fs::copy(
        registry.dir.join(signing_secrets::SECRETS_KEY_FILE),
        elsewhere.join(signing_secrets::SECRETS_KEY_FILE),
    )
    .expect("copied");
    let r = send(
        &node,
        signed("POST", "/api/v1/execute", &new_key, &new_secret, &hello("Z")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = send(&node, signed("POST", "/api/v1/execute", &key, &secret, &hello("W"))).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text);
    registry.close().await;
}

#[tokio::test]
async fn the_window_is_a_setting() {
    let registry = Registry::new("window").await;
    let (key, secret) = registry.signing_key(&[Scope::Execute]).await;
    let (_state, node) = registry.node(&registry.dir, |s| s.request_signing_window_s = 600).await;
    // Five minutes late: outside the default 300 s, inside 600 s.
    let r = send(
        &node,
        signed_at(now() - 400, "POST", "/api/v1/execute", &key, &secret, &hello("Late")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    registry.close().await;
}
