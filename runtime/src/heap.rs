//! The per-run value heap: strings, lists and dicts behind integer handles,
//! every byte the allocator holds for them accounted against the run's
//! memory limit (see `avap_hostfns::memory` for the model).
//!
//! Handles `0..pinned` are the module's string constants, interned before
//! the run starts and never freed. Containers own their elements (there
//! are no handles inside heap values), so the garbage collector only needs
//! the roots: the top-level variable slots in linear memory, read at a safe
//! point (`rt.collect`, polled on top-level loop back-edges), plus the
//! handles the host itself holds. Objects that became garbage inside a
//! function call are reclaimed at the next top-level safe point.
//!
//! What is counted: each slot's [`Footprint`] (buffers, tables, elements),
//! the slot tables themselves (by capacity), what the store's services
//! retain (routes: [`Heap::retained`]), the linear memory, and what the rest
//! of the run uses ([`Heap::shared`]: its other stores, results, `go_async`
//! outcomes). Values are at most `memory::MAX_DEPTH` deep: [`Heap::alloc`] and
//! [`Heap::settle`] refuse deeper ones, so host code that walks a value
//! recursively never runs out of stack.
//!
//! String concatenation appends in place (see [`Heap::append_str`]): the
//! result takes over the left operand's buffer and the left operand's slot
//! becomes a *prefix view* of it. Strings are immutable, so the old handle
//! still reads its old text; `s = s + "x"` in a loop is then amortised
//! O(length of "x") instead of a copy of the whole of `s` every time.

use std::borrow::Cow;
use std::mem::size_of;

use avap_hostfns::memory::{self, Footprint, MemoryBudget, VALUE_BYTES};
use avap_hostfns::{LimitHit, LimitKind, Value};

#[derive(Debug, Default)]
pub struct Heap {
    slots: Vec<Value>,
    /// Accounted bytes of each slot beyond its inline `Value` (0 for a free
    /// slot): its footprint as allocated or grown in place.
    sizes: Vec<u64>,
    /// Nesting depth of each slot's value.
    depths: Vec<u16>,
    free: Vec<usize>,
    pinned: usize,
    /// Sum of `sizes`.
    bytes: u64,
    /// Bytes of the slot tables (`slots`, `sizes`, `depths`, `prefix_of`) by capacity.
    tables: u64,
    /// Bytes of linear memory, counted against the same limit.
    pub linear_bytes: u64,
    /// Bytes this store's services hold outside the heap (routes, blocks'
    /// snapshots); set by the host after each call that may change it.
    pub retained: u64,
    /// Bytes the rest of the run uses: its other stores (as they last
    /// published) and what it keeps outside any store (results, block
    /// outcomes). Counted against the same limit; see `crate::shared`.
    pub shared: u64,
    pub limit: u64,
    peak: u64,
    /// Allocation since the last poll / collection, to pace the polls.
    since_poll: u64,
    since_gc: u64,
    live_after_gc: u64,
    /// Prefix views, by slot: (the slot that took over its buffer, its byte
    /// length). The slot itself holds an empty placeholder. Indexed like
    /// `slots` (shorter when the last slots are no views).
    prefix_of: Vec<Option<(usize, usize)>>,
}

/// Why the heap could not give a value.
#[derive(Debug, thiserror::Error)]
pub enum HeapError {
    /// A handle that does not name a live object: only a corrupted module
    /// could produce one, so it ends the run.
    #[error("invalid heap handle {0}")]
    BadHandle(i64),
    #[error(transparent)]
    Limit(#[from] LimitHit),
}

/// Allocation between polls the pacing aims for.
const POLL_BYTES: u64 = 256 << 10;
const MAX_POLL_INTERVAL: u64 = 4096;

/// Bytes of slot-table entries per slot: the inline value, its size and
/// depth (a prefix view entry is counted separately, when one exists).
const SLOT_BYTES: u64 = VALUE_BYTES + size_of::<u64>() as u64 + size_of::<u16>() as u64;
const VIEW_ENTRY_BYTES: u64 = size_of::<Option<(usize, usize)>>() as u64;

impl Heap {
    pub fn new(limit: u64) -> Heap {
        Heap {
            limit,
            ..Heap::default()
        }
    }

