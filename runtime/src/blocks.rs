//! `go_async` blocks (spec §8): each block runs in a store of its own,
//! instantiated from the run's `InstancePre`, on a snapshot of the
//! top-level variable slots and of the values it captures; it runs
//! concurrently with the main flow and the other blocks, and `gather`
//! waits for its outcome.
//!
//! Every flow of a run is polled by the run's own task: [`drive`] polls the
//! blocks beside the main flow, and dropping it (the main flow finished, or
//! the request was dropped) cancels them — a wasm call dropped mid-way, with
//! its HTTP requests and database statements. Concurrency, not parallelism:
//! one run never occupies more than one thread, so the server's run slots
//! keep meaning what they say, and the shared budgets can be settled
//! exactly (see [`crate::shared`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use avap_hostfns::abi;
use avap_hostfns::memory::{self, MemoryBudget};
use avap_hostfns::signature::CommandSig;
use avap_hostfns::{AvapError, ErrorKind, HostError, LimitHit, LimitKind, Value, ops};
use wasmtime::{AsContextMut as _, Caller, Val};

use crate::linker::{Pair, call_slots, command, to_pair, value};
use crate::run::{Exports, Failure, classify, new_store, prepare, uncaught};
use crate::shared::{self, BlockEntry, RunShared};
use crate::state::RunState;

/// A started block, as the driver polls it.
pub(crate) type BlockFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Poll the run's blocks until one of them hits a limit (the run's
/// failure); never ends otherwise. Blocks started while it runs (by the
/// main flow or by other blocks) are picked up as they come.
pub(crate) async fn drive(run: Arc<RunShared>) -> Failure {
    let mut blocks: Vec<BlockFuture> = Vec::new();
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        {
            let mut spawned = run.spawned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            blocks.append(&mut spawned.0);
            spawned.1 = Some(cx.waker().clone());
        }
        // A block that starts another wakes this task, so a newcomer is
        // polled on the next round.
        blocks.retain_mut(|b| b.as_mut().poll(cx).is_pending());
        match run
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            Some(f) => Poll::Ready(f),
            None => Poll::Pending,
        }
    })
    .await
}

/// `rt.async_start`: take the snapshot for block `block` and queue it.
pub(crate) fn start(c: &mut Caller<'_, RunState>, id: Pair, block: i32, captured: Pair) -> wasmtime::Result<()> {
    let run = Arc::clone(&c.data().services.run);
    let export = format!(
        "{}{}",
        abi::EXPORT_ASYNC_PREFIX,
        u32::try_from(block).unwrap_or(u32::MAX)
    );
    let (id, snapshot) = {
        let state = c.data();
        let mut mem = state.heap.budget();
        let id = ops::template_text_within(value(&state.heap, id.0, id.1)?.as_ref(), &mut mem)?;
        let captured = value(&state.heap, captured.0, captured.1)?;
        if !matches!(captured.as_ref(), Value::Dict(_)) {
            return Err(wasmtime::Error::msg("corrupt module: go_async captures are not a dict"));
        }
        let captured = mem.clone_value(captured.as_ref())?.0;
        let globals = read_globals(c, &mut mem)?;
        let bytes = mem.claimed();
        (
            id,
            Snapshot {
                globals,
                captured,
                bytes,
            },
        )
    };
    let generation = register(&run, &id, true)?;
    // The snapshot is the run's until the block's store takes it over.
    run.keep(snapshot.bytes);
    let block_run = Arc::clone(&run);
    let future: BlockFuture = Box::pin(async move {
        // An instance slot of the process-wide pool; a block waits for one
        // (within its run's deadline, which the run enforces).
        let Ok(_slot) = block_run.block_slots.clone().acquire_owned().await else {
            return;
        };
        match run_block(&block_run, &export, snapshot).await {
            Ok(outcome) => finish(&block_run, &id, generation, outcome),
            Err(failure) => block_run.fail(failure),
        }
    });
    run.spawned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .0
        .push(future);
    run.wake_driver();
    // The new flow needs fuel: this one gives back what it holds beyond its
    // share.
    shared::rebalance(c.as_context_mut())
}

