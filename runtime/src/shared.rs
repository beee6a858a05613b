//! What the stores of one run share. A run is its main flow plus the
//! `go_async` blocks it starts; each flow has a store of its own (its own
//! instance, linear memory and heap, from the same `InstancePre`), and they
//! all draw on one set of budgets and write one response.
//!
//! All flows of a run are polled by the one task that runs it (see
//! [`crate::blocks`]), so only one of them executes at any moment.
//!
//! * **Fuel**: one pool; a flow works from a *lease* taken out of it, so
//!   what the flows burn together can never exceed the limit. While it is
//!   the only flow it holds the whole pool (a run without blocks behaves
//!   exactly as before). Leases are settled exactly inside host calls —
//!   when a flow starts a block, waits (network, database, `gather`),
//!   finishes, or calls a command after an epoch tick — where wasmtime's
//!   fuel counter is current. A flow in a loop without host calls is topped
//!   up from the epoch callback instead (to [`TOP_UP_TO`]): there the
//!   counter may lag by up to [`FUEL_SLICE`] and a write to it only reaches
//!   the store's reserve, so a top-up is at least `2 × FUEL_SLICE` and may
//!   lose up to one slice (counted as used; never more than was taken from
//!   the pool). So the flows' sum never exceeds the limit; near the end of
//!   the budget a flow can run dry while others still hold unused leases,
//!   ending the run with `FuelExhausted` up to about `TOP_UP_TO` per live
//!   flow before the limit.
//! * **Memory**: each store's heap counts its own bytes; the bytes of the
//!   other stores (as they last published them) and what the run keeps
//!   outside any store (results, block outcomes, snapshots in transit) are
//!   added to every limit check ([`crate::heap::Heap::shared`]). Memory only
//!   changes inside host calls, so publishing when a flow stops executing
//!   and refreshing when it resumes keeps this exact.
//! * **Time**: one deadline.
//! * **Output**: one result set ([`Results`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use avap_hostfns::effects::Effects;
use avap_hostfns::{HostError, LimitHit, LimitKind, Request, Value, memory};
use indexmap::IndexMap;
use wasmtime::{AsContextMut as _, InstancePre, StoreContextMut};

use crate::Limits;
use crate::blocks::BlockFuture;
use crate::load::Layout;
use crate::run::Failure;
use crate::state::RunState;

/// One run's shared state, behind an `Arc` in every store of the run.
pub struct RunShared {
    pub(crate) pre: InstancePre<RunState>,
    pub(crate) layout: Arc<Layout>,
    pub(crate) limits: Limits,
    /// The run's wall-clock deadline (`None` when unmetered).
    pub(crate) deadline: Option<Instant>,
    pub(crate) metered: bool,
    pub(crate) request: Arc<Request>,
    pub(crate) time_zone: avap_hostfns::zone::Zone,
    pub(crate) now: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) effects: Effects,
    /// Blocks one run may start.
    pub(crate) max_blocks: u32,
    /// Process-wide instance slots for blocks (see `RuntimeConfig::async_block_slots`).
    pub(crate) block_slots: Arc<tokio::sync::Semaphore>,
    /// Fuel not leased to any flow.
    fuel: AtomicU64,
    /// Blocks started and not finished (a mirror of
    /// `BlockTable::running` the epoch callback can read without a lock).
    pub(crate) flows_running: std::sync::atomic::AtomicU32,
    /// Bytes the run's stores last published (heaps, slot tables, linear
    /// memories, what their services keep).
    store_bytes: AtomicU64,
    /// Bytes the run keeps outside any store: results, block outcomes,
    /// snapshots on their way to a block.
    kept_bytes: AtomicU64,
    peak: AtomicU64,
    pub(crate) results: Mutex<Results>,
    pub(crate) blocks: Mutex<BlockTable>,
    /// Blocks started and not yet picked up by the driver, and the driver's
    /// waker (see [`crate::blocks::drive`]).
    pub(crate) spawned: Mutex<(Vec<BlockFuture>, Option<std::task::Waker>)>,
    /// A limit a block hit: it ends the run.
    pub(crate) failure: Mutex<Option<Failure>>,
}

