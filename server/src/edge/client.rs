//! The edge node's client for the registry read API
//! ([`registry_sync`](super::super::registry_sync)): hyper 1 over a socket
//! we open ourselves, HTTP/1.1, `https` through rustls with the webpki
//! roots. One connection per request: a sync is a list every few seconds
//! plus the artifacts that changed, not worth a pool.
//!
//! Every request has a connect timeout and an overall timeout, and every
//! response body a size cap, so a slow or hostile registry can stall or
//! bloat a sync but never the node. The outbound policy of scripts does
//! not apply: this URL is the operator's own setting.
//!
//! Errors name the registry by its URL with any password hidden; the API
//! key is never part of a message.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};
use url::Url;

use crate::http_client::innermost_cause;

use super::super::registry_sync::ScriptList;
use avap_hostfns::redact::url as redact_url;

/// What one request may take.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Opening the connection (TCP, then TLS).
    connect: Duration,
    /// The whole request, body included.
    request: Duration,
    /// The largest script list accepted.
    list_bytes: usize,
    /// The largest artifact accepted.
    artifact_bytes: usize,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        connect: Duration::from_secs(5),
        request: Duration::from_mins(1),
        // About 100,000 scripts.
        list_bytes: 16 << 20,
        artifact_bytes: 64 << 20,
    };
}

/// Parse and check a registry URL: `http(s)://HOST[:PORT][/PREFIX]`, no
/// query or fragment. The error says what is wrong, for the config message.
pub fn parse_registry_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("not a URL ({e}); write http://HOST:PORT"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the registry is reached over http:// or https://".to_owned());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL names no host; write http://HOST:PORT".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL carries credentials; put the registry's API key in registry_api_key instead".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("write the registry node's base URL, without a query or fragment".to_owned());
    }
    Ok(url)
}

/// Refuse to send `registry_api_key` in clear text: a registry reached over
/// plain `http://` with a key must be on this host (a loopback address
/// literal: `127.0.0.0/8` or `[::1]`, not a name a resolver could send
/// elsewhere). Anyone on the path of a plain `http://` connection reads the
/// key and can rewrite the script list; signatures stop foreign code, but
/// not a name pointed at another signed artifact or an older version.
pub fn check_transport(url: &Url, has_api_key: bool) -> Result<(), String> {
    if url.scheme() != "http" || !has_api_key || is_loopback(url) {
        return Ok(());
    }
    let host = url.host_str().unwrap_or_default();
    Err(format!(
        "plain http:// would send registry_api_key unencrypted to {host}, where anyone on the network path \
         can read it and rewrite the script list; write https://{host}… (the registry behind TLS with a \
         certificate from a public CA), or reach the registry through a tunnel that listens on this host \
         and write http://127.0.0.1:PORT"
    ))
}

/// Whether `url` names a loopback address literally.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// A reply to a list request.
#[derive(Debug)]
pub enum Listing {
    /// The generation we sent is still current (304).
    NotModified,
    Changed(ScriptList),
}

