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
        let index = match self.free.pop() {
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
        };
        Ok(i64::try_from(index).unwrap_or(i64::MAX))
    }

    pub fn get(&self, h: i64) -> Result<&Value, BadHandle> {
        usize::try_from(h)
            .ok()
            .and_then(|i| self.slots.get(i))
            .ok_or(BadHandle(h))
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
        for (i, alive) in live.iter().enumerate() {
            if !alive && self.sizes[i] > 0 {
                self.bytes -= self.sizes[i];
                self.sizes[i] = 0;
                self.slots[i] = Value::None;
                self.free.push(i);
            }
        }
        self.since_gc = 0;
        self.live_after_gc = self.bytes;
    }
}
