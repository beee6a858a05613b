//! `--server`: where the cases go, and the request that takes each there
//! (through the CLI tools' client, [`avap_server::http_client`]).

use std::sync::OnceLock;
use std::time::Duration;

use avap_server::http_client::{Client, HttpError};

/// How long one case's exchange may take.
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
pub use avap_server::http_client::Reply;

/// The most of a reply read (a response envelope is far smaller).
const MAX_REPLY_BYTES: u64 = 64 << 20;

/// The client every case's request goes through, built on first use.
static CLIENT: OnceLock<Result<Client, HttpError>> = OnceLock::new();

/// `POST base+path` with a JSON body.
pub fn post_json(base: &BaseUrl, path: &str, body: &[u8]) -> Result<Reply, String> {
    let url = format!("http://{}{}{path}", base.authority, base.prefix);
    let client = CLIENT.get_or_init(|| Client::new(TIMEOUT)).as_ref();
    let reply = client
        .map_err(Clone::clone)
        .and_then(|client| client.post_json(&url, body.to_vec(), MAX_REPLY_BYTES));
    reply.map_err(|e| match e {
        HttpError::Connect(e) => format!("cannot connect to {}: {e}", base.authority),
        HttpError::Timeout => format!("{url} did not answer within {} s", TIMEOUT.as_secs()),
        HttpError::Failed(e) => format!("{url}: {e}"),
    })
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
}
