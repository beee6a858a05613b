//! Instances kept from finished runs and reset before they are seen again.
//!
//! A fresh run pays for a new `Store`, an instance from the pool and, when
//! it is dropped, the pool's reset of that slot: about half of a cached
//! hello run (BENCHMARKS.md, issue 20, part 12). A module whose whole
//! mutable state the host can reach and restore gets its instances back
//! instead, reset to the state of a fresh instantiation.
//!
//! ## Why a run never sees another run's memory
//! The state a core WebAssembly instance carries from one call to the next
//! is its memories (bytes and size), its tables, its mutable globals and
//! which of its passive data and element segments were dropped. A module is
//! [`Recyclable`] only when all of that is reachable from the host:
//! * exactly one memory, defined by the module, exported, not shared, with
//!   its maximum equal to its minimum (it can never grow), at most
//!   [`MAX_IMAGE_BYTES`];
//! * no tables, no element segments, no passive data segments, no start
//!   function, no imported memories, tables or globals;
//! * every mutable global exported and of a number type.
//!
//! Right after the module's first fresh instantiation, before any of its
//! code or ours ran in it, the memory's bytes and the mutable globals'
//! values are copied ([`Pristine`]); every instantiation starts from the
//! same data segments and constant initialisers, so that copy is what any
//! fresh instance holds. When a run gives its instance back, the memory is
//! overwritten with that copy (its size cannot have changed: checked again)
//! and every mutable global set to its first value, *before* the instance
//! is put where another run can take it; the run's host state (heap,
//! request, services) is dropped at the same moment. What is left of the
//! store is configuration the next run sets again ([`crate::run`]'s
//! `configure`: fuel, its yield interval, the epoch deadline and callback).
//!
//! Only a run whose calls all returned gives its instance back: one that
//! trapped (a limit, a fault), failed inside the runtime, or was cancelled
//! (its future dropped mid-call) drops it, as every run did before.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use wasmparser::{DataKind, ExternalKind, Parser, Payload, TypeRef, ValType};
use wasmtime::{Extern, Global, Instance, InstancePre, Memory, Module, ModuleExport, Store, Val};

use crate::load::Layout;
use crate::run::Live;
use crate::shared::RunShared;
use crate::state::RunState;

/// Largest linear memory a recycled instance may have: an idle instance
/// holds its memory resident (the pool's own slots keep 64 KiB).
const MAX_IMAGE_BYTES: u64 = 1 << 20;

/// How to reach a recyclable module's mutable state from the host.
pub(crate) struct Recyclable {
    memory: ModuleExport,
    globals: Vec<ModuleExport>,
}

impl Recyclable {
    /// `Some` when the module's whole mutable state is reachable (see the
    /// module documentation); `wasm` is the module `module` was compiled
    /// from.
    pub(crate) fn of(wasm: &[u8], module: &Module) -> Option<Recyclable> {
        let (memory, globals) = mutable_state(wasm)?;
        Some(Recyclable {
            memory: module.get_export_index(&memory)?,
            globals: globals
                .iter()
                .map(|name| module.get_export_index(name))
                .collect::<Option<_>>()?,
        })
    }
}

/// The export names of a module's memory and of its mutable globals, or
/// `None` when it holds state the host could not restore.
fn mutable_state(wasm: &[u8]) -> Option<(String, Vec<String>)> {
    let mut memory_limits = Vec::new();
    let mut mutable = Vec::new();
    let mut exports = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.ok()? {
            Payload::ImportSection(imports) => {
                for import in imports.into_imports() {
                    if !matches!(import.ok()?.ty, TypeRef::Func(_) | TypeRef::FuncExact(_)) {
                        return None;
                    }
                }
            }
            Payload::MemorySection(memories) => {
                for memory in memories {
                    memory_limits.push(memory.ok()?);
                }
            }
            Payload::GlobalSection(globals) => {
                for (index, global) in globals.into_iter().enumerate() {
                    let ty = global.ok()?.ty;
                    if ty.mutable {
                        if !matches!(
                            ty.content_type,
                            ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64
                        ) {
                            return None;
                        }
                        mutable.push(u32::try_from(index).ok()?);
                    }
                }
            }
            Payload::ExportSection(section) => {
                for export in section {
                    let export = export.ok()?;
                    exports.push((export.kind, export.index, export.name.to_owned()));
                }
            }
            Payload::DataSection(data) => {
                for segment in data {
                    if !matches!(segment.ok()?.kind, DataKind::Active { .. }) {
                        return None;
                    }
                }
            }
            Payload::TableSection(_)
            | Payload::ElementSection(_)
            | Payload::StartSection { .. }
            | Payload::TagSection(_) => return None,
            _ => {}
        }
    }
    let [memory] = memory_limits.as_slice() else {
        return None;
    };
    if memory.shared || memory.memory64 || memory.maximum != Some(memory.initial) {
        return None;
    }
    let bytes = memory.initial.checked_shl(memory.page_size_log2.unwrap_or(16))?;
    if bytes > MAX_IMAGE_BYTES {
        return None;
    }
    let export_of = |kind: ExternalKind, index: u32| {
        exports
            .iter()
            .find(|(k, i, _)| *k == kind && *i == index)
            .map(|(_, _, name)| name.clone())
    };
    let memory = export_of(ExternalKind::Memory, 0)?;
    let globals = mutable
        .into_iter()
        .map(|index| export_of(ExternalKind::Global, index))
        .collect::<Option<_>>()?;
    Some((memory, globals))
}

