//! Outbound HTTP: `RequestGet`, `RequestPost` and `functionAI` (spec §9).
//!
//! The client is hyper 1 over sockets this module opens itself: for every
//! hop (the first request and each redirect) it resolves the host, checks
//! every address against the [`OutboundPolicy`], and connects to an address
//! that passed — never to a name, so a DNS answer that changes between the
//! check and the connect cannot reach a refused address. A refused hop
//! fails before any packet is sent to the refused address. HTTPS is rustls
//! with the webpki root certificates.
//!
//! Per call: one timeout for the whole exchange redirects included
//! (`outbound_timeout_ms`), a response-size cap (`outbound_max_response_kb`)
//! and a redirect limit (`outbound_max_redirects`).
//!
//! Semantics fixed here:
//! * querystring and headers: a dict, a JSON object text (single quotes are
//!   accepted for double quotes), or `""`/`None` for none. Dict values are
//!   `str()`ed; a list value repeats the key; a `None` value is left out.
//!   The querystring is appended, URL-encoded, to any query the URL has.
//! * `RequestPost` body: a dict or list is sent as JSON; a string that parses
//!   as JSON (also after `'` → `"`) is sent as that JSON; any other string is
//!   sent as it is (no content type); `""`/`None` send no body.
//! * Responses: the body parsed as JSON when it is JSON, else its text.
//! * Redirects (301, 302, 303, 307, 308) are followed: 303, and 301/302
//!   after a POST, continue as a body-less GET; `Authorization` and
//!   `Cookie`, `Proxy-Authorization` headers are dropped when the redirect
//!   changes scheme, host or port; a script's `Proxy-Authorization` is
//!   never sent (no proxy is used).
//! * `RequestGet` raises `HttpError` for status ≥ 400 and any transport
//!   failure, `CapabilityDenied` for a refused address, `TimeoutError` when
//!   the timeout passes. `RequestPost` raises nothing: the target gets
//!   `{"error": "<message>"}` for every failure (its HTTP error statuses are
//!   returned as responses, as in the reference).
//! * `functionAI(prompt, target)` POSTs `{"prompt": "<text>"}` to the
//!   configured `ai_endpoint` through the same client and policy; the target
//!   gets the `response` (or `text`, `answer`, `output`, `content`,
//!   `completion`) string of a JSON object answer, else the decoded answer.
//! * Messages show a script's URLs without their password or credential
//!   query values ([`crate::redact::url`]), and the model endpoint as
//!   `the model endpoint (HOST:PORT)`, never its URL (which may hold a key).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use url::Url;

use super::EffectOutcome;
use super::breaker::{BreakerConfig, Breakers};
use super::policy::{AllowlistError, OutboundPolicy};
use crate::error::{ErrorKind, HostError};
use crate::memory::MemoryBudget;
use crate::redact::Secrets;
use crate::value::{Dict, Value};

/// Settings for outbound HTTP (server config keys `outbound_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundConfig {
    /// Allowlist: hosts, `host:port`, addresses and CIDR blocks that may be
    /// reached although they are not public.
    pub allow: Vec<String>,
    /// Timeout of one call (connect, TLS, redirects, whole body), in ms.
    pub timeout_ms: u64,
    /// Largest response body accepted, in KiB.
    pub max_response_kb: u64,
    /// Redirects followed per call.
    pub max_redirects: u32,
    /// Circuit breakers and bulkheads per host.
    pub breaker: BreakerConfig,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            allow: Vec::new(),
            timeout_ms: 30_000,
            max_response_kb: 4096,
            max_redirects: 5,
            breaker: BreakerConfig::default(),
        }
    }
}

/// Headers for a request made from the current `tracing` span: the W3C
/// trace context the server propagates (it knows the tracer; this crate
/// does not).
pub type TraceHeaders = Arc<dyn Fn() -> Vec<(HeaderName, HeaderValue)> + Send + Sync>;

