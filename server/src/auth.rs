//! API keys: `avap_<id>_<secret>`, where `id` is 8 hex digits and `secret`
//! 64 (32 random bytes). The database keeps only the key's SHA-256 (hex);
//! a presented key is looked up by its id and its hash compared in constant
//! time. Keys are never logged.
//!
//! [`require_key`] guards the routes: `admin` for `/api/v1/scripts*`,
//! `/api/v1/audit` and `/api/v1/debug/*`, `execute` for `/api/v1/execute*`, `/api/v1/check` and `/api/v1/run/*`,
//! `registry` (read-only, for edge nodes) for `/api/v1/registry/*`,
//! `jobs` for `/api/v1/jobs*` (`admin` implies the others); everything else (health, info, the
//! playground's static files, …) is open.
//! It tells handlers who is calling with a [`Caller`]. A request without
//! a key gets every scope when [`ServerConfig::allow_anonymous`] is on (by
//! default only on a loopback listener); a request with a key is always
//! checked, so a bad key is 401 even where anonymous access is allowed.
//!
//! A key with a signing secret (`avap apikey create --signed`) is not
//! enough by itself: its requests must carry a fresh HMAC signature
//! ([`super::request_signing`]), checked after the key and before its
//! scope, so an unsigned request with it is 401 whatever it asks for.
//!
//! [`ServerConfig::allow_anonymous`]: super::ServerConfig::allow_anonymous

use anyhow::{Result, anyhow};
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::AppState;
use super::config::Settings;
use super::error::ApiError;

const PREFIX: &str = "avap_";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scope {
    /// The script registry (and everything `execute` allows)
    Admin,
    /// Running and checking scripts: `/api/v1/execute*`, `/api/v1/check` and `/api/v1/run/*`
    Execute,
    /// Reading the registry for edge nodes: `/api/v1/registry/*` (no writes, no runs)
    Registry,
    /// Submitting, reading, cancelling and retrying jobs: `/api/v1/jobs*`
    Jobs,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Execute => "execute",
            Scope::Registry => "registry",
            Scope::Jobs => "jobs",
        }
    }

    /// `admin` implies every scope.
    fn granted_by(self, held: &str) -> bool {
        held.split(',')
            .map(str::trim)
            .any(|s| s == self.as_str() || s == "admin")
    }
}

/// Who a guarded request comes from: the id of the API key it presented, or
/// `None` for an anonymous request. [`require_key`] puts it in the request's
/// extensions (for handlers and the audit trail) and in the response's (for
/// the access log).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    pub key_id: Option<String>,
}

impl Caller {
    /// The audit trail's `actor`: the key id, or `anonymous`.
    pub fn actor(&self) -> &str {
        self.key_id.as_deref().unwrap_or("anonymous")
    }
}

/// A freshly made key: show `key` once, store `hash`.
#[derive(Debug)]
pub struct NewKey {
    pub id: String,
    pub key: String,
    pub hash: String,
}

/// Make a new random key.
pub fn generate() -> Result<NewKey> {
    // The seed of a fresh ed25519 key is 32 bytes from the OS RNG.
    let random = || {
        avap_hostfns::artifact::generate_key()
            .map(|k| k.to_bytes())
            .map_err(|e| anyhow!("cannot get random bytes: {e}"))
    };
    let id = hex::encode(&random()?[..4]);
    let key = format!("{PREFIX}{id}_{}", hex::encode(random()?));
    let hash = hash(&key);
    Ok(NewKey { id, key, hash })
}

/// Lowercase hex SHA-256 of a whole key.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The id part of a well-formed key.
pub(crate) fn key_id(key: &str) -> Option<&str> {
    let (id, secret) = key.strip_prefix(PREFIX)?.split_once('_')?;
    (id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty()).then_some(id)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The comma-separated, sorted, deduplicated form stored in the database.
pub fn scopes_text(scopes: &[Scope]) -> String {
    let mut scopes = scopes.to_vec();
    scopes.sort_unstable();
    scopes.dedup();
    scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

/// Whether `avap serve` with these settings lets requests without a key in:
/// `require_api_key` says no, `allow_anonymous` yes, and otherwise only
/// when every address `listen` names is a loopback one.
/// (An address that does not resolve says no; binding it then fails with its own message.)
pub fn anonymous_allowed(settings: &Settings) -> bool {
    if settings.require_api_key {
        return false;
    }
    if settings.allow_anonymous {
        return true;
    }
    super::config::listens_on_loopback_only(&settings.listen)
}

/// The scope a path needs, or `None` for an open one.
pub(crate) fn needed_scope(path: &str) -> Option<Scope> {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if under("/api/v1/scripts") || under("/api/v1/audit") || under("/api/v1/debug") || under("/api/v1/admin") {
        Some(Scope::Admin)
    } else if under("/api/v1/execute") || under("/api/v1/check") || path.starts_with("/api/v1/run/") {
        Some(Scope::Execute)
    } else if under("/api/v1/registry") {
        Some(Scope::Registry)
    } else if under("/api/v1/jobs") {
        Some(Scope::Jobs)
    } else {
        None
    }
}

/// The key a request presents: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
pub(crate) fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
        let (scheme, key) = value.trim().split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::unauthorized(
                "unsupported Authorization scheme; send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            ));
        }
        return Ok(Some(key.trim()));
    }
    match headers.get("x-api-key") {
        Some(value) => value
            .to_str()
            .map(|k| Some(k.trim()))
            .map_err(|_| ApiError::unauthorized("the X-API-Key header is not text")),
        None => Ok(None),
    }
}

