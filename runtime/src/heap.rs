//! The per-run value heap: strings, lists and dicts behind integer handles,
//! every byte accounted against the run's memory limit.
//!
//! Handles `0..pinned` are the module's string constants, interned before
//! the run starts and never freed. Containers own their elements (there
//! are no handles inside heap values), so the garbage collector only needs
//! the roots: the top-level variable slots in linear memory, read at a safe
//! point (`rt.collect`, polled on top-level loop back-edges), plus the
//! handles the host itself holds. Objects that became garbage inside a
//! function call are reclaimed at the next top-level safe point.
//!
//! String concatenation appends in place (see [`Heap::append_str`]): the
//! result takes over the left operand's buffer and the left operand's slot
//! becomes a *prefix view* of it. Strings are immutable, so the old handle
//! still reads its old text; `s = s + "x"` in a loop is then amortised
//! O(length of "x") instead of a copy of the whole of `s` every time.

use std::borrow::Cow;

use avap_hostfns::{LimitHit, LimitKind, Value};

#[derive(Debug, Default)]
pub struct Heap {
    slots: Vec<Value>,
    /// Accounted bytes of each slot (0 for a free slot).
    sizes: Vec<u64>,
    free: Vec<usize>,
    pinned: usize,
    bytes: u64,
    /// Bytes of linear memory, counted against the same limit.
    pub linear_bytes: u64,
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

/// A handle that does not name a live object: only a corrupted module
/// could produce one, so it ends the run.
#[derive(Debug, thiserror::Error)]
#[error("invalid heap handle {0}")]
pub struct BadHandle(pub i64);

/// Allocation between polls the pacing aims for.
const POLL_BYTES: u64 = 256 << 10;
const MAX_POLL_INTERVAL: u64 = 4096;

impl Heap {
    pub fn new(limit: u64) -> Heap {
        Heap {
            limit,
            ..Heap::default()
        }
    }

    pub fn used(&self) -> u64 {
        self.bytes + self.linear_bytes
    }

    pub fn peak(&self) -> u64 {
        self.peak.max(self.used())
    }

    /// Mark everything allocated so far as permanent (the constants).
    pub fn pin_all(&mut self) {
        self.pinned = self.slots.len();
    }

    /// Account `bytes` more; fails with `MemoryLimit` past the limit.
    pub fn account(&mut self, bytes: u64) -> Result<(), LimitHit> {
        let next = self.used().saturating_add(bytes);
        if next > self.limit {
            return Err(LimitHit::new(
                LimitKind::MemoryLimit,
                format!("memory limit of {} bytes exceeded (would use {next} bytes)", self.limit),
            ));
        }
        self.bytes += bytes;
        self.since_poll += bytes;
        self.since_gc += bytes;
        self.peak = self.peak.max(self.used());
        Ok(())
    }

    /// Account `bytes` more to the object behind `h` (it grew in place).
    pub fn grow(&mut self, h: i64, bytes: u64) -> Result<(), LimitHit> {
        self.account(bytes)?;
        if let Some(size) = usize::try_from(h).ok().and_then(|i| self.sizes.get_mut(i)) {
            *size += bytes;
        }
        Ok(())
    }

    pub fn alloc(&mut self, v: Value) -> Result<i64, LimitHit> {
        let size = v.heap_bytes() as u64;
        self.account(size)?;
        Ok(i64::try_from(self.insert(v, size)).unwrap_or(i64::MAX))
    }

    /// Put `v`, already accounted as `size` bytes, in a free slot.
    fn insert(&mut self, v: Value, size: u64) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = v;
                self.sizes[i] = size;
                i
            }
            None => {
                self.slots.push(v);
                self.sizes.push(size);
                self.slots.len() - 1
            }
        }
    }

    /// The value behind `h`. A prefix view is read from the buffer that
    /// took it over (a copy: old versions of a string are rarely read).
    pub fn get(&self, h: i64) -> Result<Cow<'_, Value>, BadHandle> {
        let index = usize::try_from(h)
            .ok()
            .filter(|&i| i < self.slots.len())
            .ok_or(BadHandle(h))?;
        let Some((mut at, len)) = self.view(index) else {
            return Ok(Cow::Borrowed(&self.slots[index]));
        };
        while let Some((next, _)) = self.view(at) {
            at = next;
        }
        match self.slots.get(at) {
            Some(Value::Str(buffer)) => buffer
                .get(..len)
                .map(|text| Cow::Owned(Value::Str(text.to_owned())))
                .ok_or(BadHandle(h)),
            _ => Err(BadHandle(h)),
        }
    }

    /// The prefix view at slot `index`, if it is one.
    fn view(&self, index: usize) -> Option<(usize, usize)> {
        self.prefix_of.get(index).copied().flatten()
    }

    /// `h + tail` for a string `h`, appending in place when `h` owns its
    /// buffer (not a constant, not a prefix view): the result is a new
    /// handle owning the grown buffer, and `h` becomes a prefix view of it.
    /// `None` when `h` cannot be extended (the caller copies instead).
    pub fn append_str(&mut self, h: i64, tail: &str) -> Result<Option<i64>, LimitHit> {
        let Some(index) = usize::try_from(h).ok().filter(|&i| i >= self.pinned) else {
            return Ok(None);
        };
        let (old_len, capacity) = match self.slots.get(index) {
            Some(Value::Str(s)) if self.view(index).is_none() => (s.len(), s.capacity()),
            _ => return Ok(None),
        };
        // The buffer grows by doubling (amortised O(1) appends) and is
        // accounted by its capacity; the old handle keeps only a slot's
        // overhead.
        let needed = old_len + tail.len();
        let new_capacity = if needed <= capacity {
            capacity
        } else {
            needed.max(capacity * 2)
        };
        let view_bytes = Value::None.heap_bytes() as u64;
        let grown_bytes = view_bytes + new_capacity as u64;
        self.account((grown_bytes + view_bytes).saturating_sub(self.sizes[index]))?;
        let Value::Str(mut buffer) = std::mem::take(&mut self.slots[index]) else {
            unreachable!("checked to be a string above");
        };
        buffer.reserve_exact(new_capacity - old_len);
        buffer.push_str(tail);
        self.sizes[index] = view_bytes;
        let new_index = self.insert(Value::Str(buffer), grown_bytes);
        if self.prefix_of.len() <= index {
            self.prefix_of.resize(index + 1, None);
        }
        self.prefix_of[index] = Some((new_index, old_len));
        Ok(Some(i64::try_from(new_index).unwrap_or(i64::MAX)))
    }

    pub fn get_mut(&mut self, h: i64) -> Result<&mut Value, BadHandle> {
        usize::try_from(h)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
            .ok_or(BadHandle(h))
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
            if !alive && self.sizes[i] > 0 {
                self.bytes -= self.sizes[i];
                self.sizes[i] = 0;
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
