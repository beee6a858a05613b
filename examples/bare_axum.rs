//! A bare axum "hello" server: the baseline of the HTTP load test (`bench/http.sh`, issue 5).
//!
//! It answers `POST /api/v1/execute` (and `GET /api/v1/health`) with the same JSON envelope shape
//! that `avap serve` returns for the hello-world script, using the same runtime flavour (tokio
//! multi-thread, default worker count) and axum 0.8, but with no middleware, no body parsing and
//! no script run. The gap between the two is what the server adds on top of axum itself.
//!
//! Usage: `cargo run --release --example bare_axum -- --listen 127.0.0.1:18081` (or a port alone).

use anyhow::{Context, Result, bail};
use axum::Json;
use axum::Router;
use axum::routing::{get, post};
use serde_json::{Value, json};

async fn execute() -> Json<Value> {
    Json(json!({"status": true, "elapsed": 0.0, "result": {"greeting": "Hello"}}))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

fn listen_addr() -> Result<String> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:18081".to_owned();
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            listen = args.next().context("--listen needs ADDR:PORT")?;
        } else if let Some(value) = arg.strip_prefix("--listen=") {
            value.clone_into(&mut listen);
        } else if arg.parse::<u16>().is_ok() {
            listen = format!("127.0.0.1:{arg}");
        } else {
            bail!("usage: bare_axum [--listen ADDR:PORT | PORT]");
        }
    }
    Ok(listen)
}

fn main() -> Result<()> {
    let listen = listen_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let app = Router::new()
            .route("/api/v1/execute", post(execute))
            .route("/api/v1/health", get(health));
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        println!("bare_axum listening on http://{}", listener.local_addr()?);
        axum::serve(listener, app).await.context("the server failed")
    })
}