/// The client of one registry.
pub struct RegistryClient {
    base: Url,
    /// The base URL as logs and health show it (password hidden).
    shown: String,
    api_key: Option<String>,
    /// reqwest over rustls with the webpki roots; no redirects, no proxy.
    http: reqwest::Client,
    limits: Limits,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.shown)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    pub fn new(url: &str, api_key: Option<String>) -> Result<RegistryClient> {
        let base = parse_registry_url(url).map_err(|why| anyhow!("registry_url {}: {why}", redact_url(url)))?;
        let api_key = api_key.filter(|k| !k.is_empty());
        check_transport(&base, api_key.is_some()).map_err(|why| anyhow!("registry_url {}: {why}", redact_url(url)))?;
        let limits = Limits::DEFAULT;
        let http = crate::http_client::async_builder(limits.connect)
            .build()
            .context("cannot set up the registry client")?;
        Ok(RegistryClient {
            shown: redact_url(base.as_str().trim_end_matches('/')),
            base,
            api_key,
            http,
            limits,
        })
    }

    /// Whether the registry is reached over plain `http://` on another host
    /// (allowed without an API key, but the list can be rewritten on the way).
    pub fn clear_text_remote(&self) -> bool {
        self.base.scheme() == "http" && !is_loopback(&self.base)
    }

    /// The registry's URL, password hidden.
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    /// The current list, or [`Listing::NotModified`] when `generation` is still current.
    pub async fn list(&self, generation: Option<&str>) -> Result<Listing> {
        let if_none_match = generation.map(|g| format!("\"{g}\""));
        let reply = self
            .get(
                "api/v1/registry/scripts",
                if_none_match.as_deref(),
                self.limits.list_bytes,
            )
            .await?;
        match reply.status {
            StatusCode::NOT_MODIFIED => Ok(Listing::NotModified),
            StatusCode::OK => {
                let list: ScriptList = serde_json::from_slice(&reply.body).with_context(|| {
                    format!(
                        "the registry {} answered the script list with something else than its JSON \
                         (is registry_url the base URL of an `avap serve` node?)",
                        self.shown
                    )
                })?;
                Ok(Listing::Changed(list))
            }
            other => Err(self.refusal(other, &reply.body, "the script list")),
        }
    }

    /// The bytes of artifact `sha256` as the registry sent them (unchecked);
    /// `None` when the registry no longer has it.
    pub async fn artifact(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        let path = format!("api/v1/registry/artifacts/{sha256}");
        let reply = self.get(&path, None, self.limits.artifact_bytes).await?;
        match reply.status {
            StatusCode::OK => Ok(Some(reply.body)),
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(self.refusal(other, &reply.body, &format!("artifact {sha256}"))),
        }
    }

    /// An error for an unexpected status, saying what to do about the usual ones.
    fn refusal(&self, status: StatusCode, body: &[u8], what: &str) -> anyhow::Error {
        let registry = &self.shown;
        match status {
            StatusCode::UNAUTHORIZED => anyhow!(
                "the registry {registry} refused the API key (401) for {what}: set registry_api_key \
                 (AVAP_REGISTRY_API_KEY) to a key made on the registry node with \
                 `avap apikey create --scope registry`"
            ),
            StatusCode::FORBIDDEN => anyhow!(
                "the registry {registry} refused {what} (403): the API key needs the `registry` scope \
                 (`avap apikey create --scope registry` on the registry node)"
            ),
            StatusCode::CONFLICT => {
                anyhow!("{registry} is an edge node itself (409 for {what}); point registry_url at the registry node")
            }
            other => {
                let snippet: String = String::from_utf8_lossy(body).chars().take(200).collect();
                anyhow!("the registry {registry} answered {what} with HTTP {other}: {snippet}")
            }
        }
    }

    /// `GET <base>/<path>` within the request time limit, the body capped at `cap` bytes.
    async fn get(&self, path: &str, if_none_match: Option<&str>, cap: usize) -> Result<Reply> {
        let url = self.url(path);
        let shown = redact_url(url.as_str());
        let limit = self.limits.request;
        match tokio::time::timeout(limit, self.exchange(&url, &shown, if_none_match, cap)).await {
            Ok(reply) => reply,
            Err(_) => bail!("no complete answer from {shown} within {} ms", limit.as_millis()),
        }
    }

    /// `path` under the base URL, which may have a path prefix of its own.
    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let prefix = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{prefix}/{path}"));
        url
    }

    async fn exchange(&self, url: &Url, shown: &str, if_none_match: Option<&str>, cap: usize) -> Result<Reply> {
        let mut request = self
            .http
            .get(url.clone())
            .header(header::ACCEPT, "application/json, application/wasm");
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        if let Some(key) = &self.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .context("registry_api_key is not a valid header value (it must be an `avap_…` key)")?;
            value.set_sensitive(true);
            request = request.header(header::AUTHORIZATION, value);
        }
        let mut response = request.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!("cannot connect to {shown}: {}", innermost_cause(&e))
            } else {
                anyhow!("GET {shown} failed: {}", innermost_cause(&e))
            }
        })?;
        let too_large = || anyhow!("the answer of {shown} is larger than the limit of {cap} bytes; refused");
        if response.content_length().is_some_and(|n| n > cap as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| anyhow!("reading the answer of {shown} failed: {}", innermost_cause(&e)))?
        {
            if body.len() + chunk.len() > cap {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status: response.status(),
            body,
        })
    }
}

struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A registry that answers one connection with `reply` (or never, for
    /// `None`); the request head it got comes back from the handle.
    async fn registry_answering(reply: impl Into<Option<Vec<u8>>>) -> (String, tokio::task::JoinHandle<String>) {
        let reply: Option<Vec<u8>> = reply.into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).await.unwrap() == 1 {
                head.push(byte[0]);
            }
            match reply {
                Some(reply) => {
                    let _ = socket.write_all(&reply).await;
                    let _ = socket.shutdown().await;
                }
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
            String::from_utf8_lossy(&head).into_owned()
        });
        (addr, handle)
    }

    fn client(url: &str) -> RegistryClient {
        let mut client = RegistryClient::new(url, Some("avap_0123abcd_secret".into())).unwrap();
        client.limits = Limits {
            connect: Duration::from_millis(500),
            request: Duration::from_millis(500),
            list_bytes: 1024,
            artifact_bytes: 1024,
        };
        client
    }

    fn response(status: &str, headers: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\n{headers}Connection: close\r\n\r\n{body}").into_bytes()
    }

    #[tokio::test]
    async fn lists_send_the_key_and_generation_and_read_the_answer() {
        let body = r#"{"generation": "g2", "scripts": []}"#;
        let (url, seen) =
            registry_answering(response("200 OK", &format!("Content-Length: {}\r\n", body.len()), body)).await;
        match client(&url).list(Some("g1")).await.unwrap() {
            Listing::Changed(list) => assert_eq!(list.generation, "g2"),
            Listing::NotModified => panic!("expected a list"),
        }
        let head = seen.await.unwrap();
        assert!(head.starts_with("GET /api/v1/registry/scripts HTTP/1.1\r\n"), "{head}");
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains("authorization: bearer avap_0123abcd_secret\r\n"),
            "{head}"
        );
        assert!(head.contains("if-none-match: \"g1\"\r\n"), "{head}");

        let (url, _) = registry_answering(response("304 Not Modified", "", "")).await;
        assert!(matches!(
            client(&url).list(Some("g2")).await.unwrap(),
            Listing::NotModified
        ));
        let (url, _) = registry_answering(response("200 OK", "Content-Length: 5\r\n", "hello")).await;
        let err = format!("{:#}", client(&url).list(None).await.unwrap_err());
        assert!(err.contains("something else than its JSON"), "{err}");
    }

    #[tokio::test]
    async fn refusals_say_what_to_do() {
        for (status, want) in [
            ("401 Unauthorized", "avap apikey create --scope registry"),
            ("403 Forbidden", "needs the `registry` scope"),
            ("409 Conflict", "is an edge node itself"),
            ("500 Internal Server Error", "HTTP 500"),
        ] {
            let (url, _) = registry_answering(response(status, "Content-Length: 0\r\n", "")).await;
            let err = format!("{:#}", client(&url).list(None).await.unwrap_err());
            assert!(err.contains(want), "{status}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
        let (url, _) = registry_answering(response("404 Not Found", "Content-Length: 0\r\n", "")).await;
        assert_eq!(client(&url).artifact(&"a".repeat(64)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn slow_or_oversized_answers_are_cut_off() {
        // Declared too large, and streamed too large without a length.
        let (url, _) = registry_answering(response("200 OK", "Content-Length: 4096\r\n", "")).await;
        let err = format!("{:#}", client(&url).artifact("ab").await.unwrap_err());
        assert!(err.contains("larger than the limit of 1024 bytes"), "{err}");
        let big = "x".repeat(4096);
        let (url, _) = registry_answering(response("200 OK", "", &big)).await;
        let err = format!("{:#}", client(&url).artifact("ab").await.unwrap_err());
        assert!(err.contains("larger than the limit of 1024 bytes"), "{err}");
        // A registry that accepts and never answers.
        let (url, _) = registry_answering(None::<Vec<u8>>).await;
        let started = std::time::Instant::now();
        let err = format!("{:#}", client(&url).list(None).await.unwrap_err());
        assert!(
            err.contains("no complete answer") && err.contains("within 500 ms"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // Nobody listening.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let err = format!("{:#}", client(&url).list(None).await.unwrap_err());
        assert!(err.contains("cannot connect to"), "{err}");
    }

    #[test]
    fn registry_urls() {
        assert!(parse_registry_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_registry_url("https://registry.example/avap/").is_ok());
        assert!(parse_registry_url("ftp://x").unwrap_err().contains("http://"));
        assert!(parse_registry_url("127.0.0.1:8080").is_err());
        assert!(parse_registry_url("http://x/?a=1").unwrap_err().contains("query"));
        assert!(parse_registry_url("nope").unwrap_err().contains("not a URL"));
    }

    #[test]
    fn keys_travel_in_clear_text_only_to_this_host() {
        let key = || Some("avap_0123abcd_secret".to_owned());
        for remote in [
            "http://10.0.0.5:8080",
            "http://registry.example",
            "http://localhost:8080",
        ] {
            let err = format!("{:#}", RegistryClient::new(remote, key()).unwrap_err());
            assert!(
                err.contains("registry_api_key unencrypted") && err.contains("https://"),
                "{err}"
            );
            assert!(!err.contains("secret"), "{err}");
            assert!(
                RegistryClient::new(remote, None).is_ok(),
                "{remote}: no key, nothing to leak"
            );
        }
        for allowed in [
            "http://127.0.0.1:8080",
            "http://127.8.9.10",
            "http://[::1]:8080",
            "https://10.0.0.5",
        ] {
            assert!(RegistryClient::new(allowed, key()).is_ok(), "{allowed}");
        }
    }

    #[test]
    fn paths_join_under_a_prefix_and_keys_stay_hidden() {
        let c = RegistryClient::new("https://r.example/avap/", Some("avap_1234abcd_secret".into())).unwrap();
        assert_eq!(
            c.url("api/v1/registry/scripts").as_str(),
            "https://r.example/avap/api/v1/registry/scripts"
        );
        assert_eq!(c.shown_url(), "https://r.example/avap");
        let debug = format!("{c:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(
            parse_registry_url("https://u:pw@r.example/")
                .unwrap_err()
                .contains("registry_api_key")
        );
        let plain = RegistryClient::new("http://10.0.0.5:8080", None).unwrap();
        assert_eq!(
            plain.url("api/v1/registry/artifacts/ab").as_str(),
            "http://10.0.0.5:8080/api/v1/registry/artifacts/ab"
        );
    }
}
