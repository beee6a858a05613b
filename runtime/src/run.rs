//! One run: a fresh `Store<RunState>` with the run's limits, the top level,
//! then `registerEndpoint` dispatch, then the response envelope (spec §7).

use std::sync::Arc;
use std::time::{Duration, Instant};

use avap_hostfns::abi;
use avap_hostfns::{AvapError, ErrorKind, LimitHit, LimitKind, Request, Value};
use serde_json::json;
use wasmtime::{
    AsContextMut as _, Extern, Global, Instance, Memory, ModuleExport, Store, Trap, TypedFunc, UpdateDeadline,
    WasmBacktrace,
};

use crate::engine::Runtime;
use crate::envelope::Envelope;
use crate::linker::value;
use crate::load::{Layout, LoadedModule};
use crate::shared::{self, RunShared};
use crate::state::{CodeLocation, RunState};
use crate::{Limits, RunReport, Usage};

/// What a run needs besides the module.
#[derive(Debug, Clone, Default)]
pub struct RunInput {
    pub request: Request,
    pub limits: Limits,
    /// Server time zone (default UTC).
    pub time_zone: Option<avap_hostfns::zone::Zone>,
    /// A fixed clock (tests); `None` = the real clock.
    pub now: Option<chrono::DateTime<chrono::Utc>>,
    /// What `RequestGet`, `orm*`, `functionAI`… may reach. The default
    /// configures nothing: those commands fail with `CapabilityDenied`.
    pub effects: avap_hostfns::effects::Effects,
}

/// How a run ended, before it becomes an envelope.
#[derive(Debug)]
pub(crate) enum Failure {
    Script(AvapError, Option<CodeLocation>),
    Limit(LimitHit, Option<CodeLocation>),
    Internal(String),
}

impl Runtime {
    /// Run `module` once. Never panics and never returns an error: every
    /// outcome, including sandbox limits, is a [`RunReport`].
    pub async fn run(&self, module: &LoadedModule, input: RunInput) -> RunReport {
        let start = Instant::now();
        let limits = input.limits;
        let deadline = start + Duration::from_millis(limits.time_ms);
        let run = Arc::new(RunShared::new(
            module.pre.clone(),
            Arc::clone(&module.layout),
            limits,
            (!self.config.unmetered).then_some(deadline),
            input.request,
            input.time_zone.unwrap_or(avap_hostfns::zone::Zone::UTC),
            input.now,
            input.effects,
            self.config.max_async_blocks,
            Arc::clone(&self.block_slots),
        ));
        // An instance a finished run of this module gave back, reset
        // (`crate::recycle`), or a fresh one made in `execute`.
        let (mut store, mut live) = match module.warm.take() {
            Some((mut store, live)) => {
                *store.data_mut() = RunState::new(&run);
                configure(&mut store, &run);
                (store, Some(live))
            }
            None => (new_store(&run), None),
        };
        // Whether every call into the instance returned (no trap, no
        // cancellation): only then may it be reused.
        let mut returned = false;
        // The main flow and the go_async blocks it starts run in this one
        // task: the blocks are polled beside it and dropped (cancelled) when
        // it is done; a limit a block hits ends the run.
        let outcome = tokio::select! {
            biased;
            outcome = self.execute(module, &mut store, &mut live, &mut returned, &limits) => outcome,
            failure = crate::blocks::drive(Arc::clone(&run)) => Err(failure),
        };
        let _ = shared::suspend(store.as_context_mut());
        let fuel_used = if self.config.unmetered {
            0
        } else {
            // What the run took out of its budget: leases of blocks
            // cancelled at the end count as used.
            limits.fuel.saturating_sub(run.fuel_left())
        };
        let wall = start.elapsed();
        let usage = Usage {
            fuel: fuel_used,
            wall_ms: wall.as_secs_f64() * 1000.0,
            peak_memory_bytes: store.data().heap.peak().max(run.peak()),
        };
        let elapsed = wall.as_secs_f64();
        let report = match outcome {
            Ok(()) => {
                let status = status_code(&store);
                let results = std::mem::take(&mut run.lock_results().values);
                RunReport {
                    http_status: status,
                    envelope: Envelope::succeeded(elapsed, results.iter().map(|(k, v)| (k.as_str(), v.text.as_str()))),
                    usage,
                }
            }
            Err(f) => {
                let (kind, message, loc) = match f {
                    Failure::Script(e, loc) => (e.kind.as_str().to_owned(), e.message, loc),
                    Failure::Limit(l, loc) => (l.kind.as_str().to_owned(), l.message, loc),
                    Failure::Internal(m) => ("InternalError".to_owned(), m, None),
                };
                let http_status = match kind.as_str() {
                    "TimeLimit" => 504,
                    "FuelExhausted" | "MemoryLimit" | "StackOverflow" | "OutputLimit" => 422,
                    "MethodNotAllowed" => 405,
                    "NotFound" => 404,
                    "InternalError" => 500,
                    _ => 400,
                };
                let mut error = json!({"kind": kind, "message": message});
                if let Some((file, line, column)) = loc.and_then(|(f, o)| module.srcmap().lookup(f, o)) {
                    error["line"] = json!(line);
                    error["column"] = json!(column);
                    if file != module.meta().source_name {
                        error["file"] = json!(file);
                    }
                }
                RunReport {
                    http_status,
                    envelope: Envelope::failed(elapsed, error),
                    usage,
                }
            }
        };
        if returned && let Some(live) = live {
            module.warm.give_back(store, live);
        }
        report
    }

