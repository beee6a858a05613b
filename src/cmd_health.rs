//! `avap health`: ask a running `avap serve` whether it is healthy, for
//! container health checks and scripts. The distroless image has no curl,
//! so this is a plain HTTP GET through the CLI tools' client
//! ([`avap_server::http_client`]): no redirects, no proxy.
//!
//! Exit 0 when the endpoint answers 200, 1 for anything else (another
//! status, no answer in time, a bad URL). Docker's `HEALTHCHECK` reserves
//! exit code 2, so unlike other commands a bad argument value is 1 too.

use std::process::ExitCode;
use std::time::Duration;

use avap_server::http_client::{Client, HttpError};
use serde_json::Value;

/// Where `avap serve` answers with its default `listen`.
const DEFAULT_URL: &str = "http://127.0.0.1:8080/api/v1/health";
/// The path asked when the URL names none.
const HEALTH_PATH: &str = "/api/v1/health";
/// The most of an answer's body read: the health document is a few hundred bytes.
const MAX_ANSWER_BYTES: u64 = 64 << 10;

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The health endpoint (`http://HOST:PORT[/PATH]`; without a path, /api/v1/health)
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Give up after this many milliseconds (connecting, sending and reading together)
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,
}

/// An `http://` URL taken apart (checked here, for messages that say what
/// to do).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// `host:port` as given.
    authority: String,
    /// `host` without IPv6 brackets, and the port.
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

/// What the endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// The body's `"status"` (`ok`, `degraded`, `unavailable`), when it is our JSON.
    state: Option<String>,
    /// The first error message the body names (the database's, say).
    detail: Option<String>,
}

pub fn health(args: &HealthArgs) -> ExitCode {
    let timeout = Duration::from_millis(args.timeout_ms);
    match check(&args.url, timeout) {
        Ok(answer) if answer.status == 200 => {
            let state = answer.state.as_deref().unwrap_or("ok");
            let _ = outln!("healthy: {} answered 200 ({state})", args.url);
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            let state = answer.state.map(|s| format!(" ({s})")).unwrap_or_default();
            let detail = answer.detail.map(|d| format!(": {d}")).unwrap_or_default();
            eprintln!("unhealthy: {} answered {}{state}{detail}", args.url, answer.status);
            ExitCode::FAILURE
        }
        Err(problem) => {
            eprintln!("unhealthy: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// GET `url` within `timeout`.
fn check(url: &str, timeout: Duration) -> Result<Answer, String> {
    let target = parse_url(url)?;
    let full = format!("http://{}{}", target.authority, target.path);
    match Client::new(timeout).and_then(|client| client.get(&full, MAX_ANSWER_BYTES)) {
        Ok(reply) => Ok(answer(reply.status, &reply.body)),
        Err(HttpError::Timeout) => Err(format!("{url} did not answer within {} ms", timeout.as_millis())),
        Err(HttpError::Connect(e)) => Err(format!(
            "cannot connect to {}: {e} (is avap serve listening there?)",
            target.authority
        )),
        Err(HttpError::Failed(e)) => Err(format!("{url} did not answer with HTTP: {e}")),
    }
}

/// `http://host[:port][/path]`; the port defaults to 80, the path to the health endpoint.
fn parse_url(url: &str) -> Result<Target, String> {
    let Some(rest) = url.strip_prefix("http://") else {
        let why = if url.starts_with("https://") {
            "avap health speaks plain HTTP only; ask the server directly, not through the TLS proxy in front of it"
        } else {
            "expected http://HOST:PORT/api/v1/health"
        };
        return Err(format!("bad --url {url:?}: {why}"));
    };
    let (authority, path) = rest.find('/').map_or((rest, HEALTH_PATH), |i| rest.split_at(i));
    let bad = |why: &str| format!("bad --url {url:?}: {why}");
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("name a host, as in http://127.0.0.1:8080"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address needs its closing `]`"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => 80,
        Some(text) => text
            .parse()
            .map_err(|_| bad(&format!("`{text}` is not a port number")))?,
    };
    if host.is_empty() {
        return Err(bad("name a host, as in http://127.0.0.1:8080"));
    }
    Ok(Target {
        authority: authority.to_owned(),
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    })
}

/// The status and, for a JSON body, its `status` and first error message.
fn answer(status: u16, body: &[u8]) -> Answer {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    Answer {
        status,
        state: json.as_ref().and_then(|j| j["status"].as_str()).map(str::to_owned),
        detail: json.as_ref().and_then(first_message),
    }
}

/// The first `"message"` in a health document (the failing component's) or an API error.
fn first_message(json: &Value) -> Option<String> {
    match json {
        Value::Object(map) => map
            .get("message")
            .and_then(Value::as_str)
            .map(ToOwned::to_owned)
            .or_else(|| map.values().find_map(first_message)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(authority: &str, host: &str, port: u16, path: &str) -> Target {
        Target {
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/api/v1/health"),
            Ok(target("127.0.0.1:8080", "127.0.0.1", 8080, "/api/v1/health"))
        );
        assert_eq!(
            parse_url("http://localhost:9000"),
            Ok(target("localhost:9000", "localhost", 9000, HEALTH_PATH))
        );
        assert_eq!(
            parse_url("http://[::1]:8080/h?x=1"),
            Ok(target("[::1]:8080", "::1", 8080, "/h?x=1"))
        );
        assert_eq!(
            parse_url("http://example"),
            Ok(target("example", "example", 80, HEALTH_PATH))
        );
        let err = |url: &str| parse_url(url).unwrap_err();
        assert!(
            err("https://a:1/").contains("plain HTTP only"),
            "{}",
            err("https://a:1/")
        );
        assert!(err("127.0.0.1:8080").contains("expected http://"));
        assert!(err("http://a:http/").contains("`http` is not a port number"));
        assert!(err("http://a:70000/").contains("not a port number"));
        assert!(err("http:///x").contains("name a host"));
        assert!(err("http://u:pw@a/").contains("name a host"));
        assert!(err("http://[::1/").contains("closing `]`"));
    }

    #[test]
    fn answers() {
        let ok = answer(200, br#"{"status":"ok","database":{"status":"ok"}}"#);
        assert_eq!(
            ok,
            Answer {
                status: 200,
                state: Some("ok".to_owned()),
                detail: None
            }
        );
        let down = answer(
            503,
            br#"{"status":"unavailable","database":{"status":"error","message":"no answer"}}"#,
        );
        assert_eq!((down.status, down.detail.as_deref()), (503, Some("no answer")));
        let plain = answer(404, b"nope");
        assert_eq!((plain.status, plain.state), (404, None));
    }
}
