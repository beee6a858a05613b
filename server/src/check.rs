//! `POST /api/v1/check`: check a script without running it. The answer is
//! the document `avap check --format json` prints, byte for byte (both come
//! from `avap_codegen::report`): diagnostics with positions, and the
//! commands and capability classes the compiled module would import.
//! Editors and the playground ([`playground`](super::playground)) call it as
//! the user types.

use avap_codegen::check::{CheckOptions, check_file};
use avap_codegen::{CheckReport, SourceFile};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use super::extract::JsonBody;
use super::openapi::{ApiErrorBody, CheckReportBody};

/// The name diagnostics give an unnamed script, as for inline runs.
const DEFAULT_FILE: &str = "inline.avap";
/// The longest `file` name accepted, in characters.
const MAX_FILE_NAME: usize = 255;

/// The body of `POST /api/v1/check`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// AVAP source to check (not run, not stored).
    pub script: String,
    /// How diagnostics name the script (default `inline.avap`): 1 to 255
    /// characters, no control characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")]
    pub file: Option<String>,
    /// Treat warnings as errors, as `avap check --deny-warnings` (`ok` is false with any).
    #[serde(default)]
    pub deny_warnings: bool,
}

/// Check a script: its diagnostics, and what it would import.
///
/// The same JSON as `avap check --format json` for one file; `ok` says
/// whether it compiles. The check runs in the compile pool (a compile slot,
/// 503 `Overloaded` when none frees up in time), and includes are not
/// available (as for inline runs).
#[utoipa::path(
    post,
    path = "/api/v1/check",
    tag = "runs",
    request_body = CheckRequest,
    responses(
        (status = 200, description = "The check report, whether or not the script has errors (`ok`).", body = CheckReportBody),
        (status = 400, description = "An invalid request (`InvalidJson`, `InvalidRequest`).", body = ApiErrorBody),
        (status = 413, description = "The body (`BodyTooLarge`) or the script (`ScriptTooLarge`) is over the server's limit.", body = ApiErrorBody),
        (status = 503, description = "No compile slot became free in time (`Overloaded`).", body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
)]
pub async fn check(
    axum::extract::State(state): axum::extract::State<AppState>,
    JsonBody(body): JsonBody<CheckRequest>,
) -> Result<Response, ApiError> {
    let limit = state.config().max_script_bytes;
    if body.script.len() > limit {
        return Err(ApiError::ScriptTooLarge {
            size: body.script.len(),
            limit,
        });
    }
    let file = match body.file {
        None => DEFAULT_FILE.to_owned(),
        Some(name) if name.is_empty() || name.chars().count() > MAX_FILE_NAME || name.chars().any(char::is_control) => {
            return Err(ApiError::invalid(format!(
                "`file` is how diagnostics name the script: 1 to {MAX_FILE_NAME} characters, no control characters"
            )));
        }
        Some(name) => name,
    };
    let options = CheckOptions {
        deny_warnings: body.deny_warnings,
    };
    let script = body.script;
    // Includes name stored scripts, as for an inline run.
    let includes = state.resolve_includes(None, &script).await?;
    // Checking lowers a clean program to hold it to the compile budget:
    // CPU work that cannot yield, so it runs in the compile pool.
    let text = state
        .off_thread(move |_| {
            let checked = check_file(SourceFile::new(file.clone(), script), &includes);
            Ok(CheckReport::new([(file, &checked)], options).to_json_text())
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}
