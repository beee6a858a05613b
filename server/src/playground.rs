//! `GET /playground`: a page to write, check and run scripts in the browser.
//!
//! Everything it needs is in the binary: the page, its script and style
//! sheet (written here, no third-party front-end code, no CDN) are
//! `include_str!`ed from `server/playground/`; the language it highlights
//! (`language.json`: commands with their classes, built-ins, statement
//! words) is built from the command registry, so it never drifts from the
//! compiler; `examples.json` holds the example scripts with the request
//! each runs with. The page calls the normal API — `POST /api/v1/check`
//! as the user types, `POST /api/v1/execute` to run, `POST /api/v1/scripts`
//! to store — with the API key the user gives it, if any; the assets
//! themselves are open.
//!
//! Served only when [`ServerConfig::playground`](super::ServerConfig::playground)
//! is on (config key `playground`: `auto`, the default, turns it on only on
//! a loopback listener); otherwise `/playground` is a 404 like any unknown
//! path. Each asset has an `ETag` (a hash of its bytes) and
//! `Cache-Control: no-cache`, so browsers revalidate and get 304 until the
//! binary changes. The page's responses carry a content security policy of
//! their own ([`PAGE_CSP`]): scripts, styles, images and API calls from
//! this origin only, nothing inline.

use std::sync::LazyLock;

use avap_codegen::check::STATEMENT_WORDS;
use avap_hostfns::signature::{builtins, commands};
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The policy of the playground's responses (the API's is `default-src
/// 'none'`): its own files only, no inline script or style, no frames, no
/// forms posting elsewhere.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                            connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Marks a response as a playground asset, whose CSP is [`PAGE_CSP`]
/// ([`protect::security_headers`](super::protect::security_headers) reads it).
#[derive(Debug, Clone, Copy)]
pub struct PlaygroundAsset;

/// One file of the page.
struct Asset {
    content_type: &'static str,
    bytes: Vec<u8>,
    /// `"<hex>"`: the first 16 bytes of the SHA-256 of `bytes`.
    etag: String,
}

impl Asset {
    fn new(content_type: &'static str, bytes: Vec<u8>) -> Asset {
        let digest = Sha256::digest(&bytes);
        Asset {
            content_type,
            etag: format!("\"{}\"", hex::encode(&digest[..16])),
            bytes,
        }
    }

    /// The asset, or 304 when the browser holds this version.
    fn respond(&self, request: &HeaderMap) -> Response {
        let fresh = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| {
                // Weak comparison (RFC 9110 13.1.2): a proxy may have weakened the tag.
                tags.split(',')
                    .map(|t| t.trim().trim_start_matches("W/"))
                    .any(|t| t == self.etag || t == "*")
            });
        let headers = [
            (header::ETAG, HeaderValue::from_str(&self.etag).expect("hex in quotes")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ];
        let mut response = if fresh {
            (StatusCode::NOT_MODIFIED, headers).into_response()
        } else {
            (
                headers,
                [(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type))],
                self.bytes.clone(),
            )
                .into_response()
        };
        response.extensions_mut().insert(PlaygroundAsset);
        response
    }
}

/// An example script and the request it runs with.
#[derive(Debug, Serialize)]
pub struct Example {
    pub id: &'static str,
    pub title: &'static str,
    pub script: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    /// `name=value&…`, as in a URL.
    pub query: &'static str,
    /// The JSON body, as text (empty: none).
    pub body: &'static str,
    /// The fuel limit it runs with (0: the server's maximum).
    pub fuel: u64,
}

macro_rules! example {
    ($id:literal, $title:literal, $method:literal, $path:literal, $query:literal, $body:literal, $fuel:literal) => {
        Example {
            id: $id,
            title: $title,
            script: include_str!(concat!("../playground/examples/", $id, ".avap")),
            method: $method,
            path: $path,
            query: $query,
            body: $body,
            fuel: $fuel,
        }
    };
}

/// The examples menu, in order.
pub static EXAMPLES: &[Example] = &[
    example!("hello", "Hello, name (query)", "GET", "/", "name=Ada", "", 0),
    example!(
        "json_total",
        "Total of a JSON body",
        "POST",
        "/",
        "",
        r#"{"prices": [12.5, 7, 30]}"#,
        0
    ),
    example!("functions", "Functions", "GET", "/", "price=150&percent=20", "", 0),
    example!("errors", "try / exception and _status", "GET", "/", "age=forty", "", 0),
    example!("collections", "Lists, dicts and loops", "GET", "/", "", "", 0),
    example!("async", "go_async and gather", "GET", "/", "", "", 0),
    example!("endpoint", "registerEndpoint", "GET", "/greet", "name=Lin", "", 0),
    example!("fuel", "Hitting the fuel limit", "GET", "/", "", "", 2_000_000),
];

