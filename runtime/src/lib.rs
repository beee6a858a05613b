//! `avap-runtime` runs signed AVAP WebAssembly artifacts in wasmtime under
//! hard limits (fuel, epoch deadline, memory, stack, output size).
//!
//! The wasmtime engine, module cache and run loop arrive with the
//! compile-and-run work (issue 4). Until then this crate only fixes its place
//! in the dependency graph: `avap → avap-runtime → avap-hostfns`, and it never
//! depends on `avap-codegen` (the runtime does not parse AVAP).
