//! The per-run value heap: strings, lists and dicts behind integer handles,
//! every byte accounted against the run's memory limit.
//!
//! Handles `0..pinned` are the module's string constants, interned before
//! the run starts. Nothing is freed during a run (runs are short; the whole
//! heap is dropped with the store), so the accounted size only grows —
//! see docs/ARCHITECTURE.md for why and what that costs.

use avap_hostfns::{LimitHit, LimitKind, Value};

#[derive(Debug, Default)]
pub struct Heap {
    slots: Vec<Value>,
    bytes: u64,
    /// Bytes of linear memory, counted against the same limit.
    pub linear_bytes: u64,
    pub limit: u64,
    peak: u64,
}

/// A handle that does not name a live object: only a corrupted module
/// could produce one, so it ends the run.
#[derive(Debug, thiserror::Error)]
#[error("invalid heap handle {0}")]
pub struct BadHandle(pub i64);

impl Heap {
    pub fn new(limit: u64) -> Heap {
        Heap { limit, ..Heap::default() }
    }

    pub fn used(&self) -> u64 {
        self.bytes + self.linear_bytes
    }

    pub fn peak(&self) -> u64 {
        self.peak.max(self.used())
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
        self.peak = self.peak.max(self.used());
        Ok(())
    }

    pub fn alloc(&mut self, v: Value) -> Result<i64, LimitHit> {
        self.account(v.heap_bytes() as u64)?;
        self.slots.push(v);
        Ok(i64::try_from(self.slots.len() - 1).unwrap_or(i64::MAX))
    }

    pub fn get(&self, h: i64) -> Result<&Value, BadHandle> {
        usize::try_from(h).ok().and_then(|i| self.slots.get(i)).ok_or(BadHandle(h))
    }

    pub fn get_mut(&mut self, h: i64) -> Result<&mut Value, BadHandle> {
        usize::try_from(h).ok().and_then(|i| self.slots.get_mut(i)).ok_or(BadHandle(h))
    }


}
