//! Request signing: a request made with an API key that has a signing
//! secret ([`super::signing_secrets`], `avap apikey create --signed`) must
//! prove, with an HMAC, that it comes from the secret's holder and was made
//! just now — a key alone (leaked from a log, a proxy, a shell history) is
//! not enough, and a recorded request cannot be sent again.
//!
//! The client sends, besides the key:
//!
//! * `X-Avap-Timestamp`: the time of signing, in Unix seconds (decimal);
//! * `X-Avap-Signature`: hex HMAC-SHA256, keyed with the signing secret's
//!   text, of the [canonical string](canonical_string)
//!   `METHOD\nPATH?QUERY\nTIMESTAMP\nhex(sha256(body))`.
//!
//! [`Verifier::check`] answers 401 `Unauthorized` with a `reason` for each
//! way a request fails, in the order checked: `signature_missing`,
//! `signature_malformed`, `timestamp_invalid`, `timestamp_outside_window`
//! (more than `request_signing_window_s` from the server's clock, either
//! way), `signature_mismatch` (compared in constant time; the expected
//! signature is never sent or logged), `signature_replayed` (this signature
//! was accepted before, within the window). The cheap header checks come
//! before the body is read; the body is read whole only up to
//! `max_body_bytes` (413 beyond, as the handlers would answer), which the
//! handler would buffer anyway; the replay check comes last, so only
//! requests with a valid signature are remembered.
//!
//! Replays are caught cluster-wide through Redis (`SET
//! <prefix>:sig:<key id>:<signature> NX EX …`) when `redis_url` is set and
//! Redis answers; otherwise by this node alone ([`ReplayGuard`]: a bounded
//! set, 503 when it is full of signatures still inside the window rather
//! than forgetting one early). While Redis is unreachable a request replayed
//! to *another* node within the window is not caught.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use super::redis::{Redis, Reply};
use super::signing_secrets::{SecretsError, SecretsKey};

/// The header with the time of signing, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-avap-timestamp";
/// The header with the hex HMAC-SHA256 of the canonical string.
pub const SIGNATURE_HEADER: &str = "x-avap-signature";
/// The default of `request_signing_window_s`.
pub const DEFAULT_WINDOW: Duration = Duration::from_mins(5);
/// Signatures one node remembers at most: about 35 MB when full (a set
/// of 16-byte digests and a queue of expiries).
const MAX_REMEMBERED: usize = 1 << 19;

type HmacSha256 = Hmac<Sha256>;

/// Why a signed request was refused (401), as the error's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Missing,
    Malformed,
    BadTimestamp,
    OutsideWindow,
    Mismatch,
    Replayed,
}

impl Reason {
    /// The stable `reason` of the error body.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Missing => "signature_missing",
            Reason::Malformed => "signature_malformed",
            Reason::BadTimestamp => "timestamp_invalid",
            Reason::OutsideWindow => "timestamp_outside_window",
            Reason::Mismatch => "signature_mismatch",
            Reason::Replayed => "signature_replayed",
        }
    }
}

/// A refused signed request: the reason and what to tell the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

fn reject(reason: Reason, message: impl Into<String>) -> ApiError {
    ApiError::BadSignature(Rejection {
        reason,
        message: message.into(),
    })
}

/// `METHOD\nPATH?QUERY\nTIMESTAMP\nhex(sha256(body))`: the method as sent
/// (upper case), the request target's path and query exactly as sent
/// (percent-encoding untouched; `?QUERY` only when there is one), the
/// `X-Avap-Timestamp` value, the lowercase hex SHA-256 of the body bytes
/// (of nothing for a request without a body). No newline at the end.
pub fn canonical_string(method: &str, path_and_query: &str, timestamp: &str, body: &[u8]) -> String {
    format!(
        "{method}\n{path_and_query}\n{timestamp}\n{}",
        hex::encode(Sha256::digest(body))
    )
}

/// What the signing headers say, checked for shape only.
#[derive(Debug)]
struct Claimed {
    timestamp: u64,
    /// The header's text: the canonical string uses it as sent.
    timestamp_text: String,
    signature: [u8; 32],
}

/// The value of the one `name` header, `Ok(None)` when absent, `Err(())`
/// when repeated or not text.
fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => value.to_str().map(|v| Some(v.trim())).map_err(|_| ()),
        (Some(_), Some(_)) => Err(()),
    }
}

