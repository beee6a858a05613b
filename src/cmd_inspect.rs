//! `avap inspect`: what a compiled artifact contains and whether its
//! signature holds.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use avap_hostfns::artifact::{
    self, ArtifactError, ArtifactInfo, ImportMeta, META_SECTION, SIG_SECTION, SRCMAP_SECTION, SignatureStatus,
};
use avap_hostfns::signature::Capability;
use serde_json::json;

use crate::cmd_keys::load_trusted_keys;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Compiled artifact (.wasm)
    pub file: PathBuf,
    /// Trusted public key: a .pub file or a directory of them (repeatable);
    /// without it a signature can be listed but not checked
    #[arg(long = "trust", value_name = "PATH")]
    pub trust: Vec<PathBuf>,
    /// With json: one JSON object instead of text
    #[command(flatten)]
    pub output: crate::cli::OutputArgs,
}

/// The signature as `avap inspect` reports it.
enum SigReport {
    Valid(String),
    Unsigned,
    Untrusted(String),
    Bad(String),
}

impl SigReport {
    fn status(&self) -> &'static str {
        match self {
            SigReport::Valid(_) => "valid",
            SigReport::Unsigned => "unsigned",
            SigReport::Untrusted(_) => "untrusted",
            SigReport::Bad(_) => "bad",
        }
    }

    fn key_id(&self) -> Option<&str> {
        match self {
            SigReport::Valid(id) | SigReport::Untrusted(id) | SigReport::Bad(id) => Some(id),
            SigReport::Unsigned => None,
        }
    }
}

/// Exit 0 when the artifact is well formed (signed, unsigned or signed by an
/// untrusted key: the status is reported); 1 when it is malformed, its
/// signature is bad, or its imports disagree with its metadata.
pub fn inspect(args: &InspectArgs) -> Result<ExitCode> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let trusted = load_trusted_keys(&args.trust)?;
    let file = args.file.display().to_string();

    let info = match artifact::inspect(&bytes) {
        Ok(info) => info,
        Err(e) => {
            if args.output.json() {
                print_json(&json!({
                    "file": file,
                    "ok": false,
                    "size": bytes.len(),
                    "error": e.to_string(),
                }))?;
            } else {
                let text = format!(
                    "file:      {}\nsize:      {} bytes\nstatus:    REFUSED: {e}\n",
                    clean(&file),
                    bytes.len()
                );
                std::io::stdout().lock().write_all(text.as_bytes())?;
            }
            return Ok(ExitCode::FAILURE);
        }
    };

    let signature = match artifact::check_signature(&info, &trusted) {
        Ok(SignatureStatus::Valid { key_id }) => SigReport::Valid(key_id),
        Ok(SignatureStatus::Unsigned) => SigReport::Unsigned,
        Err(ArtifactError::UntrustedKey { key_id }) => SigReport::Untrusted(key_id),
        Err(_) => SigReport::Bad(info.signature.as_ref().map(|s| s.key_id.clone()).unwrap_or_default()),
    };
    let imports_error = artifact::check_imports(&info).err().map(|e| e.to_string());
    let ok = !matches!(signature, SigReport::Bad(_)) && imports_error.is_none();

    if args.output.json() {
        print_json(&to_json(&file, &info, &signature, imports_error.as_deref(), ok))?;
    } else {
        let text = to_text(&file, &info, &signature, imports_error.as_deref(), trusted.is_empty());
        std::io::stdout().lock().write_all(text.as_bytes())?;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_json(doc: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, doc)?;
    writeln!(out)?;
    Ok(())
}

/// Total size of the sections named `name`.
fn section_size(info: &ArtifactInfo, name: &str) -> usize {
    info.sections
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.range.len())
        .sum()
}

/// Imports grouped by capability class, classes in [`Capability::ALL`]
/// order (unknown classes last), commands by first line.
fn imports_by_class(info: &ArtifactInfo) -> Vec<(&str, Vec<&ImportMeta>)> {
    let rank = |class: &str| {
        Capability::ALL
            .iter()
            .position(|c| c.as_str() == class)
            .unwrap_or(usize::MAX)
    };
    let mut imports: Vec<&ImportMeta> = info.meta.imports.iter().collect();
    imports.sort_by(|a, b| {
        (rank(&a.capability), &a.capability, a.line, &a.name).cmp(&(
            rank(&b.capability),
            &b.capability,
            b.line,
            &b.name,
        ))
    });
    let mut groups: Vec<(&str, Vec<&ImportMeta>)> = Vec::new();
    for import in imports {
        match groups.last_mut() {
            Some((class, list)) if *class == import.capability => list.push(import),
            _ => groups.push((import.capability.as_str(), vec![import])),
        }
    }
    groups
}