    pub fn used(&self) -> u64 {
        self.own_bytes().saturating_add(self.shared)
    }

    /// What this store uses, without the rest of the run.
    pub fn own_bytes(&self) -> u64 {
        self.bytes
            .saturating_add(self.tables)
            .saturating_add(self.retained)
            .saturating_add(self.linear_bytes)
    }

    pub fn peak(&self) -> u64 {
        self.peak.max(self.used())
    }

    /// What host code may still allocate during one call.
    pub fn budget(&self) -> MemoryBudget {
        MemoryBudget::new(self.limit.saturating_sub(self.used()))
    }

    /// Mark everything allocated so far as permanent (the constants).
    pub fn pin_all(&mut self) {
        self.pinned = self.slots.len();
    }

    /// `MemoryLimit` unless `bytes` more fit under the limit.
    fn check(&self, bytes: u64) -> Result<(), LimitHit> {
        let next = self.used().saturating_add(bytes);
        if next > self.limit {
            return Err(LimitHit::new(
                LimitKind::MemoryLimit,
                format!("memory limit of {} bytes exceeded (would use {next} bytes)", self.limit),
            ));
        }
        Ok(())
    }

    /// Account `bytes` more; fails with `MemoryLimit` past the limit.
    fn account(&mut self, bytes: u64) -> Result<(), LimitHit> {
        self.check(bytes)?;
        self.bytes += bytes;
        self.note_growth(bytes);
        Ok(())
    }

    fn note_growth(&mut self, bytes: u64) {
        self.since_poll += bytes;
        self.since_gc += bytes;
        self.peak = self.peak.max(self.used());
    }

    /// Store `v` in a new slot. Fails with `MemoryLimit` (nothing stored)
    /// past the memory limit or past the nesting limit.
    pub fn alloc(&mut self, v: Value) -> Result<i64, LimitHit> {
        let footprint = v.footprint();
        self.alloc_measured(v, footprint)
    }

    /// [`Heap::alloc`] of a value whose footprint the caller measured.
    pub fn alloc_measured(&mut self, v: Value, footprint: Footprint) -> Result<i64, LimitHit> {
        memory::check_depth(footprint.depth)?;
        self.room_for_slot()?;
        self.account(footprint.bytes)?;
        let depth = u16::try_from(footprint.depth).unwrap_or(u16::MAX);
        Ok(i64::try_from(self.insert(v, footprint.bytes, depth)).unwrap_or(i64::MAX))
    }

    /// Before a new slot is pushed: the slot tables' growth, accounted
    /// before they grow (they double, and the old tables exist while the
    /// new ones are filled).
    fn room_for_slot(&mut self) -> Result<(), LimitHit> {
        if !self.free.is_empty() || self.slots.len() < self.slots.capacity() {
            return Ok(());
        }
        let new_capacity = (self.slots.capacity() * 2).max(64);
        self.check(SLOT_BYTES * new_capacity as u64)?;
        self.slots.reserve_exact(new_capacity - self.slots.len());
        self.sizes.reserve_exact(new_capacity - self.sizes.len());
        self.depths.reserve_exact(new_capacity - self.depths.len());
        self.recount_tables();
        Ok(())
    }

    fn recount_tables(&mut self) {
        self.tables = memory::alloc_bytes(self.slots.capacity() * size_of::<Value>())
            + memory::alloc_bytes(self.sizes.capacity() * size_of::<u64>())
            + memory::alloc_bytes(self.depths.capacity() * size_of::<u16>())
            + memory::alloc_bytes(self.prefix_of.capacity() * size_of::<Option<(usize, usize)>>());
        self.peak = self.peak.max(self.used());
    }

    /// A slot's value grew (or shrank) in place by `net` bytes, claimed from
    /// a [`Heap::budget`] before it was allocated; it now nests at least
    /// `depth` deep.
    pub fn settle(&mut self, h: i64, net: i64, depth: u32) -> Result<(), HeapError> {
        let index = usize::try_from(h)
            .ok()
            .filter(|&i| i < self.slots.len())
            .ok_or(HeapError::BadHandle(h))?;
        memory::check_depth(depth)?;
        let depth = u16::try_from(depth).unwrap_or(u16::MAX);
        self.depths[index] = self.depths[index].max(depth);
        let size = &mut self.sizes[index];
        if net >= 0 {
            let grown = net.unsigned_abs();
            *size += grown;
            self.bytes += grown;
            self.note_growth(grown);
        } else {
            let shrunk = net.unsigned_abs().min(*size);
            *size -= shrunk;
            self.bytes -= shrunk;
        }
        Ok(())
    }