/// `rt.async_done` of a format ≤ 2 module: its block ran inline and
/// finished with `(t, p)`.
pub(crate) fn done_inline(c: &mut Caller<'_, RunState>, id: Pair, result: Pair) -> wasmtime::Result<()> {
    let run = Arc::clone(&c.data().services.run);
    let (id, outcome, kept) = {
        let heap = &c.data().heap;
        let mut mem = heap.budget();
        let id = ops::template_text_within(value(heap, id.0, id.1)?.as_ref(), &mut mem)?;
        let outcome = if result.0 == abi::TAG_ERR {
            None
        } else {
            Some(mem.clone_value(value(heap, result.0, result.1)?.as_ref())?.0)
        };
        (id, outcome, mem.claimed())
    };
    let outcome = match outcome {
        Some(v) => Ok(v),
        None => {
            let (e, _) = c
                .data_mut()
                .pending
                .take()
                .unwrap_or((AvapError::new(ErrorKind::ValueError, "failed"), None));
            Err(HostError::Script(e))
        }
    };
    let generation = register(&run, &id, false)?;
    run.keep(kept);
    finish_kept(&run, &id, generation, outcome, kept);
    let state = c.data_mut();
    state.heap.shared = run.shared_for(state.published);
    Ok(())
}

/// Enter a block started under `id` in the run's table (replacing an earlier
/// one with that id); its generation. With `capped`, refused with
/// `MemoryLimit` when the run already holds `max_async_blocks` blocks
/// started and not gathered.
fn register(run: &RunShared, id: &str, capped: bool) -> wasmtime::Result<u32> {
    let mut blocks = run.lock_blocks();
    if capped && blocks.live >= run.max_blocks {
        return Err(wasmtime::Error::new(LimitHit::new(
            LimitKind::MemoryLimit,
            format!(
                "go_async: {} blocks of this run are started and not gathered, the most one run \
                 may hold (max_async_blocks); gather some before starting more",
                blocks.live
            ),
        )));
    }
    blocks.started += 1;
    blocks.live += 1;
    blocks.running += 1;
    run.flows_running.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let generation = blocks.started;
    let entry = BlockEntry {
        generation,
        outcome: None,
        kept: 0,
        gathered: false,
        done: Arc::new(tokio::sync::Notify::new()),
    };
    if let Some(old) = blocks.by_id.insert(id.to_owned(), entry) {
        run.release(old.kept);
    }
    Ok(generation)
}

/// What a block starts from: the top-level slots and the captured values.
struct Snapshot {
    /// The assigned top-level slots.
    globals: Vec<SlotCopy>,
    /// The captured values by position (`"0"`, `"1"`, …).
    captured: Value,
    /// Bytes of the copies, claimed from the starting flow.
    bytes: u64,
}

/// One top-level slot of a snapshot.
struct SlotCopy {
    slot: u32,
    tag: i32,
    payload: i64,
    /// A copy of a heap value (the payload is then the old store's handle).
    value: Option<Value>,
}

/// The assigned top-level slots of the calling store, heap values copied.
fn read_globals(caller: &Caller<'_, RunState>, mem: &mut MemoryBudget) -> wasmtime::Result<Vec<SlotCopy>> {
    let state = caller.data();
    let memory = state
        .memory
        .ok_or_else(|| wasmtime::Error::msg("module exports no memory"))?;
    let data = memory.data(caller);
    let mut out = Vec::new();
    for slot in 0..state.global_count {
        let at = (abi::GLOBALS_BASE + slot * abi::SLOT_BYTES) as usize;
        let Some(bytes) = data.get(at..at + 16) else { break };
        let tag = i32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
        let payload = i64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let value = match tag {
            abi::TAG_UNDEF => continue,
            abi::TAG_STR | abi::TAG_LIST | abi::TAG_DICT => {
                Some(mem.clone_value(value(&state.heap, tag, payload)?.as_ref())?.0)
            }
            _ => None,
        };
        out.push(SlotCopy {
            slot,
            tag,
            payload,
            value,
        });
    }
    Ok(out)
}