/// What the highlighter and the hover texts know of the language.
#[derive(Serialize)]
struct Language {
    /// `{name, class, summary, signature}` of every command.
    commands: Vec<CommandInfo>,
    builtins: Vec<&'static str>,
    /// Statement words (`if`, `startLoop`, `function`, …).
    statements: &'static [&'static str],
    /// Operator words.
    keywords: &'static [&'static str],
    constants: &'static [&'static str],
}

#[derive(Serialize)]
struct CommandInfo {
    name: &'static str,
    class: &'static str,
    summary: &'static str,
    /// `addParam(param, target)`, one per form, joined by ` | `.
    signature: String,
}

fn language() -> Language {
    Language {
        commands: commands()
            .iter()
            .map(|c| CommandInfo {
                name: c.name,
                class: c.capability.as_str(),
                summary: c.summary,
                signature: c
                    .forms
                    .iter()
                    .map(|form| {
                        let params: Vec<&str> = form.iter().map(|p| p.name).collect();
                        format!("{}({})", c.name, params.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(" | "),
            })
            .collect(),
        builtins: builtins().iter().map(|b| b.name).collect(),
        statements: STATEMENT_WORDS,
        keywords: &["and", "or", "not", "in", "is"],
        constants: &["True", "False", "None", "true", "false", "null"],
    }
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JSON: &str = "application/json";
const SVG: &str = "image/svg+xml";

/// The files under `/playground/`, by name.
static FILES: LazyLock<Vec<(&'static str, Asset)>> = LazyLock::new(|| {
    vec![
        (
            "playground.js",
            Asset::new(JS, include_bytes!("../playground/playground.js").to_vec()),
        ),
        (
            "highlight.js",
            Asset::new(JS, include_bytes!("../playground/highlight.js").to_vec()),
        ),
        (
            "playground.css",
            Asset::new(CSS, include_bytes!("../playground/playground.css").to_vec()),
        ),
        (
            "favicon.svg",
            Asset::new(SVG, include_bytes!("../playground/favicon.svg").to_vec()),
        ),
        ("language.json", json_asset(&language())),
        ("examples.json", json_asset(EXAMPLES)),
    ]
});

static PAGE: LazyLock<Asset> = LazyLock::new(|| Asset::new(HTML, include_bytes!("../playground/index.html").to_vec()));

/// A generated JSON file.
fn json_asset<T: Serialize + ?Sized>(value: &T) -> Asset {
    Asset::new(JSON, serde_json::to_vec(value).expect("static data always serializes"))
}

/// `GET /playground`: the page.
pub async fn page(headers: HeaderMap) -> Response {
    PAGE.respond(&headers)
}

/// `GET /playground/`: the page lives at `/playground` (its relative links
/// resolve from there).
pub async fn trailing_slash() -> Redirect {
    Redirect::permanent("/playground")
}

/// `GET /playground/{file}`: a script, style sheet, icon or JSON file of the page.
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    FILES
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, asset)| asset.respond(&headers))
        .ok_or(ApiError::NotFound {
            path: format!("/playground/{file}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_and_statement_word_is_in_the_language() {
        let language = serde_json::to_value(language()).unwrap();
        let names: Vec<&str> = language["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), commands().len());
        assert!(names.contains(&"addParam") && names.contains(&"RequestGet"));
        let add_param = &language["commands"][names.iter().position(|n| *n == "addParam").unwrap()];
        assert_eq!(add_param["signature"], "addParam(param, target)");
        assert_eq!(add_param["class"], "request");
        assert!(
            language["statements"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w == "startLoop")
        );
    }

    #[test]
    fn etags_are_quoted_hashes_that_follow_the_bytes() {
        let a = Asset::new(JS, b"let a = 1;".to_vec());
        let b = Asset::new(JS, b"let a = 2;".to_vec());
        assert_ne!(a.etag, b.etag);
        assert_eq!(a.etag.len(), 2 + 32);
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
    }
}
