//! Any input that checks without errors lowers to a module the artifact reader
//! accepts (the code generator never emits invalid wasm, never panics).
#![no_main]

use avap_codegen::check::NoIncludes;
use avap_codegen::{SourceFile, check_file, lower::lower};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let checked = check_file(SourceFile::from_bytes("fuzz.avap", data), &NoIncludes);
    if checked.error_count() == 0 {
        let module = lower(&checked);
        avap_hostfns::artifact::validate(&module.wasm).expect("the lowered module is valid");
    }
});