/// One block, in its own store: its outcome (the dict of the variables it
/// assigned, or the catchable error it failed with), or the limit that
/// ends the run.
async fn run_block(
    run: &Arc<RunShared>,
    export: &str,
    snapshot: Snapshot,
) -> Result<Result<Value, HostError>, Failure> {
    let mut store = new_store(run);
    let instance =
        run.pre.instantiate_async(&mut store).await.map_err(|e| {
            classify(e, &mut store).unwrap_or_else(|e| Failure::Internal(format!("instantiate: {e:#}")))
        })?;
    let exports = Exports::of(&instance, &mut store, &run.layout)?;
    prepare(&mut store, &instance, &exports, &run.layout, &run.limits)?;
    let func = instance
        .get_func(&mut store, export)
        .ok_or_else(|| Failure::Internal(format!("module exports no `{export}`")))?;
    // The copies move from the run into this store's heap.
    run.release(snapshot.bytes);
    shared::sync_memory(store.data_mut(), run);
    let memory = store
        .data()
        .memory
        .ok_or_else(|| Failure::Internal("no memory".into()))?;
    for copy in snapshot.globals {
        let (t, p) = match copy.value {
            Some(v) => to_pair(&mut store.data_mut().heap, v).map_err(|e| limit_or_internal(&e))?,
            None => (copy.tag, copy.payload),
        };
        let at = (abi::GLOBALS_BASE + copy.slot * abi::SLOT_BYTES) as usize;
        let mut bytes = [0u8; 16];
        bytes[0..4].copy_from_slice(&t.to_le_bytes());
        bytes[8..16].copy_from_slice(&p.to_le_bytes());
        memory
            .write(&mut store, at, &bytes)
            .map_err(|e| Failure::Internal(format!("{e:#}")))?;
    }
    let arity = func.ty(&store).params().len() / 2;
    let Value::Dict(captured) = snapshot.captured else {
        return Err(Failure::Internal("go_async captures are not a dict".into()));
    };
    let mut params = Vec::with_capacity(arity * 2);
    for i in 0..arity {
        // A clone of a list or dict shares it (no copy of the captures).
        let (t, p) = match captured.get(&i.to_string()) {
            Some(v) => to_pair(&mut store.data_mut().heap, v.clone()).map_err(|e| limit_or_internal(&e))?,
            None => (abi::TAG_UNDEF, 0),
        };
        params.push(Val::I32(t));
        params.push(Val::I64(p));
    }
    let mut results = [Val::I32(0), Val::I64(0)];
    let called = func.call_async(&mut store, &params, &mut results).await;
    let outcome = match called {
        Ok(()) => match (results[0].i32(), results[1].i64()) {
            (Some(abi::TAG_ERR), _) => match uncaught(&mut store) {
                Failure::Script(e, _) => Ok(Err(HostError::Script(e))),
                other => Err(other),
            },
            (Some(t), Some(p)) => {
                let heap = &store.data().heap;
                let v = value(heap, t, p).map_err(|e| limit_or_internal(&e))?;
                heap.budget()
                    .clone_value(v.as_ref())
                    .map(|(copy, _)| Ok(copy))
                    .map_err(|l| Failure::Limit(l, None))
            }
            _ => Err(Failure::Internal("a go_async block returned no value".into())),
        },
        Err(e) => match classify(e, &mut store) {
            Ok(Failure::Script(e, _)) => Ok(Err(HostError::Script(e))),
            Ok(f) => Err(f),
            Err(e) => Err(Failure::Internal(format!("{e:#}"))),
        },
    };
    // Give the run back the fuel this store did not burn, and its memory.
    let _ = shared::finish(store.as_context_mut());
    outcome
}

