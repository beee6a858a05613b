//! Linear memory sized in bytes (format version 4): what a run counts for
//! it, modules past one standard page, and modules of earlier formats
//! (64 KiB wasm pages) still running.

mod common;

use avap_hostfns::artifact;
use avap_runtime::{Limits, RunInput};
use common::{Harness, artifact, block_on};

const HELLO: &str = "addVar(r, \"Hello\")\naddResult(r)\n";

/// Byte range of the memory section's contents in `wasm`.
fn memory_section(wasm: &[u8]) -> std::ops::Range<usize> {
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::MemorySection(reader) = payload.unwrap() {
            return reader.range();
        }
    }
    panic!("no memory section");
}

/// `wasm` with its memory rewritten to one standard 64 KiB page, the way
/// compilers before format version 4 sized it. The new section has the
/// old one's length (padded LEB128), so no later offset moves.
fn with_standard_pages(wasm: &[u8]) -> Vec<u8> {
    let range = memory_section(wasm);
    // count 1, flags 0x09 (maximum, custom page size), 4096 (2 bytes), 4096, log2 0.
    assert_eq!(&wasm[range.clone()], &[0x01, 0x09, 0x80, 0x20, 0x80, 0x20, 0x00]);
    // count 1, flags 0x01 (maximum), minimum 1 as 2 bytes, maximum 1 as 3 bytes.
    let standard = [0x01, 0x01, 0x81, 0x00, 0x81, 0x80, 0x00];
    let mut out = wasm.to_vec();
    out[range].copy_from_slice(&standard);
    out
}

#[test]
fn a_small_run_counts_4_kib_of_linear_memory() {
    let h = Harness::new();
    let report = h.run(HELLO);
    assert!(report.envelope.is_ok(), "{}", report.envelope);
    // The heap adds a few hundred bytes; one standard page alone was 64 KiB.
    assert!(
        report.usage.peak_memory_bytes < 16 << 10,
        "peak {} bytes",
        report.usage.peak_memory_bytes
    );
}

#[test]
fn constants_past_one_standard_page_are_in_memory() {
    let h = Harness::new();
    let text = "é".repeat(40_000);
    let report = h.run(&format!("r = \"{text}\"\naddResult(r)\n"));
    assert_eq!(report.envelope.json()["result"]["r"], text.as_str());
}

#[test]
fn a_module_with_standard_wasm_pages_still_runs() {
    let h = Harness::new();
    let unsigned = with_standard_pages(&artifact(HELLO, None));
    let signed = artifact::sign(&unsigned, &h.key);
    let module = h.runtime.load(&signed).expect("the older memory layout loads");
    let input = RunInput {
        limits: Limits::CLI,
        ..RunInput::default()
    };
    let report = block_on(h.runtime.run(&module, input));
    assert_eq!(report.envelope.json()["result"]["r"], "Hello");
    // Its whole page is counted.
    assert!(report.usage.peak_memory_bytes >= 64 << 10);
}
