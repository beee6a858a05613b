//! The printed WebAssembly of small programs, as `insta` snapshots: a
//! change in code generation shows up as a reviewable diff.

use avap_codegen::check::NoIncludes;
use avap_codegen::{SourceFile, check_file, lower::lower};

#[test]
fn printed_modules() {
    insta::glob!("wat/*.avap", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let checked = check_file(SourceFile::new("t.avap", text), &NoIncludes);
        assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
        let module = lower(&checked);
        let wat = wasmprinter::print_bytes(&module.wasm).expect("valid module");
        // Imports and the data segment are the same for every program; keep
        // the functions, which are what code generation decides.
        let funcs: String = wat
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("(func $main"))
            .take_while(|l| !l.trim_start().starts_with("(data"))
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!(funcs);
    });
}
