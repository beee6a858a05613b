//! Print the WebAssembly text of a compiled script: `cargo run -p avap-codegen --example wat -- FILE`.
fn main() {
    let path = std::env::args().nth(1).expect("usage: wat FILE.avap");
    let text = std::fs::read_to_string(&path).expect("readable file");
    let checked = avap_codegen::check_file(
        avap_codegen::SourceFile::new(path, text),
        &avap_codegen::check::NoIncludes,
    );
    assert_eq!(checked.error_count(), 0, "the script has errors");
    let module = avap_codegen::lower::lower(&checked);
    println!("{}", wasmprinter::print_bytes(&module.wasm).expect("valid module"));
}
