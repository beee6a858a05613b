//! `avap health`: ask a running `avap serve` whether it is healthy, for
//! container health checks and scripts. The distroless image has no curl,
//! so this is a plain HTTP/1.1 GET over a std `TcpStream`: no TLS, no
//! redirects, no async runtime.
//!
//! Exit 0 when the endpoint answers 200, 1 for anything else (another
//! status, no answer in time, a bad URL). Docker's `HEALTHCHECK` reserves
//! exit code 2, so unlike other commands a bad argument value is 1 too.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where `avap serve` answers with its default `listen`.
const DEFAULT_URL: &str = "http://127.0.0.1:8080/api/v1/health";
/// The path asked when the URL names none.
const HEALTH_PATH: &str = "/api/v1/health";
/// The most of an answer read: the health document is a few hundred bytes.
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

/// An `http://` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// `host:port` as given (also the `Host` header).
    authority: String,
    /// What to connect to: `host` without IPv6 brackets, and the port.
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
            println!("healthy: {} answered 200 ({state})", args.url);
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
    let deadline = Instant::now() + timeout;
    let late = || format!("{url} did not answer within {} ms", timeout.as_millis());
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .collect();
    let mut last_error = format!("{} resolves to no address", target.host);
    let mut stream = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = format!("cannot connect to {addr}: {e} (is avap serve listening there?)"),
        }
    }
    let mut stream = stream.ok_or(last_error)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: avap-health\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    let mut raw = Vec::new();
    match exchange(&mut stream, request.as_bytes(), deadline, &mut raw) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
            // A complete head is enough: the status is known.
            if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                return Err(late());
            }
        }
        Err(e) => return Err(format!("{url}: the connection failed: {e}")),
    }
    parse_answer(&raw).ok_or_else(|| {
        let shown = String::from_utf8_lossy(&raw[..raw.len().min(80)]).into_owned();
        format!("{url} did not answer with HTTP (got {shown:?})")
    })
}

/// Send `request` and read the answer into `raw` until the peer closes, the
/// answer passes [`MAX_ANSWER_BYTES`] or `deadline` passes (`TimedOut`).
fn exchange(stream: &mut TcpStream, request: &[u8], deadline: Instant, raw: &mut Vec<u8>) -> std::io::Result<()> {
    let left = || deadline.saturating_duration_since(Instant::now());
    // A zero timeout means "none" to std: never pass one.
    stream.set_write_timeout(Some(left().max(Duration::from_millis(1))))?;
    stream.write_all(request)?;
    let mut buf = [0u8; 4096];
    while u64::try_from(raw.len()).unwrap_or(u64::MAX) < MAX_ANSWER_BYTES {
        let wait = left();
        if wait.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(wait))?;
        match stream.read(&mut buf)? {
            0 => return Ok(()),
            n => raw.extend_from_slice(&buf[..n]),
        }
    }
    Ok(())
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

/// The status line and, for a JSON body, its `status` and first error message.
fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.lines();
    let status_line = lines.next()?;
    let mut words = status_line.split_whitespace();
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = words.next()?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let json: Option<Value> = serde_json::from_str(body.trim()).ok();
    let state = json.as_ref().and_then(|j| j["status"].as_str()).map(ToOwned::to_owned);
    let detail = json.as_ref().and_then(first_message);
    Some(Answer { status, state, detail })
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
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"status\":\"ok\",\"database\":{\"status\":\"ok\"}}";
        assert_eq!(
            parse_answer(ok),
            Some(Answer {
                status: 200,
                state: Some("ok".to_owned()),
                detail: None
            })
        );
        let down = b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"status\":\"unavailable\",\"database\":{\"status\":\"error\",\"message\":\"no answer\"}}";
        let answer = parse_answer(down).unwrap();
        assert_eq!((answer.status, answer.detail.as_deref()), (503, Some("no answer")));
        let plain = parse_answer(b"HTTP/1.0 404 Not Found\r\n\r\nnope").unwrap();
        assert_eq!((plain.status, plain.state), (404, None));
        assert_eq!(parse_answer(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_answer(b""), None);
    }
}
