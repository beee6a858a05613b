//! A tiny blocking HTTP/1.1 client over [`TcpStream`] for `--server`: one
//! request per connection (`Connection: close`), the reply read to the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long a connect, a write or a read may take.
const TIMEOUT: Duration = Duration::from_mins(2);

/// A server base URL: `http://HOST[:PORT][/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `host:port`, for connecting and for the `Host` header.
    pub authority: String,
    /// The path prefix, without a trailing `/` (often empty).
    pub prefix: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--server {url:?}: expected an http:// URL"))?;
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() {
            return Err(format!("--server {url:?}: no host"));
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("/{prefix}")
        };
        Ok(BaseUrl { authority, prefix })
    }
}

/// A reply: its status and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `POST base+path` with a JSON body.
pub fn post_json(base: &BaseUrl, path: &str, body: &[u8]) -> Result<Reply, String> {
    let mut stream =
        TcpStream::connect(&base.authority).map_err(|e| format!("cannot connect to {}: {e}", base.authority))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let mut request = format!(
        "POST {}{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        base.prefix,
        base.authority,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream
        .write_all(&request)
        .and_then(|()| stream.flush())
        .map_err(|e| format!("cannot send the request to {}: {e}", base.authority))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("cannot read the reply from {}: {e}", base.authority))?;
    parse_reply(&raw)
}

/// Status line, headers and body of a raw HTTP/1.x reply.
pub fn parse_reply(raw: &[u8]) -> Result<Reply, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("malformed HTTP reply: no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("malformed HTTP status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(n) => return Err(format!("HTTP reply cut short: {} of {n} body bytes", rest.len())),
            None => rest.to_vec(),
        }
    };
    Ok(Reply { status, body })
}

/// The body of a `Transfer-Encoding: chunked` reply.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("malformed chunked body")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("malformed chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size {
            return Err("chunked body cut short".to_string());
        }
        body.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let b = BaseUrl::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!((b.authority.as_str(), b.prefix.as_str()), ("127.0.0.1:8080", ""));
        let b = BaseUrl::parse("http://example.test/avap/").unwrap();
        assert_eq!((b.authority.as_str(), b.prefix.as_str()), ("example.test:80", "/avap"));
        assert!(BaseUrl::parse("https://x").is_err());
        assert!(BaseUrl::parse("http:///x").is_err());
    }

    #[test]
    fn replies() {
        let r = parse_reply(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, b"{}".as_slice()));
        let r = parse_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!(r.body, b"abcde");
        let r = parse_reply(b"HTTP/1.0 500 X\r\n\r\nall").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, b"all".as_slice()));
        assert!(parse_reply(b"garbage").is_err());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
    }
}
