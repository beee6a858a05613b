//! Every program of the conformance corpora lowers to a module that
//! `wasmparser` validates.

use std::path::Path;

use avap_codegen::check::NoIncludes;
use avap_codegen::{SourceFile, check_file, lower::lower};

fn corpus_files() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for dir in ["../../shared/conformance", "../tests/conformance", "tests/diagnostics"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "avap") {
                files.push(e.path());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_corpus_program_lowers_to_a_valid_module() {
    let files = corpus_files();
    assert!(files.len() > 40, "corpus not found: {files:?}");
    let mut lowered = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let checked = check_file(SourceFile::new(path.display().to_string(), text), &NoIncludes);
        if checked.error_count() > 0 {
            continue;
        }
        let module = lower(&checked);
        if let Err(e) = wasmparser::validate(&module.wasm) {
            panic!("{}: invalid module: {e}", path.display());
        }
        lowered += 1;
    }
    assert!(lowered > 40, "only {lowered} programs lowered");
}
