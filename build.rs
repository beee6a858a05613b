//! Link the `avap` binary with packed relative relocations (`DT_RELR`) where
//! the toolchain supports them.
//!
//! `avap` is a position-independent executable with about 90,000 relative
//! relocations (vtables, string tables, the time-zone database), which the
//! dynamic loader applies at every start. As RELA entries they fill a
//! 2 MiB table that a one-shot `avap run` reads and walks before `main`;
//! packed, the table is a few KiB of bitmaps and the walk is cheaper
//! (BENCHMARKS.md, issue 20 part 10). The executable stays position
//! independent: address-space randomisation is kept.
//!
//! Needs GNU ld ≥ 2.38 or lld, and glibc ≥ 2.36 (Debian 12) to run: the
//! linker then marks the binary as needing `GLIBC_ABI_DT_RELR`, so an older
//! C library refuses it with a clear loader error rather than misbehaving.
//! The build probes the C toolchain once and links without the flag when
//! it is not supported, or when cross-compiling (the probe would test the
//! wrong linker).

use std::env;
use std::io::Write as _;
use std::process::{Command, Stdio};

const FLAG: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=AVAP_NO_RELR");
    let target = env::var("TARGET").unwrap_or_default();
    let host = env::var("HOST").unwrap_or_default();
    let linux_gnu = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !linux_gnu || target != host || env::var_os("AVAP_NO_RELR").is_some() {
        return;
    }
    if links_with_relr() {
        println!("cargo:rustc-link-arg-bins={FLAG}");
    }
}

/// Whether the C compiler rustc links through (`cc` on Linux) links a
/// program with the flag.
fn links_with_relr() -> bool {
    let out = env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let probe = std::path::Path::new(&out).join("relr-probe");
    let child = Command::new("cc")
        .args(["-x", "c", "-", "-o"])
        .arg(&probe)
        .arg(FLAG)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"int main(void) { return 0; }\n");
    }
    let linked = child.wait().is_ok_and(|status| status.success());
    // The probe must also run: a linker that packs relocations for a C
    // library that cannot apply them would make a binary that fails to start.
    linked && Command::new(&probe).status().is_ok_and(|status| status.success())
}