    /// Put `v`, already accounted as `size` bytes, in a free slot.
    fn insert(&mut self, v: Value, size: u64, depth: u16) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = v;
                self.sizes[i] = size;
                self.depths[i] = depth;
                i
            }
            None => {
                self.slots.push(v);
                self.sizes.push(size);
                self.depths.push(depth);
                self.slots.len() - 1
            }
        }
    }

    /// The value behind `h`. A prefix view is read from the buffer that
    /// took it over: a copy (old versions of a string are rarely read),
    /// refused with `MemoryLimit` when it would not fit.
    pub fn get(&self, h: i64) -> Result<Cow<'_, Value>, HeapError> {
        let index = usize::try_from(h)
            .ok()
            .filter(|&i| i < self.slots.len())
            .ok_or(HeapError::BadHandle(h))?;
        let Some((mut at, len)) = self.view(index) else {
            return Ok(Cow::Borrowed(&self.slots[index]));
        };
        while let Some((next, _)) = self.view(at) {
            at = next;
        }
        self.budget().claim_str(len)?;
        match self.slots.get(at) {
            Some(Value::Str(buffer)) => buffer
                .get(..len)
                .map(|text| Cow::Owned(Value::Str(text.to_owned())))
                .ok_or(HeapError::BadHandle(h)),
            _ => Err(HeapError::BadHandle(h)),
        }
    }

    /// The slot whose buffer holds string `h` and its length (a prefix view
    /// resolved to the buffer it reads, without copying).
    fn resolve_str(&self, h: i64) -> Result<(usize, usize), HeapError> {
        let index = usize::try_from(h)
            .ok()
            .filter(|&i| i < self.slots.len())
            .ok_or(HeapError::BadHandle(h))?;
        let (at, len) = match self.view(index) {
            Some((mut at, len)) => {
                while let Some((next, _)) = self.view(at) {
                    at = next;
                }
                (at, len)
            }
            None => match &self.slots[index] {
                Value::Str(s) => (index, s.len()),
                _ => return Err(HeapError::BadHandle(h)),
            },
        };
        match self.slots.get(at) {
            Some(Value::Str(s)) if s.len() >= len => Ok((at, len)),
            _ => Err(HeapError::BadHandle(h)),
        }
    }

    /// The prefix view at slot `index`, if it is one.
    fn view(&self, index: usize) -> Option<(usize, usize)> {
        self.prefix_of.get(index).copied().flatten()
    }

    /// `left + right` for strings, appending in place when `left` owns its
    /// buffer (not a constant, not a prefix view): the result is a new
    /// handle owning the grown buffer, and `left` becomes a prefix view of
    /// it. `None` when `left` cannot be extended (the caller copies
    /// instead). Returns the handle and the bytes appended.
    pub fn append_str(&mut self, left: i64, right: i64) -> Result<Option<(i64, usize)>, HeapError> {
        let Some(index) = usize::try_from(left).ok().filter(|&i| i >= self.pinned) else {
            return Ok(None);
        };
        let (old_len, capacity) = match self.slots.get(index) {
            Some(Value::Str(s)) if self.view(index).is_none() => (s.len(), s.capacity()),
            _ => return Ok(None),
        };
        let (tail_at, tail_len) = self.resolve_str(right)?;
        // The buffer grows by half (amortised O(1) appends; doubling would
        // hold up to twice the text, and three times while it moves) and is
        // accounted by its capacity; the old handle keeps a view entry.
        let needed = old_len + tail_len;
        let new_capacity = if needed <= capacity {
            capacity
        } else {
            needed.max(capacity + capacity / 2)
        };
        let grown_bytes = memory::alloc_bytes(new_capacity);
        if self.prefix_of.capacity() <= index {
            // The view table grows too (doubling).
            let entries = (index + 1).max(self.prefix_of.capacity() * 2);
            self.check(entries as u64 * VIEW_ENTRY_BYTES)?;
            self.prefix_of.reserve_exact(entries - self.prefix_of.len());
            self.recount_tables();
        }
        self.room_for_slot()?;
        // While the buffer moves, the old and the new allocation both exist.
        let moving = if new_capacity > capacity { grown_bytes } else { 0 };
        self.account((grown_bytes + moving).saturating_sub(self.sizes[index]))?;
        self.bytes -= moving;
        let Value::Str(mut buffer) = std::mem::take(&mut self.slots[index]) else {
            unreachable!("checked to be a string above");
        };
        buffer.reserve_exact(new_capacity - old_len);
        if tail_at == index {
            // `s + s`, or `s` plus an older version of itself.
            buffer.extend_from_within(..tail_len);
        } else if let Some(Value::Str(tail)) = self.slots.get(tail_at) {
            buffer.push_str(&tail[..tail_len]);
        }
        self.sizes[index] = 0;
        let new_index = self.insert(Value::Str(buffer), grown_bytes, 0);
        if self.prefix_of.len() <= index {
            self.prefix_of.resize(index + 1, None);
        }
        self.prefix_of[index] = Some((new_index, old_len));
        Ok(Some((i64::try_from(new_index).unwrap_or(i64::MAX), tail_len)))
    }

    pub fn get_mut(&mut self, h: i64) -> Result<&mut Value, HeapError> {
        usize::try_from(h)
            .ok()
            .filter(|&i| self.view(i).is_none())
            .and_then(|i| self.slots.get_mut(i))
            .ok_or(HeapError::BadHandle(h))
    }

    /// Whether enough was allocated since the last poll that a top-level
    /// loop should poll now rather than when its countdown says.
    pub fn poll_due(&self) -> bool {
        self.since_poll > POLL_BYTES
    }

    /// At a safe point: collect if enough was allocated since the last
    /// collection. `roots` are every handle still reachable. Returns the
    /// number of loop iterations until the next poll, paced so about
    /// [`POLL_BYTES`] are allocated between polls.
    pub fn poll(&mut self, iterations_since_poll: u64, roots: impl FnOnce() -> Vec<i64>) -> u64 {
        let threshold = (1 << 20u64).max(self.live_after_gc).min(self.limit / 4 + 1);
        if self.since_gc > threshold {
            self.collect(&roots());
        }
        let rate = self.since_poll / iterations_since_poll.max(1);
        self.since_poll = 0;
        POLL_BYTES
            .checked_div(rate)
            .map_or(MAX_POLL_INTERVAL, |n| n.clamp(1, MAX_POLL_INTERVAL))
    }

    fn collect(&mut self, roots: &[i64]) {
        let mut live = vec![false; self.slots.len()];
        for flag in live.iter_mut().take(self.pinned) {
            *flag = true;
        }
        for &h in roots {
            if let Some(flag) = usize::try_from(h).ok().and_then(|i| live.get_mut(i)) {
                *flag = true;
            }
        }
        // A live prefix view keeps the buffer it reads from alive; it is
        // pointed straight at that buffer, so the views in between can go.
        for start in 0..self.prefix_of.len() {
            let Some((mut at, len)) = self.view(start).filter(|_| live[start]) else {
                continue;
            };
            while let Some((next, _)) = self.view(at) {
                at = next;
            }
            self.prefix_of[start] = Some((at, len));
            live[at] = true;
        }
        for (i, alive) in live.iter().enumerate() {
            let is_view = self.view(i).is_some();
            if !alive && i >= self.pinned && (self.sizes[i] > 0 || is_view || !is_empty(&self.slots[i])) {
                self.bytes -= self.sizes[i];
                self.sizes[i] = 0;
                self.depths[i] = 0;
                self.slots[i] = Value::None;
                self.free.push(i);
                if let Some(view) = self.prefix_of.get_mut(i) {
                    *view = None;
                }
            }
        }
        self.since_gc = 0;
        self.live_after_gc = self.bytes;
    }
}

/// A free slot holds `None`.
fn is_empty(v: &Value) -> bool {
    matches!(v, Value::None)
}
