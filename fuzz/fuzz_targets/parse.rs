//! Fuzz target `parse`: the parser and checker never panic on any input;
//! every diagnostic span lies inside the source.
//!
//! Any byte string is accepted (`SourceFile::from_bytes` replaces invalid
//! UTF-8), parsed, then parsed and checked with no includes. Every primary
//! and secondary span must be ordered, end within the source text and fall
//! on char boundaries. A stack overflow counts as a crash too.
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run parse
//! ```

#![no_main]

use avap_codegen::check::{NoIncludes, check_file};
use avap_codegen::{Diagnostic, SourceFile, parse};
use libfuzzer_sys::fuzz_target;

fn assert_spans_inside(text: &str, diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        let spans = std::iter::once(d.span).chain(d.secondary.iter().map(|l| l.span));
        for span in spans {
            let (start, end) = (span.start as usize, span.end as usize);
            assert!(
                start <= end && end <= text.len(),
                "span {span:?} outside the source ({} bytes): {d:?}",
                text.len()
            );
            assert!(
                text.is_char_boundary(start) && text.is_char_boundary(end),
                "span {span:?} not on char boundaries: {d:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let file = SourceFile::from_bytes("fuzz.avap", data);
    let (_program, diagnostics) = parse(&file);
    assert_spans_inside(file.text(), &diagnostics);
    let checked = check_file(file.clone(), &NoIncludes);
    assert_spans_inside(file.text(), &checked.diagnostics);
});