impl RunShared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        pre: InstancePre<RunState>,
        layout: Arc<Layout>,
        limits: Limits,
        deadline: Option<Instant>,
        request: Request,
        time_zone: avap_hostfns::zone::Zone,
        now: Option<chrono::DateTime<chrono::Utc>>,
        effects: Effects,
        max_blocks: u32,
        block_slots: Arc<tokio::sync::Semaphore>,
    ) -> RunShared {
        RunShared {
            pre,
            layout,
            limits,
            metered: deadline.is_some(),
            deadline,
            request: Arc::new(request),
            time_zone,
            now,
            effects,
            max_blocks,
            block_slots,
            fuel: AtomicU64::new(limits.fuel),
            flows_running: std::sync::atomic::AtomicU32::new(0),
            store_bytes: AtomicU64::new(0),
            kept_bytes: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            results: Mutex::new(Results::new(limits.output_bytes)),
            blocks: Mutex::new(BlockTable::default()),
            spawned: Mutex::new((Vec::new(), None)),
            failure: Mutex::new(None),
        }
    }

    /// The run an idle recycled instance belongs to ([`crate::recycle`]):
    /// nothing to run, no request, no effects, no fuel, no block slots.
    pub(crate) fn idle(pre: InstancePre<RunState>, layout: Arc<Layout>) -> RunShared {
        RunShared::new(
            pre,
            layout,
            Limits {
                fuel: 0,
                ..Limits::default()
            },
            None,
            Request::default(),
            avap_hostfns::zone::Zone::UTC,
            None,
            Effects::default(),
            0,
            Arc::new(tokio::sync::Semaphore::new(0)),
        )
    }

    /// Fuel not leased to any flow.
    pub(crate) fn fuel_left(&self) -> u64 {
        self.fuel.load(Ordering::Relaxed)
    }

    /// Whether flows besides the main one are live (started, not finished).
    fn crowded(&self) -> bool {
        self.flows_running.load(Ordering::Relaxed) > 0
    }

    /// Lease fuel out of the pool: all of it while the main flow is alone,
    /// half of it otherwise.
    fn lease(&self) -> u64 {
        let crowded = self.crowded();
        let mut taken = 0;
        let _ = self.fuel.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |pool| {
            taken = if crowded { pool / 2 } else { pool };
            Some(pool - taken)
        });
        taken
    }

    /// Up to `wanted` more fuel out of the pool — at most half of it while
    /// other flows are live, so none of them starves the rest — or nothing
    /// when less than `min` is left.
    fn top_up(&self, wanted: u64, min: u64) -> u64 {
        let crowded = self.crowded();
        let mut taken = 0;
        let _ = self.fuel.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |pool| {
            let share = if crowded { pool / 2 } else { pool };
            taken = if pool < min {
                0
            } else {
                wanted.min(share).max(min).min(pool)
            };
            Some(pool - taken)
        });
        taken
    }

    /// A flow gives back the `left` it did not burn of the `given` it held.
    fn settle(&self, given: u64, left: u64) {
        self.fuel.fetch_add(left.min(given), Ordering::Relaxed);
    }

    /// A store's usage is now `own` bytes (it published `*published` before).
    pub(crate) fn publish(&self, published: &mut u64, own: u64) {
        if own >= *published {
            self.store_bytes.fetch_add(own - *published, Ordering::Relaxed);
        } else {
            self.store_bytes.fetch_sub(*published - own, Ordering::Relaxed);
        }
        *published = own;
        let total = self.store_bytes.load(Ordering::Relaxed) + self.kept_bytes.load(Ordering::Relaxed);
        self.peak.fetch_max(total, Ordering::Relaxed);
    }

    /// What a store that published `published` must count besides its own
    /// bytes: the other stores' and what the run keeps.
    pub(crate) fn shared_for(&self, published: u64) -> u64 {
        self.store_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(published)
            .saturating_add(self.kept_bytes.load(Ordering::Relaxed))
    }

    /// The run now keeps `bytes` more outside any store (already claimed).
    pub(crate) fn keep(&self, bytes: u64) {
        let kept = self.kept_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak
            .fetch_max(kept + self.store_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// `bytes` kept outside any store were freed (or moved into a store).
    pub(crate) fn release(&self, bytes: u64) {
        let _ = self
            .kept_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| Some(k.saturating_sub(bytes)));
    }

    /// Highest memory use of the whole run seen at a settling point.
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Flows that may allocate while one of them awaits: the main flow and
    /// the blocks not finished. An effect awaiting the network decodes its
    /// response within its share of the memory left.
    pub(crate) fn flows(&self) -> u64 {
        1 + u64::from(self.flows_running.load(Ordering::Relaxed))
    }

    pub(crate) fn lock_blocks(&self) -> MutexGuard<'_, BlockTable> {
        self.blocks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the block started last under `id` is still running.
    pub(crate) fn block_running(&self, id: &str) -> bool {
        self.lock_blocks().by_id.get(id).is_some_and(|e| e.outcome.is_none())
    }

    pub(crate) fn lock_results(&self) -> MutexGuard<'_, Results> {
        self.results.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A block ended the run with `failure` (the first one wins).
    pub(crate) fn fail(&self, failure: Failure) {
        let mut slot = self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(failure);
        }
        drop(slot);
        self.wake_driver();
    }

    pub(crate) fn wake_driver(&self) {
        let spawned = self.spawned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(w) = &spawned.1 {
            w.wake_by_ref();
        }
    }
}