    /// The top level, then endpoint dispatch, in `live` (an instance made
    /// here when `None`). `returned` ends `true` only if every call into
    /// the instance returned (an uncaught script error returns too).
    async fn execute(
        &self,
        module: &LoadedModule,
        store: &mut Store<RunState>,
        live: &mut Option<Live>,
        returned: &mut bool,
        limits: &Limits,
    ) -> Result<(), Failure> {
        if live.is_none() {
            let instance =
                module.pre.instantiate_async(&mut *store).await.map_err(|e| {
                    classify(e, store).unwrap_or_else(|e| Failure::Internal(format!("instantiate: {e:#}")))
                })?;
            let reset = module.warm.handles(store, &instance);
            module.warm.observe_fresh(store, reset.as_ref());
            let exports = Exports::of(&instance, store, &module.layout)?;
            let main = module
                .layout
                .main
                .and_then(|main| instance.get_module_export(&mut *store, &main))
                .and_then(wasmtime::Extern::into_func)
                .ok_or_else(|| Failure::Internal("module exports no main".into()))?
                .typed::<(), i32>(&*store)
                .map_err(|e| Failure::Internal(format!("{e:#}")))?;
            *live = Some(Live {
                instance,
                exports,
                main,
                reset,
            });
        }
        let Live {
            instance,
            exports,
            main,
            ..
        } = live.as_ref().expect("made above");
        prepare(store, instance, exports, &module.layout, limits)?;
        let called = main.call_async(&mut *store, ()).await;
        *returned = called.is_ok();
        match called {
            Ok(0) => {}
            Ok(_) => return Err(uncaught(store)),
            Err(e) => return Err(classify(e, store).unwrap_or_else(|e| Failure::Internal(format!("{e:#}")))),
        }
        if !store.data().services.endpoints.is_empty() {
            self.dispatch(instance, store, returned).await?;
        }
        Ok(())
    }