/// The outbound HTTP client and its policy; one per process.
pub struct Outbound {
    policy: OutboundPolicy,
    trace_headers: Option<TraceHeaders>,
    breakers: Option<Arc<Breakers>>,
    timeout: Duration,
    max_response_bytes: usize,
    max_redirects: u32,
    tls: TlsConnector,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_redirects", &self.max_redirects)
            .field("trace_headers", &self.trace_headers.is_some())
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// Build the client. Fails when an allowlist entry is malformed.
    pub fn new(config: &OutboundConfig) -> Result<Outbound, AllowlistError> {
        let policy = OutboundPolicy::new(&config.allow)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Outbound {
            policy,
            trace_headers: None,
            breakers: Breakers::new(config.breaker),
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
            max_response_bytes: usize::try_from(config.max_response_kb.saturating_mul(1024)).unwrap_or(usize::MAX),
            max_redirects: config.max_redirects,
            tls: TlsConnector::from(Arc::new(tls)),
        })
    }

    /// Add `headers()` to every request (a header the script set wins).
    #[must_use]
    pub fn with_trace_headers(mut self, headers: TraceHeaders) -> Outbound {
        self.trace_headers = Some(headers);
        self
    }

    /// The breakers and bulkheads, when configured (for the metrics).
    pub fn breakers(&self) -> Option<&Breakers> {
        self.breakers.as_deref()
    }

    /// The policy in force.
    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }
}

/// The model endpoint of `functionAI` (config `ai_endpoint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiEndpoint {
    pub url: Url,
    /// The URL and the key it may carry (password, `?api_key=…`).
    secrets: Secrets,
}

impl AiEndpoint {
    /// Parse the endpoint URL (http or https).
    pub fn new(url: &str) -> Result<AiEndpoint, String> {
        let shown = crate::redact::url(url);
        let parsed = Url::parse(url).map_err(|e| format!("ai_endpoint {shown:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("ai_endpoint {shown:?} must be an http:// or https:// URL"));
        }
        let mut secrets = Secrets::default();
        secrets.add_url(url);
        secrets.add_url(parsed.as_str());
        Ok(AiEndpoint { url: parsed, secrets })
    }

    /// What no message may show: the URL as configured and its credentials.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }
}

/// Where a call goes, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    /// A URL the script named: shown without its credentials.
    Script,
    /// The configured model endpoint: shown by host and port only.
    Model,
}

impl Dest {
    fn show(self, url: &Url) -> String {
        match self {
            Dest::Script => crate::redact::url(url.as_str()),
            Dest::Model => format!(
                "the model endpoint ({}:{})",
                url.host_str().unwrap_or_default(),
                url.port_or_known_default().unwrap_or_default()
            ),
        }
    }
}

/// Run `RequestGet`, `RequestPost` or `functionAI`.
pub async fn call(
    name: &'static str,
    args: Vec<Value>,
    fx: &super::Effects,
    memory: MemoryBudget,
) -> Result<EffectOutcome, HostError> {
    let Some(client) = fx.http.as_deref() else {
        let e = HostError::script(
            ErrorKind::CapabilityDenied,
            format!(
                "{name}: outbound HTTP is not configured for this runtime; run it under `avap serve` or \
                 `avap run` (which configure the outbound policy), or pass Effects with an Outbound client"
            ),
        );
        return if name == "RequestPost" {
            Ok(error_dict(&e))
        } else {
            Err(e)
        };
    };
    match name {
        "RequestGet" => request_get(client, &args, memory).await.map(EffectOutcome::Value),
        "RequestPost" => match request_post(client, &args, memory).await {
            Ok(v) => Ok(EffectOutcome::Value(v)),
            Err(e @ HostError::Limit(_)) => Err(e),
            // A value, not an error: it passes the secrets filter here.
            Err(e) => Ok(error_dict(&fx.scrub(e))),
        },
        "functionAI" => function_ai(client, fx.ai.as_deref(), &args, memory)
            .await
            .map(EffectOutcome::Value),
        other => Err(HostError::script(
            ErrorKind::NotAvailable,
            format!("{other} is not an HTTP command"),
        )),
    }
}

fn error_dict(e: &HostError) -> EffectOutcome {
    let message = match e {
        HostError::Script(e) => e.message.clone(),
        HostError::Limit(l) => l.message.clone(),
    };
    let mut d = Dict::new();
    d.insert("error".into(), Value::Str(message));
    EffectOutcome::Value(Value::dict(d))
}