/// A fresh instance's state: its memory's bytes and its mutable globals'
/// values, in [`Recyclable::globals`] order.
#[derive(Debug)]
pub(crate) struct Pristine {
    memory: Box<[u8]>,
    globals: Vec<Val>,
}

/// One module's idle instances, reset and ready.
pub(crate) struct WarmPool {
    /// `Some` when the module's instances are reused: how to reach their
    /// state, and the run an idle instance's host state belongs to (no
    /// request, no limits, no effects).
    plan: Option<(Recyclable, Arc<RunShared>)>,
    pristine: OnceLock<Pristine>,
    idle: Mutex<Vec<(Store<RunState>, Live)>>,
    /// Idle instances across the runtime, and how many there may be.
    total: Arc<AtomicU32>,
    cap: u32,
}

impl WarmPool {
    pub(crate) fn new(
        plan: Option<Recyclable>,
        pre: &InstancePre<RunState>,
        layout: &Arc<Layout>,
        total: Arc<AtomicU32>,
        cap: u32,
    ) -> WarmPool {
        let idle_run = || Arc::new(RunShared::idle(pre.clone(), Arc::clone(layout)));
        WarmPool {
            plan: plan.filter(|_| cap > 0).map(|plan| (plan, idle_run())),
            pristine: OnceLock::new(),
            idle: Mutex::new(Vec::new()),
            total,
            cap,
        }
    }

    /// An idle instance, if there is one. Its store still holds an idle
    /// state: the caller installs the run's and configures the store.
    pub(crate) fn take(&self) -> Option<(Store<RunState>, Live)> {
        self.plan.as_ref()?;
        let taken = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop()?;
        self.total.fetch_sub(1, Ordering::Relaxed);
        Some(taken)
    }

    /// Record a fresh instance's state, once per module, through its
    /// [`WarmPool::handles`]. Call right after instantiation, before
    /// anything ran in the instance.
    pub(crate) fn observe_fresh(&self, store: &mut Store<RunState>, handles: Option<&ResetHandles>) {
        let Some(handles) = handles else { return };
        if self.pristine.get().is_some() {
            return;
        }
        let memory = handles.memory.data(&*store).into();
        let globals = handles.globals.iter().map(|g| g.get(&mut *store)).collect();
        let _ = self.pristine.set(Pristine { memory, globals });
    }

    /// The handles a reset of `instance` needs, looked up once per
    /// instance; `None` when the module's instances are not reused.
    pub(crate) fn handles(&self, store: &mut Store<RunState>, instance: &Instance) -> Option<ResetHandles> {
        let (plan, _) = self.plan.as_ref()?;
        Some(ResetHandles {
            memory: instance
                .get_module_export(&mut *store, &plan.memory)
                .and_then(Extern::into_memory)?,
            globals: plan
                .globals
                .iter()
                .map(|g| instance.get_module_export(&mut *store, g).and_then(Extern::into_global))
                .collect::<Option<_>>()?,
        })
    }

    /// Take back the instance of a run whose calls all returned: reset it
    /// (module documentation) and keep it, or drop it when the runtime
    /// holds as many idle instances as it may, or when it cannot be reset.
    /// The run's host state is dropped here, replaced by an idle one.
    pub(crate) fn give_back(&self, mut store: Store<RunState>, live: Live) {
        let (Some((_, idle_run)), Some(handles), Some(pristine)) = (&self.plan, &live.reset, self.pristine.get())
        else {
            return;
        };
        if self
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.cap).then_some(n + 1)
            })
            .is_err()
        {
            return;
        }
        if handles.reset(&mut store, pristine).is_none() {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        *store.data_mut() = RunState::new(idle_run);
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((store, live));
    }

    /// Idle instances of this module.
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One instance's memory and mutable globals (in [`Recyclable`] order).
pub(crate) struct ResetHandles {
    memory: Memory,
    globals: Vec<Global>,
}