    /// Route the request to a `registerEndpoint` handler (spec §7).
    async fn dispatch(
        &self,
        instance: &Instance,
        store: &mut Store<RunState>,
        returned: &mut bool,
    ) -> Result<(), Failure> {
        let (method, path) = {
            let r = &store.data().services.request;
            (r.method.to_ascii_uppercase(), r.path.clone())
        };
        let endpoints = store.data().services.endpoints.clone();
        let on_path: Vec<_> = endpoints.iter().filter(|e| e.path == path).collect();
        if on_path.is_empty() {
            return Err(Failure::Script(
                AvapError::new(ErrorKind::NotFound, format!("no endpoint is registered for {path}")),
                None,
            ));
        }
        let Some(ep) = on_path
            .iter()
            .find(|e| e.method == method || (method == "HEAD" && e.method == "GET"))
        else {
            let allowed: Vec<&str> = on_path.iter().map(|e| e.method.as_str()).collect();
            return Err(Failure::Script(
                AvapError::new(
                    ErrorKind::MethodNotAllowed,
                    format!("{method} is not allowed on {path}; allowed: {}", allowed.join(", ")),
                ),
                None,
            ));
        };
        for name in ep.middleware.iter().chain(std::iter::once(&ep.handler)) {
            let before = store.data().services.run.lock_results().len();
            store.data_mut().output = None;
            let export = format!("{}{name}", abi::EXPORT_FN_PREFIX);
            let Ok(f) = instance.get_typed_func::<(), (i32, i64)>(&mut *store, &export) else {
                return Err(Failure::Script(
                    AvapError::new(
                        ErrorKind::NameError,
                        format!("endpoint function `{name}` is not defined (or takes parameters)"),
                    ),
                    None,
                ));
            };
            *returned = false;
            let called = f.call_async(&mut *store, ()).await;
            *returned = called.is_ok();
            match called {
                Ok((abi::TAG_ERR, _)) => return Err(uncaught(store)),
                Ok(_) => {}
                Err(e) => return Err(classify(e, store).unwrap_or_else(|e| Failure::Internal(format!("{e:#}")))),
            }
            let is_handler = std::ptr::eq(name, &raw const ep.handler);
            if is_handler
                && store.data().services.run.lock_results().len() == before
                && let (Some(out), Some((t, p))) = (&ep.output, store.data().output)
            {
                let v = value(&store.data().heap, t, p).map_or(Value::None, std::borrow::Cow::into_owned);
                let services = &mut store.data_mut().services;
                avap_hostfns::HostContext::add_result(services, out, &v).map_err(|e| match e {
                    avap_hostfns::HostError::Limit(l) => Failure::Limit(l, None),
                    avap_hostfns::HostError::Script(e) => Failure::Script(e, None),
                })?;
            }
        }
        Ok(())
    }
}

/// A store for one flow of `run` (its main flow or a block): the memory
/// limiter, the fuel the run has left, and the epoch callback that enforces
/// the deadline, settles the shared budgets and yields to the executor.
pub(crate) fn new_store(run: &Arc<RunShared>) -> Store<RunState> {
    let mut store = Store::new(run.pre.module().engine(), RunState::new(run));
    store.limiter(|s| &mut s.limiter);
    configure(&mut store, run);
    store
}

/// Set what a store's run decides: its fuel lease (and whether it yields
/// by fuel), its deadline and the epoch callback. Everything a store keeps
/// from one run to the next is set here, so a recycled store
/// (`crate::recycle`) starts exactly as a new one.
pub(crate) fn configure(store: &mut Store<RunState>, run: &Arc<RunShared>) {
    if run.metered {
        // `resume` turns yielding by fuel on when the run is crowded; a
        // recycled store may come from a run that was.
        let _ = store.fuel_async_yield_interval(None);
    }
    let _ = shared::resume(store.as_context_mut());
    if run.metered {
        let deadline = run.deadline.unwrap_or_else(Instant::now);
        // Every epoch tick the run checks the real clock against its
        // wall-time limit and otherwise yields to the async executor, so a
        // long run shares its thread with other requests instead of needing
        // one of its own. Before the yield the store publishes its memory
        // (and tops up its fuel lease: see `shared`); right after it resumes
        // (the deadline of 0 ticks makes the next check call back at once)
        // it learns what the other flows of its run did meanwhile.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut cx| {
            if Instant::now() >= deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            if std::mem::take(&mut cx.data_mut().resumed) {
                let run = Arc::clone(&cx.data().services.run);
                shared::sync_memory(cx.data_mut(), &run);
                return Ok(UpdateDeadline::Continue(1));
            }
            shared::tick(cx.as_context_mut())?;
            // A collection due sooner than the loop's countdown says (its
            // allocation rate jumped): make the next back-edge poll.
            if cx.data().heap.poll_due()
                && let Some(countdown) = cx.data().gc_countdown
            {
                let _ = countdown.set(&mut cx, wasmtime::Val::I32(0));
            }
            cx.data_mut().resumed = true;
            Ok(UpdateDeadline::YieldCustom(0, Box::pin(tokio::task::yield_now())))
        });
    }
}