fn err(name: &str, kind: ErrorKind, message: impl fmt::Display) -> HostError {
    HostError::script(kind, format!("{name}: {message}"))
}

async fn request_get(client: &Outbound, args: &[Value], memory: MemoryBudget) -> Result<Value, HostError> {
    const NAME: &str = "RequestGet";
    let url = build_url(NAME, &args[0], &args[1])?;
    let headers = mapping(NAME, "headers", &args[2])?;
    let resp = client
        .fetch(NAME, Dest::Script, Method::Get, url, headers, None)
        .await?;
    if resp.status >= 400 {
        let snippet: String = String::from_utf8_lossy(&resp.body).chars().take(200).collect();
        return Err(err(
            NAME,
            ErrorKind::HttpError,
            format!(
                "GET {} returned HTTP {}: {snippet}",
                Dest::Script.show(&resp.url),
                resp.status
            ),
        ));
    }
    decode(&resp.body, memory)
}

async fn request_post(client: &Outbound, args: &[Value], memory: MemoryBudget) -> Result<Value, HostError> {
    const NAME: &str = "RequestPost";
    let url = build_url(NAME, &args[0], &args[1])?;
    let headers = mapping(NAME, "headers", &args[2])?;
    let body = post_body(&args[3]);
    let resp = client
        .fetch(NAME, Dest::Script, Method::Post, url, headers, body)
        .await?;
    decode(&resp.body, memory)
}

async fn function_ai(
    client: &Outbound,
    ai: Option<&AiEndpoint>,
    args: &[Value],
    memory: MemoryBudget,
) -> Result<Value, HostError> {
    const NAME: &str = "functionAI";
    let Some(ai) = ai else {
        return Err(err(
            NAME,
            ErrorKind::CapabilityDenied,
            "no model endpoint is configured; set `ai_endpoint` in the server config (or AVAP_AI_ENDPOINT) \
             and allow its host in `outbound_allow` if it is not public",
        ));
    };
    let prompt = crate::ops::template_text(&args[0]);
    let body = serde_json::to_vec(&serde_json::json!({ "prompt": prompt })).unwrap_or_default();
    let resp = client
        .fetch(
            NAME,
            Dest::Model,
            Method::Post,
            ai.url.clone(),
            Vec::new(),
            Some((body, Some("application/json"))),
        )
        .await?;
    if resp.status >= 400 {
        let snippet: String = String::from_utf8_lossy(&resp.body).chars().take(200).collect();
        return Err(err(
            NAME,
            ErrorKind::HttpError,
            format!(
                "{} returned HTTP {}: {snippet}",
                Dest::Model.show(&resp.url),
                resp.status
            ),
        ));
    }
    let answer = decode(&resp.body, memory)?;
    if let Value::Dict(d) = &answer {
        for key in ["response", "text", "answer", "output", "content", "completion"] {
            if let Some(Value::Str(s)) = d.get(key) {
                return Ok(Value::Str(s.clone()));
            }
        }
    }
    Ok(answer)
}

