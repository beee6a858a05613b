//! The check report: what `avap check --format json` prints and what
//! `POST /api/v1/check` answers, written once here so the two agree byte
//! for byte.
//!
//! ```json
//! {"ok": false, "files": [{"file": "hello.avap", "errors": 1, "warnings": 0,
//!   "diagnostics": [...], "capabilities": null, "imports": null}]}
//! ```
//!
//! `diagnostics` is [`diag::to_json`]. `imports` are the commands the
//! compiled module would import (its `avap.meta`, what `avap audit` lists),
//! each with its capability class and first line, and `capabilities` their
//! classes in [`Capability::ALL`] order; both are `null` while the file has
//! errors, since a program that does not compile imports nothing.

use avap_hostfns::signature::Capability;
use serde::Serialize;

use crate::check::{CheckOptions, CheckedProgram};
use crate::diag;
use crate::lower::imported_commands;

/// The whole report: `ok` when no file fails under the options.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub files: Vec<FileReport>,
}

/// One checked file.
#[derive(Debug, Serialize)]
pub struct FileReport {
    /// How the file was named to the checker (a path, or the name a
    /// request gave).
    pub file: String,
    pub errors: usize,
    pub warnings: usize,
    pub diagnostics: serde_json::Value,
    /// The capability classes the file's module would import.
    pub capabilities: Option<Vec<&'static str>>,
    /// The commands the file's module would import.
    pub imports: Option<Vec<ImportReport>>,
}

/// One imported command.
#[derive(Debug, Serialize)]
pub struct ImportReport {
    pub name: &'static str,
    pub class: &'static str,
    /// First line using it.
    pub line: u32,
}

impl FileReport {
    /// The report of `checked`, displayed as `file`.
    pub fn new(file: impl Into<String>, checked: &CheckedProgram) -> FileReport {
        let imports = (checked.error_count() == 0).then(|| imported_commands(checked));
        let capabilities = imports.as_ref().map(|imports| {
            Capability::ALL
                .into_iter()
                .filter(|class| imports.iter().any(|i| i.capability == *class))
                .map(Capability::as_str)
                .collect()
        });
        FileReport {
            file: file.into(),
            errors: checked.error_count(),
            warnings: checked.warning_count(),
            diagnostics: diag::to_json(&checked.sources, &checked.diagnostics),
            capabilities,
            imports: imports.map(|imports| {
                imports
                    .into_iter()
                    .map(|i| ImportReport {
                        name: i.name,
                        class: i.capability.as_str(),
                        line: i.line,
                    })
                    .collect()
            }),
        }
    }
}

impl CheckReport {
    /// The report of checked files, each with its display name.
    pub fn new<'a>(files: impl IntoIterator<Item = (String, &'a CheckedProgram)>, options: CheckOptions) -> Self {
        let mut ok = true;
        let files = files
            .into_iter()
            .map(|(name, checked)| {
                ok &= !checked.fails(options);
                FileReport::new(name, checked)
            })
            .collect();
        CheckReport { ok, files }
    }

    /// The report as printed: pretty JSON and a final newline.
    pub fn to_json_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a check report always serializes");
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{NoIncludes, check_file};
    use crate::span::SourceFile;

    fn report(source: &str, options: CheckOptions) -> serde_json::Value {
        let checked = check_file(SourceFile::new("t.avap", source), &NoIncludes);
        let text = CheckReport::new([("t.avap".to_owned(), &checked)], options).to_json_text();
        serde_json::from_str(&text).expect("the report is JSON")
    }

    #[test]
    fn a_clean_file_lists_its_imports_by_class() {
        let doc = report(
            "addParam(name, who)\nrandomString(\"[a-z]\", 4, tag)\naddResult(who)\n",
            CheckOptions::default(),
        );
        assert_eq!(doc["ok"], true);
        let file = &doc["files"][0];
        assert_eq!(file["file"], "t.avap");
        assert_eq!(file["capabilities"], serde_json::json!(["request", "random"]));
        assert_eq!(
            file["imports"],
            serde_json::json!([
                {"name": "addParam", "class": "request", "line": 1},
                {"name": "randomString", "class": "random", "line": 2},
                {"name": "addResult", "class": "request", "line": 3},
            ])
        );
    }

    #[test]
    fn a_file_with_errors_has_no_imports_and_warnings_fail_only_when_denied() {
        let doc = report("if(x, 1, =)\n", CheckOptions::default());
        assert_eq!(doc["ok"], false);
        assert_eq!(doc["files"][0]["errors"], 1);
        assert!(doc["files"][0]["capabilities"].is_null() && doc["files"][0]["imports"].is_null());
        assert_eq!(report("addvar(x, 1)\n", CheckOptions::default())["ok"], true);
        let denied = report("addvar(x, 1)\n", CheckOptions { deny_warnings: true });
        assert_eq!(denied["ok"], false);
        assert_eq!(denied["files"][0]["warnings"], 1);
    }
}