/// The exports of an instance every run reaches, looked up once per
/// instance (a recycled instance keeps them).
#[derive(Clone, Copy)]
pub(crate) struct Exports {
    pub(crate) memory: Memory,
    gc_countdown: Option<Global>,
    stack_left: Global,
}

impl Exports {
    pub(crate) fn of(instance: &Instance, store: &mut Store<RunState>, layout: &Layout) -> Result<Exports, Failure> {
        Ok(Exports {
            memory: export(instance, store, layout.memory.as_ref())
                .and_then(Extern::into_memory)
                .ok_or_else(|| Failure::Internal("module exports no memory".into()))?,
            gc_countdown: export(instance, store, layout.gc_countdown.as_ref()).and_then(Extern::into_global),
            stack_left: global(instance, store, layout.stack_left.as_ref(), "stack budget")?,
        })
    }
}

fn export(instance: &Instance, store: &mut Store<RunState>, index: Option<&ModuleExport>) -> Option<Extern> {
    index.and_then(|i| instance.get_module_export(&mut *store, i))
}

fn global(
    instance: &Instance,
    store: &mut Store<RunState>,
    index: Option<&ModuleExport>,
    what: &str,
) -> Result<Global, Failure> {
    export(instance, store, index)
        .and_then(Extern::into_global)
        .ok_or_else(|| Failure::Internal(format!("module exports no {what}")))
}

/// An instance ready for runs: its exports and its top level, looked up
/// once; what a reset restores when the module's instances are reused.
pub(crate) struct Live {
    pub(crate) instance: Instance,
    pub(crate) exports: Exports,
    main: TypedFunc<(), i32>,
    pub(crate) reset: Option<crate::recycle::ResetHandles>,
}

/// Instance set-up before `main` (or a block): memory accounting,
/// constants, stack budget.
pub(crate) fn prepare(
    store: &mut Store<RunState>,
    instance: &Instance,
    exports: &Exports,
    layout: &Layout,
    limits: &Limits,
) -> Result<(), Failure> {
    let memory = exports.memory;
    store.data_mut().memory = Some(memory);
    let linear = memory.data_size(&*store) as u64;
    store.data_mut().heap.linear_bytes = linear;
    if linear > limits.memory_bytes {
        return Err(Failure::Limit(
            LimitHit::new(
                LimitKind::MemoryLimit,
                format!(
                    "the module needs {linear} bytes of memory; the limit is {}",
                    limits.memory_bytes
                ),
            ),
            None,
        ));
    }
    let constants = match layout.constants.get() {
        Some(constants) => constants,
        None => {
            let table = global(instance, store, layout.consts.as_ref(), "constant table")?
                .get(&mut *store)
                .i32()
                .ok_or_else(|| Failure::Internal("bad constant table".into()))?;
            let read = read_consts(memory.data(&*store), table)
                .ok_or_else(|| Failure::Internal("bad constant table".into()))?;
            layout.constants.get_or_init(|| read)
        }
    };
    for c in constants {
        store
            .data_mut()
            .heap
            .alloc(Value::Str(c.clone()))
            .map_err(|l| Failure::Limit(l, None))?;
    }
    store.data_mut().heap.pin_all();
    let global_count = match layout.global_count_value.get() {
        Some(count) => *count,
        None => {
            let count = global(instance, store, layout.global_count.as_ref(), "global count")?
                .get(&mut *store)
                .i32()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| Failure::Internal("bad global count".into()))?;
            *layout.global_count_value.get_or_init(|| count)
        }
    };
    store.data_mut().global_count = global_count;
    store.data_mut().gc_countdown = exports.gc_countdown;
    let budget = i64::try_from(limits.stack_bytes).unwrap_or(i64::MAX);
    exports
        .stack_left
        .set(&mut *store, wasmtime::Val::I64(budget))
        .map_err(|e| Failure::Internal(format!("{e:#}")))?;
    Ok(())
}