fn claimed(headers: &HeaderMap) -> Result<Claimed, ApiError> {
    let signature = match single_header(headers, SIGNATURE_HEADER) {
        Ok(Some(text)) => text,
        Ok(None) => {
            return Err(reject(
                Reason::Missing,
                "this API key signs its requests (it was created with `--signed`): send \
                 `X-Avap-Timestamp: <unix seconds>` and `X-Avap-Signature: <hex HMAC-SHA256 of \
                 METHOD\\nPATH?QUERY\\nTIMESTAMP\\nhex(sha256(body)) with the key's signing secret>`",
            ));
        }
        Err(()) => return Err(malformed()),
    };
    let mut bytes = [0u8; 32];
    if signature.len() != 64 || hex::decode_to_slice(signature, &mut bytes).is_err() {
        return Err(malformed());
    }
    let bad_timestamp = || {
        reject(
            Reason::BadTimestamp,
            "`X-Avap-Timestamp` must be one header holding the time of signing in Unix seconds \
             (decimal digits, e.g. the output of `date +%s`)",
        )
    };
    let text = single_header(headers, TIMESTAMP_HEADER)
        .map_err(|()| bad_timestamp())?
        .ok_or_else(bad_timestamp)?;
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_timestamp());
    }
    let timestamp = text.parse().map_err(|_| bad_timestamp())?;
    Ok(Claimed {
        timestamp,
        timestamp_text: text.to_owned(),
        signature: bytes,
    })
}

fn malformed() -> ApiError {
    reject(
        Reason::Malformed,
        "`X-Avap-Signature` must be one header holding the HMAC-SHA256 as 64 hex digits",
    )
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a node needs to check signatures: the window, the replay guard and
/// the key that opens the stored secrets.
#[derive(Debug)]
pub struct Verifier {
    window: Duration,
    replays: ReplayGuard,
    /// Where the secrets key is read from; `None` for a server without a
    /// data directory (an embedder's): signed keys then cannot be checked.
    data_dir: Option<PathBuf>,
    /// Read at the first signed request (again while it is missing, and
    /// when a secret was sealed by another key).
    secrets_key: Mutex<Option<Arc<SecretsKey>>>,
}

impl Verifier {
    pub fn new(window: Duration, data_dir: Option<PathBuf>, redis: Option<(Redis, String)>) -> Verifier {
        Verifier {
            window,
            replays: ReplayGuard::new(redis, window, MAX_REMEMBERED),
            data_dir,
            secrets_key: Mutex::default(),
        }
    }

    fn secrets_key(&self) -> Result<Arc<SecretsKey>, ApiError> {
        let mut cached = self.secrets_key.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = &*cached {
            return Ok(key.clone());
        }
        let dir = self.data_dir.as_deref().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "a signing API key was used, but this server has no data directory to read \
                 the API key secrets key from"
            ))
        })?;
        let key = Arc::new(SecretsKey::load(dir).map_err(|e| ApiError::Internal(e.into()))?);
        *cached = Some(key.clone());
        Ok(key)
    }

    /// The signing secret of `key_id`. Sealed by another key than the one
    /// held: the file is read again first (it may have been replaced, to
    /// rotate it, since it was read).
    fn open_secret(&self, key_id: &str, sealed: &str) -> Result<String, ApiError> {
        match self.secrets_key()?.open(key_id, sealed) {
            Err(SecretsError::WrongKey { .. }) => {
                *self.secrets_key.lock().unwrap_or_else(PoisonError::into_inner) = None;
                self.secrets_key()?.open(key_id, sealed)
            }
            opened => opened,
        }
        .map_err(|e| ApiError::Internal(e.into()))
    }

    /// Check the signature of `request`, made with API key `key_id` whose
    /// stored signing secret is `sealed`; the request back (its body read
    /// into memory) when it holds.
    pub async fn check(
        &self,
        state: &AppState,
        key_id: &str,
        sealed: &str,
        request: Request,
    ) -> Result<Request, ApiError> {
        let claimed = claimed(request.headers())?;
        let now = unix_now();
        let window = self.window.as_secs();
        if claimed.timestamp.abs_diff(now) > window {
            return Err(reject(
                Reason::OutsideWindow,
                format!(
                    "the timestamp {} is outside the window of {window} s around the server's time {now}: \
                     sign each request when sending it (and keep the client's clock in sync)",
                    claimed.timestamp
                ),
            ));
        }
        let secret = self.open_secret(key_id, sealed)?;
        let (parts, body) = request.into_parts();
        // The body under the router's `DefaultBodyLimit` (`max_body_bytes`):
        // no more than a handler would hold.
        let mut whole = Request::new(body);
        *whole.extensions_mut() = parts.extensions.clone();
        let body = super::extract::read_body(whole, state).await?;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let canonical = canonical_string(parts.method.as_str(), path, &claimed.timestamp_text, &body);
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(canonical.as_bytes());
        // `verify_slice` compares in constant time.
        if mac.verify_slice(&claimed.signature).is_err() {
            return Err(reject(
                Reason::Mismatch,
                format!(
                    "the signature does not match this request; the server signed the canonical string \
                     {canonical:?} with the key's signing secret (HMAC-SHA256, hex)"
                ),
            ));
        }
        // Kept until the timestamp has left the window for good.
        let forget_after = Duration::from_secs((claimed.timestamp + window).saturating_sub(now) + 1);
        if !self.replays.first_use(key_id, &claimed.signature, forget_after).await? {
            return Err(reject(
                Reason::Replayed,
                "this signature was already used: sign every request afresh. Timestamps are whole \
                 seconds, so the same method, path, query and body within one second sign the same: \
                 wait for the next second, or make the request differ (a query parameter)",
            ));
        }
        Ok(Request::from_parts(parts, Body::from(body)))
    }
}