/// Fuel a store burns between two calls of wasmtime's out-of-fuel hook
/// once other flows are live (`Store::fuel_async_yield_interval`): what the
/// epoch callback's view of the counter may lag by. About half a
/// millisecond of straight-line work.
pub(crate) const FUEL_SLICE: u64 = 1_000_000;

/// What the epoch callback tops a crowded flow's lease up to: well beyond
/// what a flow can burn between two ticks (2 ms), so a flow in a loop
/// without host calls does not run dry while the pool still holds fuel.
const TOP_UP_TO: u64 = 32 * FUEL_SLICE;

/// Inside a host call (the fuel counter is current): give the lease back,
/// and publish this store's memory. Before the flow waits.
pub(crate) fn suspend(mut cx: StoreContextMut<'_, RunState>) -> wasmtime::Result<()> {
    let run = Arc::clone(&cx.data().services.run);
    if run.metered {
        let left = cx.get_fuel()?;
        run.settle(cx.data().fuel_given, left);
        cx.data_mut().fuel_given = 0;
        cx.set_fuel(0)?;
    }
    sync_memory(cx.data_mut(), &run);
    Ok(())
}

/// Inside a host call: take a new lease and learn what the other flows
/// use. After the flow waited, and when a flow starts.
pub(crate) fn resume(mut cx: StoreContextMut<'_, RunState>) -> wasmtime::Result<()> {
    let run = Arc::clone(&cx.data().services.run);
    if run.metered {
        if run.crowded() {
            cx.fuel_async_yield_interval(Some(FUEL_SLICE))?;
        }
        let lease = run.lease();
        cx.set_fuel(lease)?;
        cx.data_mut().fuel_given = lease;
    }
    sync_memory(cx.data_mut(), &run);
    Ok(())
}

/// Inside a host call: settle and lease again (the other flows' share
/// changed: a block started, or an epoch tick asked for it).
pub(crate) fn rebalance(mut cx: StoreContextMut<'_, RunState>) -> wasmtime::Result<()> {
    suspend(cx.as_context_mut())?;
    resume(cx)
}

/// Inside a host call: when this flow's lease is low and the pool holds
/// fuel (other flows gave theirs back), top the lease up — to at least
/// `need`, if the pool has it. Cheap when there is nothing to take: one
/// atomic load.
pub(crate) fn top_up(mut cx: StoreContextMut<'_, RunState>, need: u64) -> wasmtime::Result<()> {
    let run = &cx.data().services.run;
    if !run.metered || run.fuel_left() == 0 {
        return Ok(());
    }
    let run = Arc::clone(run);
    let fuel = cx.get_fuel()?;
    let target = TOP_UP_TO.max(need);
    if fuel < target {
        let more = run.top_up(target - fuel, 1);
        if more > 0 {
            cx.set_fuel(fuel + more)?;
            cx.data_mut().fuel_given += more;
        }
    }
    Ok(())
}

/// From the epoch callback (the fuel counter may lag by one slice):
/// publish memory, and top up a flow whose lease runs low while others are
/// live.
pub(crate) fn tick(mut cx: StoreContextMut<'_, RunState>) -> wasmtime::Result<()> {
    let run = Arc::clone(&cx.data().services.run);
    if run.metered && run.crowded() {
        cx.data_mut().rebalance = true;
        let seen = cx.get_fuel()?;
        if seen < TOP_UP_TO {
            let more = run.top_up(TOP_UP_TO - seen, 2 * FUEL_SLICE);
            if more > 0 {
                cx.set_fuel(seen + more)?;
                cx.data_mut().fuel_given += more;
            }
        }
    }
    sync_memory(cx.data_mut(), &run);
    Ok(())
}

