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
        if let Err(e) = avap_hostfns::artifact::validate(&module.wasm) {
            panic!("{}: invalid module: {e}", path.display());
        }
        lowered += 1;
    }
    assert!(lowered > 40, "only {lowered} programs lowered");
}

/// The memory type of a lowered module.
fn memory_of(wasm: &[u8]) -> wasmparser::MemoryType {
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::MemorySection(reader) = payload.unwrap() {
            return reader.into_iter().next().expect("one memory").unwrap();
        }
    }
    panic!("no memory section");
}

fn lowered(source: &str) -> Vec<u8> {
    let checked = check_file(SourceFile::new("memory.avap", source), &NoIncludes);
    assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
    lower(&checked).wasm
}

#[test]
fn linear_memory_is_sized_in_bytes_rounded_to_4_kib() {
    // Format version 4: one-byte pages, a fixed size, whole host pages, so
    // the pooling allocator resets 4 KiB after a small run, not 64 KiB.
    let small = memory_of(&lowered("addVar(r, \"Hello\")\naddResult(r)\n"));
    assert_eq!(small.page_size_log2, Some(0));
    assert_eq!((small.initial, small.maximum), (4096, Some(4096)));

    // Constants past one standard wasm page still fit: the size follows
    // the constant bytes, rounded up.
    let text = "x".repeat(70_000);
    let large = memory_of(&lowered(&format!("r = \"{text}\"\naddResult(r)\n")));
    assert_eq!(large.page_size_log2, Some(0));
    assert_eq!(large.maximum, Some(large.initial));
    assert_eq!(large.initial % 4096, 0);
    assert!(
        (70_000..70_000 + 8192).contains(&large.initial),
        "memory of {} bytes for 70,000 bytes of constants",
        large.initial
    );
}