/// The URL with the querystring argument appended.
fn build_url(name: &str, url: &Value, query: &Value) -> Result<Url, HostError> {
    let text = crate::ops::template_text(url);
    let mut parsed = Url::parse(text.trim()).map_err(|e| {
        err(
            name,
            ErrorKind::ValueError,
            format!(
                "{:?} is not a valid URL ({e}); write an absolute http:// or https:// URL",
                crate::redact::url(&text)
            ),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(err(
            name,
            ErrorKind::ValueError,
            format!(
                "{:?}: only http:// and https:// URLs can be requested",
                crate::redact::url(&text)
            ),
        ));
    }
    let pairs = mapping(name, "querystring", query)?;
    if !pairs.is_empty() {
        parsed.query_pairs_mut().extend_pairs(pairs);
    }
    Ok(parsed)
}

/// A querystring/headers argument as ordered pairs (see the module docs).
fn mapping(name: &str, what: &str, v: &Value) -> Result<Vec<(String, String)>, HostError> {
    let dict = match v {
        Value::None => return Ok(Vec::new()),
        Value::Str(s) if s.trim().is_empty() => return Ok(Vec::new()),
        Value::Dict(d) => d.clone(),
        Value::Str(s) => match parse_json_lenient(s) {
            Some(serde_json::Value::Object(o)) => match Value::from_json(&serde_json::Value::Object(o)) {
                Value::Dict(d) => d,
                _ => Arc::default(),
            },
            _ => {
                return Err(err(
                    name,
                    ErrorKind::ValueError,
                    format!("{what} {s:?} is not a JSON object; pass a dict, a JSON object text or \"\""),
                ));
            }
        },
        other => {
            return Err(err(
                name,
                ErrorKind::TypeError,
                format!(
                    "{what} must be a dict, a JSON object text or \"\", not {}",
                    other.type_name()
                ),
            ));
        }
    };
    let mut pairs = Vec::with_capacity(dict.len());
    for (k, v) in dict.iter() {
        match v {
            Value::None => {}
            Value::List(items) => {
                for item in items.iter() {
                    pairs.push((k.clone(), crate::ops::template_text(item)));
                }
            }
            v => pairs.push((k.clone(), crate::ops::template_text(v))),
        }
    }
    Ok(pairs)
}

/// JSON text, also with single quotes standing for double quotes.
fn parse_json_lenient(s: &str) -> Option<serde_json::Value> {
    serde_json::from_str(s)
        .ok()
        .or_else(|| serde_json::from_str(&s.replace('\'', "\"")).ok())
}

/// The request body of `RequestPost` and its content type.
fn post_body(v: &Value) -> Option<(Vec<u8>, Option<&'static str>)> {
    let json = |j: &serde_json::Value| Some((serde_json::to_vec(j).unwrap_or_default(), Some("application/json")));
    match v {
        Value::None => None,
        Value::Str(s) if s.trim().is_empty() => None,
        Value::Str(s) => match parse_json_lenient(s) {
            Some(j) => json(&j),
            None => Some((s.clone().into_bytes(), None)),
        },
        other => json(&other.to_json()),
    }
}

/// A response body as a value: JSON when it parses, else text. Decoded
/// straight into values under the run's memory budget: a body within
/// `max_response_kb` can still be a JSON bomb many times its size.
fn decode(body: &[u8], mut memory: MemoryBudget) -> Result<Value, HostError> {
    let text = String::from_utf8_lossy(body);
    match crate::json::parse(&text, &mut memory) {
        Ok(v) => Ok(v),
        Err(crate::json::JsonError::Limit(hit)) => Err(hit.into()),
        Err(crate::json::JsonError::Invalid(_)) => {
            memory.claim_str(text.len())?;
            Ok(Value::Str(text.into_owned()))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// A final (non-redirect) response.
struct Response {
    status: u16,
    body: Vec<u8>,
    url: Url,
}

/// Aborts the spawned connection task when the call ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Outbound {
    /// One call: the request, its redirects and the whole body, under the
    /// per-call timeout.
    async fn fetch(
        &self,
        name: &str,
        dest: Dest,
        method: Method,
        url: Url,
        headers: Vec<(String, String)>,
        body: Option<(Vec<u8>, Option<&'static str>)>,
    ) -> Result<Response, HostError> {
        let shown = dest.show(&url);
        match tokio::time::timeout(self.timeout, self.follow(name, dest, method, url, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(err(
                name,
                ErrorKind::TimeoutError,
                format!(
                    "no complete response from {shown} within {} ms (outbound_timeout_ms)",
                    self.timeout.as_millis()
                ),
            )),
        }
    }

    async fn follow(
        &self,
        name: &str,
        dest: Dest,
        mut method: Method,
        mut url: Url,
        mut headers: Vec<(String, String)>,
        mut body: Option<(Vec<u8>, Option<&'static str>)>,
    ) -> Result<Response, HostError> {
        let mut hops = 0;
        loop {
            let (status, location, payload) = self.exchange(name, dest, method, &url, &headers, body.as_ref()).await?;
            let redirect = matches!(status, 301 | 302 | 303 | 307 | 308);
            let Some(location) = location.filter(|_| redirect) else {
                return Ok(Response {
                    status,
                    body: payload,
                    url,
                });
            };
            if hops >= self.max_redirects {
                return Err(err(
                    name,
                    ErrorKind::HttpError,
                    format!(
                        "{} redirected more than {} times (outbound_max_redirects)",
                        dest.show(&url),
                        self.max_redirects
                    ),
                ));
            }
            hops += 1;
            let next = url.join(&location).map_err(|e| {
                err(
                    name,
                    ErrorKind::HttpError,
                    format!("{} redirected to an invalid location: {e}", dest.show(&url)),
                )
            })?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(err(
                    name,
                    ErrorKind::HttpError,
                    format!(
                        "{} redirected to {}, which is not http or https",
                        dest.show(&url),
                        crate::redact::url(next.as_str())
                    ),
                ));
            }
            if status == 303 || (method == Method::Post && matches!(status, 301 | 302)) {
                method = Method::Get;
                body = None;
            }
            if !same_origin(&url, &next) {
                headers.retain(|(k, _)| !is_credential(k));
            }
            url = next;
        }
    }

    /// Resolve, check, pass the host's breaker and bulkhead, connect and
    /// exchange one request/response. Returns the status, the `Location`
    /// header and the body.
    async fn exchange(
        &self,
        name: &str,
        dest: Dest,
        method: Method,
        url: &Url,
        headers: &[(String, String)],
        body: Option<&(Vec<u8>, Option<&'static str>)>,
    ) -> Result<(u16, Option<String>, Vec<u8>), HostError> {
        let shown = dest.show(url);
        let host = url
            .host_str()
            .ok_or_else(|| err(name, ErrorKind::ValueError, format!("{shown} has no host")))?
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| err(name, ErrorKind::ValueError, format!("{shown} has no port")))?;
        // The host call's span (runtime `effects.rs`) names where it went
        // (after redirects, the last hop): host and port, never the path or query.
        let span = tracing::Span::current();
        span.record("server.address", host.as_str());
        span.record("server.port", i64::from(port));
        let addr = self.resolve(name, url, &host, port).await?;
        // The breaker and bulkhead of this host (see `breaker`).
        let permit = match &self.breakers {
            Some(breakers) => Some(
                breakers
                    .admit(&format!("{host}:{port}"))
                    .map_err(|refusal| err(name, ErrorKind::HttpError, refusal))?,
            ),
            None => None,
        };
        let result = self.talk(name, dest, method, url, &host, addr, headers, body).await;
        if let Some(permit) = permit {
            // The upstream failed: no connection, no answer, a 5xx, a body
            // over the cap. A script's bad header is not the host's fault.
            permit.finish(match &result {
                Ok((status, ..)) => *status >= 500,
                Err(HostError::Script(e)) => e.kind != ErrorKind::ValueError,
                Err(HostError::Limit(_)) => false,
            });
        }
        result
    }

    /// Connect to `addr` (checked) and exchange one request/response.
    #[allow(clippy::too_many_arguments)]
    async fn talk(
        &self,
        name: &str,
        dest: Dest,
        method: Method,
        url: &Url,
        host: &str,
        addr: SocketAddr,
        headers: &[(String, String)],
        body: Option<&(Vec<u8>, Option<&'static str>)>,
    ) -> Result<(u16, Option<String>, Vec<u8>), HostError> {
        let shown = dest.show(url);
        let transport =
            |e: &dyn fmt::Display| err(name, ErrorKind::HttpError, format!("{} {shown}: {e}", method.as_str()));
        let stream = TcpStream::connect(addr).await.map_err(|e| transport(&e))?;
        let _ = stream.set_nodelay(true);
        let mut request = hyper::Request::builder()
            .method(method.as_str())
            .uri(match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_owned(),
            })
            .header(
                hyper::header::HOST,
                match url.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_owned(),
                },
            )
            .header(
                hyper::header::USER_AGENT,
                concat!("avap-sandbox/", env!("CARGO_PKG_VERSION")),
            )
            .header(hyper::header::ACCEPT, "application/json, text/plain, */*");
        let user_sets = |h: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(h));
        if let Some((_, Some(ct))) = body
            && !user_sets("content-type")
        {
            request = request.header(hyper::header::CONTENT_TYPE, *ct);
        }
        for (k, v) in headers {
            let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) else {
                return Err(err(
                    name,
                    ErrorKind::ValueError,
                    format!("header {k:?}: {v:?} is not a valid HTTP header"),
                ));
            };
            // No proxy is ever used, so a script's Proxy-Authorization could
            // only leak a credential to the origin.
            if k == hyper::header::HOST
                || k == hyper::header::CONTENT_LENGTH
                || k == hyper::header::TRANSFER_ENCODING
                || k == hyper::header::PROXY_AUTHORIZATION
            {
                continue;
            }
            request = request.header(k, v);
        }
        for (k, v) in self.trace_headers.as_ref().map(|headers| headers()).unwrap_or_default() {
            if !user_sets(k.as_str()) {
                request = request.header(k, v);
            }
        }
        let payload = body.map(|(b, _)| Bytes::from(b.clone())).unwrap_or_default();
        let request = request.body(Full::new(payload)).map_err(|e| {
            err(
                name,
                ErrorKind::ValueError,
                format!("cannot build the request to {shown}: {e}"),
            )
        })?;
        let response = if url.scheme() == "https" {
            let server_name = match url.host() {
                Some(url::Host::Ipv4(ip)) => rustls::pki_types::ServerName::IpAddress(IpAddr::V4(ip).into()),
                Some(url::Host::Ipv6(ip)) => rustls::pki_types::ServerName::IpAddress(IpAddr::V6(ip).into()),
                _ => rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| transport(&e))?,
            };
            let tls = self.tls.connect(server_name, stream).await.map_err(|e| transport(&e))?;
            send(tls, request).await
        } else {
            send(stream, request).await
        };
        let (parts, incoming, _conn) = response.map_err(|e| transport(&e))?;
        let status = parts.status.as_u16();
        let location = parts
            .headers
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let cap = self.max_response_bytes;
        let too_large = || {
            err(
                name,
                ErrorKind::HttpError,
                format!(
                    "the response from {shown} is larger than {} KiB (outbound_max_response_kb)",
                    cap / 1024
                ),
            )
        };
        let declared = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cap as u64) {
            return Err(too_large());
        }
        let bytes = match Limited::new(incoming, cap).collect().await {
            Ok(c) => c.to_bytes().to_vec(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(e) => return Err(transport(&e)),
        };
        Ok((status, location, bytes))
    }

    /// The address to connect to: the first address of `host` that the
    /// policy allows. Refuses when none is allowed.
    async fn resolve(&self, name: &str, url: &Url, host: &str, port: u16) -> Result<SocketAddr, HostError> {
        let addrs: Vec<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
            Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
            _ => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| err(name, ErrorKind::HttpError, format!("cannot resolve {host}: {e}")))?
                .map(|a| a.ip())
                .collect(),
        };
        let mut refusal = None;
        for ip in &addrs {
            match self.policy.check(host, port, *ip) {
                Ok(()) => return Ok(SocketAddr::new(*ip, port)),
                Err(why) => refusal = refusal.or(Some(why)),
            }
        }
        Err(err(
            name,
            ErrorKind::CapabilityDenied,
            refusal.unwrap_or_else(|| format!("{host} resolved to no address")),
        ))
    }
}