impl ResetHandles {
    /// Put the instance back in the state [`Pristine`] recorded. `None`
    /// (and the instance must be dropped) when its memory is not that size.
    fn reset(&self, store: &mut Store<RunState>, pristine: &Pristine) -> Option<()> {
        let bytes = self.memory.data_mut(&mut *store);
        if bytes.len() != pristine.memory.len() {
            return None;
        }
        bytes.copy_from_slice(&pristine.memory);
        for (global, value) in self.globals.iter().zip(&pristine.globals) {
            global.set(&mut *store, *value).ok()?;
        }
        Some(())
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(PoisonError::into_inner).len();
        self.total
            .fetch_sub(u32::try_from(idle).unwrap_or(u32::MAX), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, RunInput, Runtime, RuntimeConfig};

    /// Memory bytes and mutable globals (as raw bits) of an instance.
    fn state(store: &mut Store<RunState>, handles: &ResetHandles) -> (Vec<u8>, Vec<u128>) {
        let memory = handles.memory.data(&*store).to_vec();
        let globals = handles
            .globals
            .iter()
            .map(|g| match g.get(&mut *store) {
                Val::I32(v) => u128::from(v.cast_unsigned()),
                Val::I64(v) => u128::from(v.cast_unsigned()),
                Val::F32(v) => u128::from(v),
                Val::F64(v) => u128::from(v),
                other => panic!("not a number global: {other:?}"),
            })
            .collect();
        (memory, globals)
    }

    #[test]
    fn a_given_back_instance_holds_exactly_a_fresh_instances_state() {
        let runtime = Runtime::new(RuntimeConfig {
            allow_unsigned: true,
            max_concurrent_runs: 2,
            ..RuntimeConfig::default()
        })
        .expect("runtime starts");
        let source = "n = 0\nstartLoop(i, 1, 50)\n    n = n + i\nendLoop()\n_status = 201\naddResult(n)\n";
        let checked = avap_codegen::check_file(
            avap_codegen::SourceFile::new("t.avap", source),
            &avap_codegen::check::NoIncludes,
        );
        let module = runtime
            .load(&avap_codegen::compile(&checked, None).bytes)
            .expect("loads");
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let input = || RunInput {
            limits: Limits::CLI,
            ..RunInput::default()
        };
        let report = tokio.block_on(runtime.run(&module, input()));
        assert_eq!(report.http_status, 201, "{}", report.envelope);
        assert_eq!(module.warm.idle_count(), 1, "the run gave its instance back");

        // A fresh instance, as a run without reuse gets it.
        let (_, idle_run) = module.warm.plan.as_ref().expect("recyclable");
        let mut fresh_store = crate::run::new_store(idle_run);
        fresh_store.set_fuel(1 << 20).expect("metered");
        fresh_store.set_epoch_deadline(1 << 20);
        let fresh = tokio
            .block_on(module.pre.instantiate_async(&mut fresh_store))
            .expect("instantiates");
        let fresh_handles = module.warm.handles(&mut fresh_store, &fresh).expect("recyclable");
        let want = state(&mut fresh_store, &fresh_handles);

        // Scribble over every byte and global of the idle instance, as a
        // hostile run could, and give it back again.
        let (mut store, live) = module.warm.take().expect("an idle instance");
        let handles = live.reset.as_ref().expect("reset handles");
        assert_eq!(state(&mut store, handles), want, "a given-back instance is pristine");
        handles.memory.data_mut(&mut store).fill(0xA5);
        for g in &handles.globals {
            let scribble = match g.get(&mut store) {
                Val::I32(_) => Val::I32(-7),
                _ => Val::I64(-7),
            };
            g.set(&mut store, scribble).expect("mutable");
        }
        assert_ne!(state(&mut store, handles), want);
        module.warm.give_back(store, live);
        let (mut store, live) = module.warm.take().expect("given back");
        assert_eq!(
            state(&mut store, live.reset.as_ref().expect("reset handles")),
            want,
            "the reset restored every byte and global"
        );
        assert!(store.data().heap.peak() == 0, "the idle state holds nothing of the run");
    }

    fn state_of(wat: &str) -> Option<(String, Vec<String>)> {
        mutable_state(&wat::parse_str(wat).expect("valid WAT"))
    }

    const FIXED: &str = r#"(memory (export "memory") 1 1)
        (global $g (export "g") (mut i64) (i64.const 0))
        (global $c i32 (i32.const 7))
        (data (i32.const 0) "abc")
        (func (export "main") (result i32) (i32.const 0))"#;

    #[test]
    fn a_module_whose_state_the_host_reaches_is_recyclable() {
        let (memory, globals) = state_of(&format!("(module {FIXED})")).expect("recyclable");
        assert_eq!(memory, "memory");
        assert_eq!(globals, ["g"], "only the mutable global needs a reset");
    }

    #[test]
    fn state_the_host_cannot_restore_makes_a_module_not_recyclable() {
        let refused = [
            // The memory may grow: a reset could not shrink it.
            r#"(module (memory (export "memory") 1 2))"#,
            // A mutable global the host cannot reach.
            r#"(module (memory (export "memory") 1 1) (global (mut i32) (i32.const 0)))"#,
            // A memory the host cannot reach.
            "(module (memory 1 1))",
            // Tables and their segments are state too.
            r#"(module (memory (export "memory") 1 1) (table 1 funcref))"#,
            // A passive segment can be dropped.
            r#"(module (memory (export "memory") 1 1) (data "abc"))"#,
            // A start function runs only at instantiation.
            r#"(module (memory (export "memory") 1 1) (func $s) (start $s))"#,
            // Imported state is shared with someone else.
            r#"(module (import "m" "g" (global (mut i32))) (memory (export "memory") 1 1))"#,
            // Larger than an idle instance may hold.
            r#"(module (memory (export "memory") 17 17))"#,
        ];
        for wat in refused {
            assert!(state_of(wat).is_none(), "recyclable, but should not be: {wat}");
        }
    }
}