/// The string constants in the module's data: a count, then (offset,
/// length) pairs of UTF-8 text.
fn read_consts(mem: &[u8], table: i32) -> Option<Vec<String>> {
    let at = usize::try_from(table).ok()?;
    let u32_at = |i: usize| {
        mem.get(i..i + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    let count = u32_at(at)?;
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let off = u32_at(at + 4 + 8 * k)?;
        let len = u32_at(at + 8 + 8 * k)?;
        out.push(String::from_utf8(mem.get(off..off + len)?.to_vec()).ok()?);
    }
    Some(out)
}

/// The uncaught error pending after `main` (or a handler) returned failure.
pub(crate) fn uncaught(store: &mut Store<RunState>) -> Failure {
    match store.data_mut().pending.take() {
        Some((e, loc)) => Failure::Script(e, loc),
        None => Failure::Internal("the script failed without an error".into()),
    }
}

/// Sort a wasm error into a limit, a script error or an internal fault.
pub(crate) fn classify(e: wasmtime::Error, store: &mut Store<RunState>) -> Result<Failure, wasmtime::Error> {
    let loc = e
        .downcast_ref::<WasmBacktrace>()
        .and_then(|bt| bt.frames().first())
        .and_then(|f| Some((f.func_index(), u32::try_from(f.func_offset()?).ok()?)));
    if let Some(t) = e.downcast_ref::<Trap>() {
        let limit = match t {
            Trap::OutOfFuel => LimitHit::new(LimitKind::FuelExhausted, "all fuel consumed"),
            Trap::Interrupt => LimitHit::new(LimitKind::TimeLimit, "wall-clock time limit reached"),
            Trap::StackOverflow => LimitHit::new(LimitKind::StackOverflow, "call depth exceeded the wasm stack"),
            other => return Ok(Failure::Internal(format!("wasm trap: {other}"))),
        };
        return Ok(Failure::Limit(limit, loc));
    }
    if let Some(l) = e.downcast_ref::<LimitHit>() {
        return Ok(Failure::Limit(l.clone(), loc));
    }
    if let Some(crate::heap::HeapError::Limit(l)) = e.downcast_ref::<crate::heap::HeapError>() {
        return Ok(Failure::Limit(l.clone(), loc));
    }
    if let Some((err, l)) = store.data_mut().pending.take() {
        return Ok(Failure::Script(err, l.or(loc)));
    }
    Err(e)
}

/// `_status` if it holds an int in 100..=599, else 200.
fn status_code(store: &Store<RunState>) -> u16 {
    let Some(memory) = store.data().memory else { return 200 };
    let data = memory.data(store);
    let at = (abi::GLOBALS_BASE + abi::STATUS_SLOT * abi::SLOT_BYTES) as usize;
    let Some(bytes) = data.get(at..at + 16) else { return 200 };
    let tag = i32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let payload = i64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if tag == abi::TAG_INT && (100..=599).contains(&payload) {
        u16::try_from(payload).unwrap_or(200)
    } else {
        200
    }
}
