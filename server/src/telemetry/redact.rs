//! The secrets filter of the log and trace pipelines.
//!
//! Every field value that reaches a log line or an exported span passes
//! through here, whoever logged it: redaction is a property of the
//! pipeline, not a habit of the call sites.
//!
//! * A field whose *name* marks it secret ([`is_sensitive`]: `authorization`,
//!   `api_key`, `token`, `password`, `cookie`, `params`, `body`, …) keeps its
//!   name and loses its value.
//! * Any other text value (messages included) is [`scrub`]bed: API-key-shaped
//!   `avap_…` words, `Bearer …` credentials, passwords in URLs and secret
//!   looking query parameters are replaced.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// What a redacted value becomes.
pub const REDACTED: &str = "[redacted]";

/// Words that make a field secret wherever they appear in its name
/// (`password_hash`, `x_auth_token`).
const ALWAYS_SECRET: &[&str] = &[
    "authorization",
    "apikey",
    "password",
    "passwd",
    "secret",
    "token",
    "cookie",
    "cookies",
    "credential",
    "credentials",
    "jwt",
];

/// Words that make a field secret when its name ends with them (`api_key`
/// is secret, `key_id` is not: an id names a key, it is not one).
const SECRET_LAST: &[&str] = &[
    "key",
    "auth",
    "pwd",
    "params",
    "param",
    "body",
    "query",
    "headers",
    "header",
    "signature",
    "source",
    "session",
];

/// Whether a field called `name` holds a secret. Names are split into
/// words at every character that is not a letter or a digit, so
/// `X-API-Key`, `x_api_key` and `http.request.header.authorization` all match.
pub fn is_sensitive(name: &str) -> bool {
    let mut last = "";
    for word in name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if ALWAYS_SECRET.iter().any(|s| word.eq_ignore_ascii_case(s)) {
            return true;
        }
        last = word;
    }
    SECRET_LAST.iter().any(|s| last.eq_ignore_ascii_case(s))
}

/// Secret-shaped parts of free text, each alternative a named group.
static SECRETS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        // An API key of this server: avap_<8 hex>_<secret>.
        r"(?P<key>avap_[0-9A-Fa-f]{8}_[0-9A-Za-z]+)",
        // An HTTP bearer credential.
        r"|(?P<bearer>(?i:bearer)\s+)[A-Za-z0-9._~+/=-]+",
        // The password of a URL: scheme://user:password@host. Greedy up to
        // the last `@` before the path: a password may contain `@`.
        r"|(?P<userinfo>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^/\s]+@",
        // A query parameter whose name says it is secret.
        // (The value stops at a quote: the URL may sit inside quoted text.)
        r#"|(?P<param>[?&][^=&\s]*(?i:key|token|secret|password|passwd|auth|signature|sig|session)[^=&\s]*=)[^&\s#"']+"#,
    ))
    .expect("the secrets pattern compiles")
});

/// `text` with every secret-looking part replaced. Borrows when there is
/// nothing to hide (the common case costs a scan, not an allocation).
pub fn scrub(text: &str) -> Cow<'_, str> {
    if !might_hold_secret(text) {
        return Cow::Borrowed(text);
    }
    SECRETS.replace_all(text, |c: &Captures<'_>| {
        if c.name("key").is_some() {
            REDACTED.to_owned()
        } else if let Some(bearer) = c.name("bearer") {
            format!("{}{REDACTED}", bearer.as_str())
        } else if let Some(userinfo) = c.name("userinfo") {
            format!("{}***@", userinfo.as_str())
        } else if let Some(param) = c.name("param") {
            format!("{}{REDACTED}", param.as_str())
        } else {
            REDACTED.to_owned()
        }
    })
}

/// A cheap pre-check before the regex: every pattern needs one of these.
fn might_hold_secret(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.contains("avap_")
        || bytes.contains(&b'@')
        || bytes.contains(&b'=')
        || bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"bearer"))
}

/// The value of field `name` as it may be shown: [`REDACTED`] for a secret
/// field, else `value` scrubbed.
pub fn field_text<'a>(name: &str, value: &'a str) -> Cow<'a, str> {
    if is_sensitive(name) {
        Cow::Borrowed(REDACTED)
    } else {
        scrub(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_password_with_at_signs_is_hidden_whole() {
        let scrubbed = scrub("connecting to postgres://u:p@ss@db.internal/app failed");
        assert_eq!(scrubbed, "connecting to postgres://u:***@db.internal/app failed");
    }

    #[test]
    fn secret_field_names() {
        for name in [
            "authorization",
            "Authorization",
            "api_key",
            "x-api-key",
            "X_API_KEY",
            "apikey",
            "key",
            "token",
            "access_token",
            "password",
            "db_password_hash",
            "client_secret",
            "cookie",
            "set_cookie",
            "params",
            "body",
            "request.body",
            "query",
            "headers",
            "http.request.header.authorization",
            "source",
        ] {
            assert!(is_sensitive(name), "{name}");
        }
        for name in [
            "key_id",
            "request_id",
            "message",
            "method",
            "path",
            "route",
            "status",
            "script.name",
            "latency_ms",
            "keys_total",
            "monkey",
        ] {
            assert!(!is_sensitive(name), "{name}");
        }
    }

    #[test]
    fn secrets_in_text_are_replaced() {
        let key = "avap_0123abcd_00ff00ff00ff00ff";
        assert_eq!(scrub(&format!("bad key {key}!")), "bad key [redacted]!");
        assert_eq!(
            scrub("Authorization: Bearer abc.DEF-123=, next"),
            "Authorization: Bearer [redacted], next"
        );
        assert_eq!(scrub("bearer   xyz"), "bearer   [redacted]");
        assert_eq!(
            scrub("postgres://avap:hunter2@db:5432/avap"),
            "postgres://avap:***@db:5432/avap"
        );
        assert_eq!(
            scrub("GET http://h/x?a=1&api_key=S3CRET&token=T0K#frag"),
            "GET http://h/x?a=1&api_key=[redacted]&token=[redacted]#frag"
        );
        assert_eq!(scrub("GET http://h/x?page=2&q=x"), "GET http://h/x?page=2&q=x");
        assert_eq!(
            scrub("ai_endpoint = \"http://h/ask?api_key=S3CRET\"  # file"),
            "ai_endpoint = \"http://h/ask?api_key=[redacted]\"  # file"
        );
        assert!(matches!(scrub("nothing to see here"), Cow::Borrowed(_)));
        assert_eq!(scrub("user@example.com wrote"), "user@example.com wrote");
    }

    #[test]
    fn field_values_by_name_then_by_content() {
        assert_eq!(field_text("password", "hunter2"), REDACTED);
        assert_eq!(field_text("message", "key avap_0123abcd_ff"), "key [redacted]");
        assert_eq!(field_text("path", "/api/v1/health"), "/api/v1/health");
    }
}