fn limit_or_internal(e: &wasmtime::Error) -> Failure {
    if let Some(l) = e.downcast_ref::<LimitHit>() {
        return Failure::Limit(l.clone(), None);
    }
    if let Some(crate::heap::HeapError::Limit(l)) = e.downcast_ref::<crate::heap::HeapError>() {
        return Failure::Limit(l.clone(), None);
    }
    Failure::Internal(format!("{e:#}"))
}

/// Record a block's outcome (kept for the rest of the run) and wake whoever
/// waits for it.
fn finish(run: &RunShared, id: &str, generation: u32, outcome: Result<Value, HostError>) {
    let kept = match &outcome {
        Ok(v) => v.footprint().bytes + memory::VALUE_BYTES,
        Err(_) => memory::VALUE_BYTES,
    };
    run.keep(kept);
    finish_kept(run, id, generation, outcome, kept);
}

fn finish_kept(run: &RunShared, id: &str, generation: u32, outcome: Result<Value, HostError>, kept: u64) {
    let mut blocks = run.lock_blocks();
    blocks.running = blocks.running.saturating_sub(1);
    run.flows_running.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    match blocks.by_id.get_mut(id) {
        Some(entry) if entry.generation == generation => {
            entry.outcome = Some(outcome);
            entry.kept = kept;
            entry.done.notify_waiters();
        }
        // A later block took over the id: this outcome is nobody's.
        _ => run.release(kept),
    }
}

/// `gather(id, timeoutSeconds)`: wait (at most the timeout, and never past
/// the run's deadline) for block `id` while it runs, then let the command
/// itself read its outcome — or report `TimeoutError` if it is still
/// running.
pub(crate) async fn gather(
    c: &mut Caller<'_, RunState>,
    sig: &'static CommandSig,
    ptr: i32,
    argc: i32,
) -> wasmtime::Result<Pair> {
    let (_, slots) = call_slots(c, sig, ptr, argc)?;
    let waiting = {
        let heap = &c.data().heap;
        let id = match slots.first() {
            Some(&(t, p)) => ops::template_text_within(value(heap, t, p)?.as_ref(), &mut heap.budget()).ok(),
            None => None,
        };
        let seconds = match slots.get(1) {
            Some(&(t, p)) => avap_hostfns::commands::gather_timeout(value(heap, t, p)?.as_ref()).ok(),
            None => None,
        };
        let run = &c.data().services.run;
        match (id, seconds) {
            (Some(id), Some(seconds)) => run
                .lock_blocks()
                .by_id
                .get(&id)
                .filter(|e| e.outcome.is_none())
                .map(|e| (id, seconds, Arc::clone(&e.done))),
            _ => None,
        }
    };
    if let Some((id, seconds, done)) = waiting {
        let run = Arc::clone(&c.data().services.run);
        let until = Instant::now()
            .checked_add(Duration::from_secs_f64(seconds.min(1e9)))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 30));
        let until = run.deadline.map_or(until, |d| until.min(d));
        shared::suspend(c.as_context_mut())?;
        loop {
            let notified = done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let running = run.block_running(&id);
            // A timeout already over does not wait at all (tokio's timer
            // would round it up to its next millisecond tick).
            if !running || Instant::now() >= until || tokio::time::timeout_at(until.into(), notified).await.is_err() {
                break;
            }
        }
        shared::resume(c.as_context_mut())?;
        let still_running = run.block_running(&id);
        if still_running && run.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(wasmtime::Error::new(LimitHit::new(
                LimitKind::TimeLimit,
                format!("wall-clock time limit reached while gather waited for block '{id}'"),
            )));
        }
    }
    command(c, sig, ptr, argc)
}
