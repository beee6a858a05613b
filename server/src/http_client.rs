//! The server's own HTTP clients, all `reqwest` over rustls with the
//! webpki roots, no redirects and no proxy from the environment (they talk
//! to one server directly): [`async_builder`] for the edge's registry
//! client and the OTLP/HTTP exporter, [`Client`] (blocking, one deadline
//! for the whole exchange, a cap on the body read) for the CLI's tools
//! (`avap health`, `avap conformance --server`).
//!
//! Scripts' outbound calls (`RequestGet`, …) do not come here: their client
//! connects only to the address the outbound policy checked (hostfns).

use std::io::Read as _;
use std::time::Duration;

/// The base of every async client: `connect_timeout`, no redirects, no proxy.
pub fn async_builder(connect_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tcp_nodelay(true)
        .user_agent(concat!("avap/", env!("CARGO_PKG_VERSION")))
}

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// At most the cap given; empty when the head came but the body did not
    /// in time (the status is known).
    pub body: Vec<u8>,
}

/// Why there is no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// No connection: refused, unreachable, unresolvable.
    Connect(String),
    /// No answer within the deadline.
    Timeout,
    /// Anything else: not HTTP, a reset, a body over the cap.
    Failed(String),
}

/// A client with one deadline per exchange; build it once and reuse it
/// (building starts the blocking client's own runtime thread).
#[derive(Debug, Clone)]
pub struct Client {
    inner: reqwest::blocking::Client,
}

impl Client {
    pub fn new(timeout: Duration) -> Result<Client, HttpError> {
        let inner = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("avap/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpError::Failed(format!("cannot start the HTTP client: {e}")))?;
        Ok(Client { inner })
    }

    /// `GET url`.
    pub fn get(&self, url: &str, max_body: u64) -> Result<Reply, HttpError> {
        exchange(self.inner.get(url).header("accept", "application/json"), max_body)
    }

    /// `POST url` with a JSON body.
    pub fn post_json(&self, url: &str, body: Vec<u8>, max_body: u64) -> Result<Reply, HttpError> {
        let request = self
            .inner
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body);
        exchange(request, max_body)
    }
}

fn exchange(request: reqwest::blocking::RequestBuilder, max_body: u64) -> Result<Reply, HttpError> {
    let response = request.send().map_err(|e| classify(&e))?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    match response.take(max_body + 1).read_to_end(&mut body) {
        Ok(_) if body.len() as u64 > max_body => {
            return Err(HttpError::Failed(format!("the answer's body is over {max_body} bytes")));
        }
        Ok(_) => {}
        // The head came in time, the rest did not: the status is known.
        Err(_) => body.clear(),
    }
    Ok(Reply { status, body })
}

fn classify(e: &reqwest::Error) -> HttpError {
    if e.is_timeout() {
        HttpError::Timeout
    } else if e.is_connect() {
        HttpError::Connect(innermost_cause(e))
    } else {
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(inner) = cause {
            text = format!("{text}: {inner}");
            cause = inner.source();
        }
        HttpError::Failed(text)
    }
}

/// The innermost cause of an error: it says what happened ("Connection
/// refused", a certificate problem); the outer ones say where.
pub fn innermost_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}