/// The flow is done (its store is about to be dropped): give the lease
/// back and withdraw its memory.
pub(crate) fn finish(mut cx: StoreContextMut<'_, RunState>) -> wasmtime::Result<()> {
    suspend(cx.as_context_mut())?;
    let run = Arc::clone(&cx.data().services.run);
    let state = cx.data_mut();
    run.publish(&mut state.published, 0);
    Ok(())
}

/// Publish this store's memory and learn the rest of the run's.
pub(crate) fn sync_memory(state: &mut RunState, run: &RunShared) {
    let own = state.heap.own_bytes();
    run.publish(&mut state.published, own);
    state.heap.shared = run.shared_for(state.published);
}

/// The response's `addResult` snapshots, written by every flow of the run,
/// and the output limit they share.
#[derive(Debug)]
pub struct Results {
    /// Each result's snapshot, in the order first added.
    pub(crate) values: IndexMap<String, Snapshot>,
    /// What the snapshots add to the response, as JSON bytes.
    bytes: u64,
    limit: u64,
}

impl Results {
    fn new(limit: u64) -> Results {
        Results {
            values: IndexMap::new(),
            bytes: 0,
            limit,
        }
    }

    /// Write the snapshot of `key = value` as JSON text, within the output
    /// limit and within `memory_available` (the buffer never grows past
    /// either); the caller claims the memory it keeps and the memory of the
    /// snapshot it replaces is released.
    pub(crate) fn write(&self, key: &str, value: &Value, memory_available: u64) -> Result<Written, HostError> {
        let (old, old_memory) = self
            .values
            .get(key)
            .map_or((0, 0), |s| (output_size(key, &s.text), s.memory));
        let overhead = output_size(key, "");
        let room = self.limit.saturating_add(old).saturating_sub(self.bytes + overhead);
        let mut text = CappedBuffer::new(room.min(memory_available));
        if serde_json::to_writer(&mut text, value).is_err() {
            // Over one of the two limits: measured again, only to say by
            // how much.
            let size = value.json_len().saturating_add(overhead);
            let next = self.bytes - old + size;
            if next > self.limit {
                return Err(LimitHit::new(
                    LimitKind::OutputLimit,
                    format!(
                        "response result would be {next} bytes; the limit is {} bytes",
                        self.limit
                    ),
                )
                .into());
            }
            // Otherwise the text outgrew the memory left.
            let hit = memory::MemoryBudget::new(memory_available)
                .claim(size)
                .err()
                .unwrap_or_else(|| LimitHit::new(LimitKind::MemoryLimit, "memory limit exceeded by a result snapshot"));
            return Err(hit.into());
        }
        let size = text.buf.len() as u64 + overhead;
        // The snapshot is kept as JSON text, under its key.
        let memory = memory::alloc_bytes(text.buf.capacity()) + memory::alloc_bytes(key.len()) + RESULT_ENTRY_BYTES;
        let text = String::from_utf8(text.buf).expect("serde_json writes UTF-8");
        Ok(Written {
            text,
            memory,
            old_memory,
            next: self.bytes - old + size,
        })
    }

    /// Store a snapshot written (and claimed) with [`Results::write`].
    pub(crate) fn insert(&mut self, key: &str, m: Written) {
        self.bytes = m.next;
        let snapshot = Snapshot {
            text: m.text,
            memory: m.memory,
        };
        self.values.insert(key.to_owned(), snapshot);
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}

/// One `addResult` snapshot.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The value as compact JSON text.
    pub text: String,
    /// The memory it keeps (claimed when it was written).
    memory: u64,
}

/// JSON bytes `key: text` adds to the response: the text, the key, its
/// quotes, the colon and a comma.
fn output_size(key: &str, text: &str) -> u64 {
    (text.len() + key.len() + 4) as u64
}

/// Bytes of the table entry a result takes beside its texts (key, snapshot,
/// hash).
const RESULT_ENTRY_BYTES: u64 = size_of::<String>() as u64 + size_of::<Snapshot>() as u64 + 16;

/// What one `addResult` costs (see [`Results::write`]).
pub(crate) struct Written {
    text: String,
    pub memory: u64,
    pub old_memory: u64,
    next: u64,
}

