//! Property test of the code generator: every generated program that checks
//! without errors lowers to a module `wasmparser` validates.

use avap_codegen::check::NoIncludes;
use avap_codegen::{SourceFile, check_file, lower::lower};
use proptest::prelude::*;
use proptest::test_runner::Config;

#[path = "support/generate.rs"]
mod generate;
use generate::program;

proptest! {
    #![proptest_config(Config { cases: 200, failure_persistence: None, ..Config::default() })]

    #[test]
    fn generated_programs_lower_to_valid_modules(src in program()) {
        let checked = check_file(SourceFile::new("gen.avap", src.clone()), &NoIncludes);
        prop_assume!(checked.error_count() == 0);
        let module = lower(&checked);
        if let Err(e) = avap_hostfns::artifact::validate(&module.wasm) {
            panic!("invalid module: {e}\n--- program ---\n{src}");
        }
    }
}
