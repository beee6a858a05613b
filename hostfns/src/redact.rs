//! Credentials kept out of text that leaves the process: error messages a
//! client sees, `--print-config`, config errors.
//!
//! * [`url`] shows a URL without its password or the values of query
//!   parameters that carry credentials. The one URL redactor of the
//!   workspace (the server's config and `avap audit` use it too).
//! * [`Secrets`] is what a deployment configured (connector tokens,
//!   database URLs, the model endpoint's URL): every occurrence of one in
//!   a message is replaced, whatever produced the message (a database
//!   server's error text, a remote body quoted in an error).

use std::borrow::Cow;
use std::fmt;

/// What a configured secret becomes in a message.
pub const REDACTED: &str = "[redacted]";

/// Words that mark a query parameter as a credential when its name
/// contains one (`api_key`, `sslpassword`, `access_token`, `X-Amz-Signature`).
const CREDENTIAL_PARAMS: &[&str] = &[
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "auth",
    "signature",
    "sig",
    "session",
];

/// `url` with its password shown as `***` (`scheme://user:***@host/…`) and
/// the value of every credential-looking query parameter as `***`
/// (`?sslpassword=***`, `?api_key=***`). Text without `://` (a bare path,
/// `sqlite:PATH`) comes back as it is.
pub fn url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{}", hide_credential_params(tail))
}

/// The path, query and fragment of a URL with credential parameter values hidden.
fn hide_credential_params(tail: &str) -> Cow<'_, str> {
    let Some(q) = tail.find('?') else {
        return Cow::Borrowed(tail);
    };
    let (path, after) = tail.split_at(q + 1);
    let (query, fragment) = match after.find('#') {
        Some(f) => after.split_at(f),
        None => (after, ""),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() && is_credential_param(name) => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    Cow::Owned(format!("{path}{}{fragment}", pairs.join("&")))
}

fn is_credential_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    CREDENTIAL_PARAMS.iter().any(|word| name.contains(word))
}

/// The credentials a URL carries: its password (as written and
/// percent-decoded) and the values of its credential query parameters.
fn url_credentials(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some((_, rest)) = url.split_once("://") else {
        return out;
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
    {
        out.push(password.to_owned());
        out.push(percent_decode(password));
    }
    if let Some((_, query)) = tail.split_once('?') {
        let query = query.split('#').next().unwrap_or_default();
        for (name, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
            if is_credential_param(name) {
                out.push(value.to_owned());
                out.push(percent_decode(value));
            }
        }
    }
    out
}

/// `%XX` escapes decoded (and `+` kept): how a password in a URL reaches
/// the server it is sent to, and so how that server may quote it.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Secrets a deployment configured, replaced by [`REDACTED`] wherever they
/// occur in a message. `Debug` shows how many there are, never them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    /// Longest first, so a secret that contains another is replaced whole.
    words: Vec<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets").field("count", &self.words.len()).finish()
    }
}

impl Secrets {
    /// Secrets shorter than this are not searched for: they would garble
    /// every message (a one-letter password matches everywhere) and are no
    /// credential worth the name. Messages name things without their
    /// secrets in the first place; this is the second line.
    pub const MIN_LEN: usize = 4;

    /// Add one secret (a token, an API key).
    pub fn add(&mut self, secret: &str) {
        let secret = secret.trim();
        if secret.chars().count() < Self::MIN_LEN || self.words.iter().any(|w| w == secret) {
            return;
        }
        let at = self.words.partition_point(|w| w.len() >= secret.len());
        self.words.insert(at, secret.to_owned());
    }

    /// Add a URL as written, what it carries (password, credential query
    /// values) and, for a file database (`sqlite:PATH`, a bare path), the path.
    pub fn add_url(&mut self, url: &str) {
        self.add(url);
        for credential in url_credentials(url) {
            self.add(&credential);
        }
        if !url.contains("://") {
            let path = url
                .strip_prefix("sqlite:")
                .or_else(|| url.strip_prefix("file:"))
                .unwrap_or(url);
            self.add(path.split('?').next().unwrap_or(path));
        }
    }

    /// `text` with every secret replaced by [`REDACTED`]; borrowed when
    /// none occurs.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for word in &self.words {
            if out.contains(word.as_str()) {
                out = Cow::Owned(out.replace(word.as_str(), REDACTED));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_passwords_and_credential_parameters() {
        assert_eq!(url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(
            url("postgres://u:p@ss@db.internal/app"),
            "postgres://u:***@db.internal/app"
        );
        assert_eq!(url("redis://:hunter2@cache:6380/1"), "redis://:***@cache:6380/1");
        assert_eq!(url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            url("postgres://h/db?user=u&password=pw&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            url("https://ai.example/v1?api_key=S3CRET&model=m#x"),
            "https://ai.example/v1?api_key=***&model=m#x"
        );
        assert_eq!(url("https://u:pw@h?token=t"), "https://u:***@h?token=***");
        assert_eq!(url("sqlite:/a:b@c"), "sqlite:/a:b@c");
        assert_eq!(url("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(url("/plain/path.sqlite"), "/plain/path.sqlite");
    }

    #[test]
    fn configured_secrets_are_replaced_wherever_they_occur() {
        let mut s = Secrets::default();
        s.add("tok_abcdef");
        s.add_url("postgres://avap:p%40ss%20word@db:5432/app?sslpassword=keypass");
        s.add_url("sqlite:/var/lib/avap/app.sqlite");
        s.add("pw");
        let text = "tok_abcdef failed: password for p@ss word rejected (postgres://avap:p%40ss%20word@db:5432/app?sslpassword=keypass) keypass /var/lib/avap/app.sqlite pw";
        assert_eq!(
            s.scrub(text),
            "[redacted] failed: password for [redacted] rejected ([redacted]) [redacted] [redacted] pw"
        );
        assert!(matches!(s.scrub("nothing here"), Cow::Borrowed(_)));
        assert!(!format!("{s:?}").contains("tok_"), "{s:?}");
    }
}