/// JSON text written into a buffer that refuses to grow past `cap` bytes
/// (the write fails instead), doubling up to it.
struct CappedBuffer {
    buf: Vec<u8>,
    cap: usize,
}

impl CappedBuffer {
    fn new(cap: u64) -> CappedBuffer {
        CappedBuffer {
            buf: Vec::new(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
        }
    }

    /// Room for `needed` bytes in all, or the error that stops the writer.
    #[cold]
    fn grow(&mut self, needed: usize) -> std::io::Result<()> {
        if needed > self.cap {
            return Err(std::io::Error::other("over the limit"));
        }
        if needed > self.buf.capacity() {
            let grown = (self.buf.capacity() * 2).max(needed).max(64).min(self.cap);
            self.buf.reserve_exact(grown - self.buf.len());
        }
        Ok(())
    }
}

impl std::io::Write for CappedBuffer {
    #[inline]
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.write_all(data)?;
        Ok(data.len())
    }

    // serde_json writes through `write_all`, a token or a run of string
    // bytes at a time: the default one loops over `write` out of line.
    #[inline]
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        let needed = self.buf.len().saturating_add(data.len());
        if needed > self.buf.capacity() || needed > self.cap {
            self.grow(needed)?;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `go_async` blocks of a run, by id.
#[derive(Debug, Default)]
pub struct BlockTable {
    pub(crate) by_id: HashMap<String, BlockEntry>,
    /// Blocks started so far (numbers their generations).
    pub(crate) started: u32,
    /// Blocks started and not yet gathered: the cap counts these. It
    /// depends only on the order of `go_async` and `gather` in the
    /// script, never on timing, so a script hits it always or never.
    pub(crate) live: u32,
    /// Blocks started and not finished.
    pub(crate) running: u32,
}

#[derive(Debug)]
pub(crate) struct BlockEntry {
    /// Which start of this id the entry is about: a later `go_async` with
    /// the same id replaces it, and the earlier block's outcome is dropped.
    pub generation: u32,
    pub outcome: Option<Result<Value, HostError>>,
    /// Bytes its outcome keeps.
    pub kept: u64,
    /// `gather` has read its outcome (it no longer counts against the cap).
    pub gathered: bool,
    pub done: Arc<tokio::sync::Notify>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: i64) -> Value {
        Value::list(
            (0..n)
                .map(|i| Value::dict([("id".to_owned(), Value::Int(i))].into_iter().collect()))
                .collect(),
        )
    }

    #[test]
    fn a_snapshot_is_written_once_and_replacing_it_frees_its_share_of_the_output() {
        let mut results = Results::new(1000);
        let m = results.write("r", &rows(3), u64::MAX).unwrap();
        assert_eq!(m.text, r#"[{"id":0},{"id":1},{"id":2}]"#);
        assert_eq!(m.next, m.text.len() as u64 + 5);
        assert!(m.memory >= m.text.len() as u64);
        results.insert("r", m);
        // The same key again: measured against the limit without the old one.
        let m = results.write("r", &rows(2), u64::MAX).unwrap();
        assert_eq!(m.next, output_size("r", &m.text));
        assert!(m.old_memory > 0);
    }

    #[test]
    fn a_snapshot_over_the_output_limit_says_how_big_it_would_be() {
        let results = Results::new(100);
        let Err(HostError::Limit(hit)) = results.write("r", &rows(50), u64::MAX) else {
            panic!("over the output limit");
        };
        assert_eq!(hit.kind, LimitKind::OutputLimit);
        let size = rows(50).json_len() + 5;
        assert!(
            hit.message.contains(&format!("would be {size} bytes")),
            "{}",
            hit.message
        );
    }

    #[test]
    fn a_snapshot_never_grows_its_buffer_past_the_memory_left() {
        let results = Results::new(u64::MAX / 4);
        let Err(HostError::Limit(hit)) = results.write("r", &rows(1000), 4096) else {
            panic!("over the memory left");
        };
        assert_eq!(hit.kind, LimitKind::MemoryLimit);
        let mut buffer = CappedBuffer::new(100);
        assert!(std::io::Write::write_all(&mut buffer, &[b'x'; 60]).is_ok());
        assert!(std::io::Write::write_all(&mut buffer, &[b'x'; 60]).is_err());
        assert!(buffer.buf.capacity() <= 100);
    }
}