/// The signatures accepted within the window: in Redis for the whole
/// cluster when it answers, else in this node's bounded set.
#[derive(Debug)]
pub struct ReplayGuard {
    shared: Option<(Redis, String)>,
    local: Mutex<Seen>,
    capacity: usize,
    /// How long this node remembers a signature: twice the window (a
    /// timestamp may be a whole window ahead of the clock) and a second.
    retention: Duration,
}

/// This node's signatures, by a digest of (key id, signature), and the
/// order to forget them in: every entry lives [`ReplayGuard::retention`],
/// so insertion order is expiry order.
#[derive(Debug, Default)]
struct Seen {
    digests: HashSet<[u8; 16]>,
    order: VecDeque<(Instant, [u8; 16])>,
}

impl ReplayGuard {
    fn new(shared: Option<(Redis, String)>, window: Duration, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            shared,
            local: Mutex::default(),
            capacity,
            retention: 2 * window + Duration::from_secs(1),
        }
    }

    /// Whether this is the first use of `signature` by `key_id`. Redis
    /// keeps it for `forget_after` (until its timestamp leaves the window);
    /// this node, for [`ReplayGuard::retention`]. Full of live signatures: 503.
    async fn first_use(&self, key_id: &str, signature: &[u8; 32], forget_after: Duration) -> Result<bool, ApiError> {
        if let Some((redis, prefix)) = &self.shared {
            let key = format!("{prefix}:sig:{key_id}:{}", hex::encode(signature));
            let seconds = forget_after.as_secs().max(1).to_string();
            match redis
                .call(&[b"SET", key.as_bytes(), b"1", b"NX", b"EX", seconds.as_bytes()])
                .await
            {
                Ok(Reply::Okay) => return Ok(true),
                Ok(Reply::SimpleString(s)) if s == "OK" => return Ok(true),
                Ok(Reply::Nil) => return Ok(false),
                Ok(other) => {
                    tracing::warn!(reply = ?other, "unexpected Redis reply to the replay check; checking on this node");
                }
                // Unreachable (marked down, logged once by the client): this
                // node's set until Redis is back.
                Err(_) => {}
            }
        }
        self.first_use_here(key_id, signature, Instant::now())
    }

    fn first_use_here(&self, key_id: &str, signature: &[u8; 32], now: Instant) -> Result<bool, ApiError> {
        let full = Sha256::new()
            .chain_update(key_id.as_bytes())
            .chain_update([0])
            .chain_update(signature)
            .finalize();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&full[..16]);
        let mut seen = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(&(expires, old)) = seen.order.front()
            && expires <= now
        {
            seen.order.pop_front();
            seen.digests.remove(&old);
        }
        if seen.digests.contains(&digest) {
            return Ok(false);
        }
        if seen.digests.len() >= self.capacity {
            // Forgetting a live signature early would let it be replayed.
            tracing::warn!(
                capacity = self.capacity,
                "the replay check holds its most signatures inside the window; refusing signed requests \
                 until some expire (with redis_url set, replays are checked in Redis instead)"
            );
            return Err(ApiError::ReplayCacheFull {
                capacity: self.capacity,
            });
        }
        seen.digests.insert(digest);
        seen.order.push_back((now + self.retention, digest));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hex signature of `canonical` with `secret` (what a client sends).
    fn sign(secret: &str, canonical: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(canonical.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn the_canonical_string_is_the_documented_one() {
        assert_eq!(
            canonical_string("POST", "/api/v1/run/hello?name=A%20B", "1700000000", b"{}"),
            "POST\n/api/v1/run/hello?name=A%20B\n1700000000\n\
             44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        // `printf 'GET\n/api/v1/jobs\n1700000000\n%s' "$(printf '' | sha256sum | cut -d' ' -f1)" \
        //   | openssl dgst -sha256 -hmac avapsig_test`
        let canonical = canonical_string("GET", "/api/v1/jobs", "1700000000", b"");
        assert!(canonical.ends_with("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
        assert_eq!(
            sign("avapsig_test", &canonical),
            "006021c1388def5c0fe28fd7b811f1f7d3af7f655b2c4b95b13679efa0831a94",
            "what openssl computes"
        );
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn reason(result: Result<Claimed, ApiError>) -> Reason {
        match result {
            Err(ApiError::BadSignature(rejection)) => rejection.reason,
            other => panic!("expected a signature rejection, got {other:?}"),
        }
    }

    #[test]
    fn signing_headers_are_checked_for_shape_first() {
        let good = "ab".repeat(32);
        assert_eq!(reason(claimed(&headers(&[]))), Reason::Missing);
        assert_eq!(
            reason(claimed(&headers(&[(TIMESTAMP_HEADER, "1700000000")]))),
            Reason::Missing
        );
        for bad in ["abc", &"zz".repeat(32), &"ab".repeat(33)] {
            assert_eq!(
                reason(claimed(&headers(&[(SIGNATURE_HEADER, bad), (TIMESTAMP_HEADER, "1")]))),
                Reason::Malformed,
                "{bad}"
            );
        }
        assert_eq!(
            reason(claimed(&headers(&[
                (SIGNATURE_HEADER, &good),
                (SIGNATURE_HEADER, &good)
            ]))),
            Reason::Malformed
        );
        for bad in ["", "-5", "1.5", "17e8", "9999999999999"] {
            assert_eq!(
                reason(claimed(&headers(&[(SIGNATURE_HEADER, &good), (TIMESTAMP_HEADER, bad)]))),
                Reason::BadTimestamp,
                "{bad:?}"
            );
        }
        assert_eq!(
            reason(claimed(&headers(&[(SIGNATURE_HEADER, &good)]))),
            Reason::BadTimestamp
        );
        let ok = claimed(&headers(&[
            (SIGNATURE_HEADER, &good.to_uppercase()),
            (TIMESTAMP_HEADER, "1700000000"),
        ]))
        .unwrap();
        assert_eq!((ok.timestamp, ok.signature), (1_700_000_000, [0xab; 32]));
    }

    #[test]
    fn this_node_remembers_signatures_for_the_window_and_refuses_when_full() {
        let guard = ReplayGuard::new(None, Duration::from_secs(10), 2);
        let start = Instant::now();
        assert!(guard.first_use_here("0000abcd", &[1; 32], start).unwrap());
        assert!(!guard.first_use_here("0000abcd", &[1; 32], start).unwrap(), "replayed");
        assert!(
            guard.first_use_here("0000abce", &[1; 32], start).unwrap(),
            "another key's"
        );
        let full = guard.first_use_here("0000abcd", &[2; 32], start).unwrap_err();
        assert_eq!(full.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        // Past twice the window the old ones are forgotten, and room is made.
        let later = start + Duration::from_secs(21);
        assert!(guard.first_use_here("0000abcd", &[2; 32], later).unwrap());
        assert!(guard.first_use_here("0000abcd", &[1; 32], later).unwrap());
    }
}