/// Same scheme, host and port: credentials may follow the redirect.
fn same_origin(from: &Url, to: &Url) -> bool {
    from.scheme() == to.scheme()
        && from.host_str() == to.host_str()
        && from.port_or_known_default() == to.port_or_known_default()
}

/// Headers that carry credentials: dropped when a redirect leaves the
/// scheme, host and port they were given for.
fn is_credential(name: &str) -> bool {
    ["authorization", "cookie", "proxy-authorization"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

type Parts = (hyper::http::response::Parts, hyper::body::Incoming, AbortOnDrop);

/// HTTP/1.1 over `io`: the response head, its body stream and the task
/// driving the connection (aborted when dropped).
async fn send<S>(io: S, request: hyper::Request<Full<Bytes>>) -> Result<Parts, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let task = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    Ok((parts, body, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_accept_dicts_json_text_and_empty() {
        assert!(mapping("T", "q", &Value::None).unwrap().is_empty());
        assert!(mapping("T", "q", &Value::Str(" ".into())).unwrap().is_empty());
        let pairs = mapping("T", "q", &Value::Str("{'a': 1, 'b': [2, 3], 'c': null}".into())).unwrap();
        assert_eq!(
            pairs,
            [
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("b".into(), "3".into())
            ]
        );
        let e = mapping("T", "q", &Value::Str("nope".into())).unwrap_err();
        assert!(e.to_string().contains("not a JSON object"), "{e}");
        let e = mapping("T", "q", &Value::Int(3)).unwrap_err();
        assert!(e.to_string().contains("TypeError"), "{e}");
    }

    #[test]
    fn urls_get_the_querystring_appended() {
        let mut d = Dict::new();
        d.insert("post Id".into(), Value::Int(1));
        let url = build_url("T", &Value::Str("http://h/x?a=b".into()), &Value::dict(d)).unwrap();
        assert_eq!(url.as_str(), "http://h/x?a=b&post+Id=1");
        assert!(build_url("T", &Value::Str("ftp://h/".into()), &Value::None).is_err());
        assert!(build_url("T", &Value::Str("not a url".into()), &Value::None).is_err());
    }

    #[test]
    fn credentials_follow_only_same_origin_redirects() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(same_origin(&u("https://a.example/x"), &u("https://a.example:443/y")));
        assert!(!same_origin(&u("https://a.example/x"), &u("http://a.example:443/y")));
        assert!(!same_origin(&u("https://a.example/x"), &u("http://a.example/y")));
        assert!(!same_origin(&u("https://a.example/x"), &u("https://b.example/x")));
        assert!(!same_origin(&u("http://a.example/x"), &u("http://a.example:8080/x")));
        for h in ["Authorization", "cookie", "PROXY-AUTHORIZATION"] {
            assert!(is_credential(h), "{h}");
        }
        assert!(!is_credential("x-token"));
    }

    #[test]
    fn post_bodies() {
        assert_eq!(post_body(&Value::None), None);
        assert_eq!(post_body(&Value::Str(String::new())), None);
        assert_eq!(
            post_body(&Value::Str("{'a': 1}".into())),
            Some((b"{\"a\":1}".to_vec(), Some("application/json")))
        );
        assert_eq!(
            post_body(&Value::Str("a=1&b=2".into())),
            Some((b"a=1&b=2".to_vec(), None))
        );
        assert_eq!(
            post_body(&Value::list(vec![Value::Int(1)])),
            Some((b"[1]".to_vec(), Some("application/json")))
        );
    }

    #[test]
    fn bodies_decode_as_json_or_text() {
        let decode = |body: &[u8]| decode(body, MemoryBudget::unlimited()).expect("fits");
        assert_eq!(decode(b"[1, 2]"), Value::list(vec![Value::Int(1), Value::Int(2)]));
        assert_eq!(decode(b"hello"), Value::Str("hello".into()));
        let bomb = format!("[{}[]]", "[],".repeat(100_000));
        assert!(matches!(
            super::decode(bomb.as_bytes(), MemoryBudget::new(1 << 20)),
            Err(HostError::Limit(_))
        ));
    }

    #[tokio::test]
    async fn unconfigured_http_is_denied_but_post_stores_the_error() {
        let fx = super::super::Effects::default();
        let url = Value::Str("http://example.com/".into());
        let e = call(
            "RequestGet",
            vec![url.clone(), Value::None, Value::None],
            &fx,
            MemoryBudget::unlimited(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().starts_with("CapabilityDenied"), "{e}");
        let EffectOutcome::Value(Value::Dict(d)) = call(
            "RequestPost",
            vec![url, Value::None, Value::None, Value::None],
            &fx,
            MemoryBudget::unlimited(),
        )
        .await
        .unwrap() else {
            panic!("RequestPost stores a dict");
        };
        assert!(matches!(d.get("error"), Some(Value::Str(s)) if s.contains("not configured")));
    }

    #[tokio::test]
    async fn function_ai_without_endpoint_is_denied() {
        let fx = super::super::Effects {
            http: Some(Arc::new(Outbound::new(&OutboundConfig::default()).unwrap())),
            ..Default::default()
        };
        let e = call(
            "functionAI",
            vec![Value::Str("hi".into())],
            &fx,
            MemoryBudget::unlimited(),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("CapabilityDenied") && e.to_string().contains("ai_endpoint"),
            "{e}"
        );
    }
}