/// Who `request` comes from, and the request back (a signed one with its
/// body read, to check the signature).
async fn authorize(state: &AppState, request: Request, needed: Scope) -> Result<(Caller, Request), ApiError> {
    let Some(key) = presented_key(request.headers())? else {
        return if state.config().allow_anonymous {
            Ok((Caller::default(), request))
        } else {
            Err(ApiError::unauthorized(
                "this server requires an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            ))
        };
    };
    let invalid = || ApiError::unauthorized("the API key is not valid or has been revoked");
    let id = key_id(key).ok_or_else(invalid)?;
    let record = state.api_key(id).await?.ok_or_else(invalid)?;
    if !constant_time_eq(hash(key).as_bytes(), record.key_hash.as_bytes()) || record.revoked_at.is_some() {
        return Err(invalid());
    }
    let request = match &record.signing_secret {
        // Boxed, like the key's database read: only signing keys need it,
        // and its future would make every request's middleware future
        // kilobytes larger.
        Some(sealed) => match Box::pin(state.signatures().check(state, &record.id, sealed, request)).await {
            Ok(request) => request,
            Err(e) => {
                if let ApiError::BadSignature(rejection) = &e {
                    state.metrics().signature_refused(rejection.reason.code());
                }
                return Err(e);
            }
        },
        None => request,
    };
    if needed.granted_by(&record.scopes) {
        Ok((
            Caller {
                key_id: Some(record.id),
            },
            request,
        ))
    } else {
        Err(ApiError::Forbidden {
            needed: needed.as_str(),
        })
    }
}

/// Middleware: the key check of every guarded route.
pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(needed) = needed_scope(request.uri().path()) else {
        return next.run(request).await;
    };
    match authorize(&state, request, needed).await {
        Ok((caller, mut request)) => {
            request.extensions_mut().insert(caller.clone());
            let mut response = next.run(request).await;
            response.extensions_mut().insert(caller);
            response
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        let new = generate().unwrap();
        assert_eq!(key_id(&new.key), Some(new.id.as_str()));
        assert_eq!(new.key.len(), PREFIX.len() + 8 + 1 + 64);
        assert_eq!(new.hash, hash(&new.key));
        assert_ne!(generate().unwrap().key, new.key);
        assert_eq!(key_id("avap_1234567g_x"), None);
        assert_eq!(key_id("avap_12345678_"), None);
        assert_eq!(key_id("nope"), None);
    }

    #[test]
    fn routes_need_their_scopes() {
        assert_eq!(needed_scope("/api/v1/scripts"), Some(Scope::Admin));
        assert_eq!(needed_scope("/api/v1/scripts/x/rollback"), Some(Scope::Admin));
        assert_eq!(needed_scope("/api/v1/execute/batch"), Some(Scope::Execute));
        assert_eq!(needed_scope("/api/v1/run/x"), Some(Scope::Execute));
        assert_eq!(needed_scope("/api/v1/run/x/openapi.json"), Some(Scope::Execute));
        assert_eq!(needed_scope("/api/v1/audit"), Some(Scope::Admin));
        assert_eq!(needed_scope("/api/v1/debug/profile"), Some(Scope::Admin));
        assert_eq!(needed_scope("/api/v1/admin/reload"), Some(Scope::Admin));
        assert_eq!(needed_scope("/api/v1/execute/file"), Some(Scope::Execute));
        assert_eq!(needed_scope("/api/v1/check"), Some(Scope::Execute));
        assert_eq!(needed_scope("/playground"), None);
        assert_eq!(needed_scope("/playground/playground.js"), None);
        assert_eq!(needed_scope("/api/v1/health"), None);
        assert_eq!(needed_scope("/api/v1/jobs"), Some(Scope::Jobs));
        assert_eq!(needed_scope("/api/v1/jobs/abc/retry"), Some(Scope::Jobs));
        assert_eq!(needed_scope("/api/v1/jobsx"), None);
        assert!(Scope::Jobs.granted_by("admin") && Scope::Jobs.granted_by("jobs"));
        assert!(!Scope::Jobs.granted_by("execute") && !Scope::Execute.granted_by("jobs"));
        assert_eq!(needed_scope("/api/v1/scriptsx"), None);
        assert!(Scope::Execute.granted_by("admin"));
        assert!(!Scope::Admin.granted_by("execute"));
        assert_eq!(needed_scope("/api/v1/registry/scripts"), Some(Scope::Registry));
        assert_eq!(needed_scope("/api/v1/registry/artifacts/ab"), Some(Scope::Registry));
        assert!(Scope::Registry.granted_by("admin") && Scope::Registry.granted_by("registry"));
        assert!(!Scope::Registry.granted_by("execute"));
        assert!(!Scope::Execute.granted_by("registry") && !Scope::Admin.granted_by("registry"));
        assert_eq!(
            scopes_text(&[Scope::Execute, Scope::Admin, Scope::Execute]),
            "admin,execute"
        );
    }
}