fn to_json(
    file: &str,
    info: &ArtifactInfo,
    signature: &SigReport,
    imports_error: Option<&str>,
    ok: bool,
) -> serde_json::Value {
    let meta = &info.meta;
    let capabilities: serde_json::Map<String, serde_json::Value> = imports_by_class(info)
        .into_iter()
        .map(|(class, list)| (class.to_string(), list.iter().map(|i| i.name.as_str()).collect()))
        .collect();
    json!({
        "file": file,
        "ok": ok,
        "size": info.size,
        "sha256": info.sha256,
        "signed_size": info.signed_size,
        "signed_sha256": info.signed_sha256,
        "sections": info.sections.iter().map(|s| json!({
            "id": s.id,
            "name": s.name,
            "offset": s.range.start,
            "size": s.range.len(),
        })).collect::<Vec<_>>(),
        "format_version": meta.format_version,
        "compiler_version": meta.compiler_version,
        "source_name": meta.source_name,
        "source_sha256": meta.source_sha256,
        "signature": {
            "status": signature.status(),
            "key_id": signature.key_id(),
        },
        "imports_error": imports_error,
        "capabilities": capabilities,
        "imports": meta.imports,
        "endpoints": meta.endpoints,
        "functions": meta.functions,
        "params": meta.params,
    })
}

fn to_text(
    file: &str,
    info: &ArtifactInfo,
    signature: &SigReport,
    imports_error: Option<&str>,
    no_trusted_keys: bool,
) -> String {
    let meta = &info.meta;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!("file:        {}", clean(file)));
    let code = section_size(info, "code");
    let data = section_size(info, "data");
    let meta_size = section_size(info, META_SECTION);
    let srcmap_size = section_size(info, SRCMAP_SECTION);
    let sig_size = section_size(info, SIG_SECTION);
    let mut sizes = format!("code {code}, data {data}, meta {meta_size}, srcmap {srcmap_size}");
    if sig_size > 0 {
        let _ = write!(sizes, ", signature {sig_size}");
    }
    line(format!("size:        {} bytes ({sizes})", info.size));
    line(format!("sha256:      {}", info.sha256));
    if info.signed_size != info.size {
        line(format!(
            "signed part: {} bytes, sha256 {}",
            info.signed_size, info.signed_sha256
        ));
    }
    line(format!(
        "format:      {} (compiler {})",
        meta.format_version,
        clean(&meta.compiler_version)
    ));
    line(format!(
        "source:      {} (sha256 {})",
        clean(&meta.source_name),
        clean(&meta.source_sha256)
    ));
    line(match signature {
        SigReport::Valid(id) => format!("signature:   valid, by trusted key {id}"),
        SigReport::Unsigned => {
            "signature:   none (unsigned: refused unless the runtime allows unsigned artifacts)".into()
        }
        SigReport::Untrusted(id) if no_trusted_keys => {
            format!("signature:   by key {id}, not checked (pass --trust KEY.pub to check it)")
        }
        SigReport::Untrusted(id) => format!("signature:   by key {id}, which is NOT TRUSTED by the given keys"),
        SigReport::Bad(id) => format!("signature:   BAD (by key {id}): the artifact was modified after signing"),
    });
    if let Some(error) = imports_error {
        line(format!("imports:     MISMATCH: {error}"));
    }

    let groups = imports_by_class(info);
    line(if groups.is_empty() {
        "commands:    none".into()
    } else {
        "commands:".into()
    });
    let width = meta
        .imports
        .iter()
        .map(|i| clean(&i.name).chars().count())
        .max()
        .unwrap_or(0);
    for (class, imports) in &groups {
        line(format!("  {}:", clean(class)));
        for import in imports {
            line(format!("    {:width$}  line {}", clean(&import.name), import.line));
        }
    }

    line(if meta.endpoints.is_empty() {
        "endpoints:   none".into()
    } else {
        "endpoints:".into()
    });
    for e in &meta.endpoints {
        let mut text = format!("  {} {} -> {}", clean(&e.method), clean(&e.path), clean(&e.handler));
        if !e.description.is_empty() {
            let _ = write!(text, "  ({})", clean(&e.description));
        }
        line(text);
    }
    let functions: Vec<Cow<str>> = meta.functions.iter().map(|f| clean(f)).collect();
    line(format!(
        "functions:   {}",
        if functions.is_empty() {
            "none".into()
        } else {
            functions.join(", ")
        }
    ));
    out
}

/// Text from the artifact with control characters escaped, so a crafted
/// artifact cannot drive the terminal.
fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(
            s.chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_debug().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}
