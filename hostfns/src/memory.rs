//! What host values cost in memory, and the budget host code claims from
//! *before* it allocates (DESIGN.md: "host work is bounded like wasm work").
//!
//! * [`Value::footprint`] measures what the allocator holds for a value —
//!   buffer and table capacities, not lengths; per-entry overhead of dicts
//!   (hash, key, value, index) and lists; allocator rounding — and how deep
//!   it nests, without recursion.
//! * [`MAX_DEPTH`] bounds nesting. Every routine that walks a value
//!   recursively (clone, drop, comparisons, `str()`, JSON) then recurses at
//!   most that deep, which the run's fiber stack has room for.
//! * [`MemoryBudget`] is what is left of a run's memory limit during one host
//!   call. Code that is about to allocate an amount it can compute claims it
//!   first; a claim past the budget fails with `MemoryLimit` and nothing is
//!   allocated. The container helpers ([`push`], [`insert`], [`replace`])
//!   claim table growth before it happens and record what they free, so the
//!   budget's [`MemoryBudget::net`] is what the call left allocated.
//!
//! The model is checked against the real allocator: the adversarial corpus
//! (`tests/adversarial/`) runs every hostile shape under `avap run` and
//! bounds its peak RSS by the base RSS plus 1.5 × the memory limit.

use std::mem::size_of;

use crate::limits::{LimitHit, LimitKind};
use crate::value::{Dict, Value};

/// Deepest nesting of lists and dicts a value may have (a string or number
/// is depth 0, `[]` depth 1, `[[1]]` depth 2). Building anything deeper
/// ends the run with `MemoryLimit`.
///
/// The same bound as JSON input (`serde_json` reads at most 127 levels: its
/// recursion limit of 128 counts the document itself), so
/// every value a script builds can be read back as JSON — by
/// `variableFromJSON`, and by clients that parse responses with the usual
/// limits — and every recursive walk over a value stays far from the end
/// of a run's stack.
pub const MAX_DEPTH: u32 = 127;

/// Bytes of one `Value` inline (in a list's buffer, a dict entry, a heap slot).
pub const VALUE_BYTES: u64 = VALUE_SIZE as u64;
const VALUE_SIZE: usize = size_of::<Value>();

/// Bytes of one dict entry in its entry table: the cached hash, the key's
/// `String` header and the value (`indexmap`'s `Bucket`).
const ENTRY_SIZE: usize = size_of::<u64>() + size_of::<String>() + size_of::<Value>();

/// Bytes the allocator hands out for a request of `n` bytes: nothing for an
/// empty buffer, whole 16-byte granules for small ones, and an eighth more
/// for larger ones (mimalloc's size classes are spaced at most 12.5% apart;
/// glibc's chunk header is smaller than either margin).
#[inline]
pub const fn alloc_bytes(n: usize) -> u64 {
    let n = n as u64;
    match n {
        0 => 0,
        1..=128 => n.next_multiple_of(16),
        _ => n + n / 8,
    }
}

/// Bytes of the shared box a list lives in (copy-on-write, see [`Value`]):
/// the two reference counts and the `Vec` header.
pub const LIST_BOX: u64 = alloc_bytes(2 * size_of::<usize>() + size_of::<Vec<Value>>());

/// Bytes of the shared box a dict lives in: the two reference counts and
/// the map's header.
pub const DICT_BOX: u64 = alloc_bytes(2 * size_of::<usize>() + size_of::<Dict>());

/// Bytes of a list's buffer with room for `capacity` values.
pub fn list_table(capacity: usize) -> u64 {
    alloc_bytes(capacity.saturating_mul(VALUE_SIZE))
}

/// Bytes of a dict's tables with room for `capacity` entries: the entry
/// vector plus the hash index (a power-of-two number of buckets, at most
/// 7/8 full, eight bytes and one control byte each, plus a group of control
/// bytes at the end).
pub fn dict_table(capacity: usize) -> u64 {
    if capacity == 0 {
        return 0;
    }
    let buckets = index_buckets(capacity);
    alloc_bytes(capacity.saturating_mul(ENTRY_SIZE)) + alloc_bytes(buckets * 9 + 16)
}

/// Buckets of a hash index that holds `capacity` entries (hashbrown's rule).
fn index_buckets(capacity: usize) -> usize {
    if capacity < 4 {
        4
    } else if capacity < 8 {
        8
    } else {
        capacity.saturating_mul(8).div_ceil(7).next_power_of_two()
    }
}

/// What the allocator holds for a value beyond its own inline
/// [`VALUE_BYTES`], and how deep it nests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    /// Buffers, tables and everything in them, in bytes.
    pub bytes: u64,
    /// 0 for scalars and strings, 1 + the deepest element for containers.
    pub depth: u32,
}

impl Value {
    /// [`Footprint`] of this value, measured with an explicit stack (the
    /// value may be deeper than the host stack allows to recurse, for
    /// instance before [`check_depth`] refused it).
    #[inline]
    pub fn footprint(&self) -> Footprint {
        match self {
            Value::None | Value::Bool(_) | Value::Int(_) | Value::Float(_) => Footprint::default(),
            Value::Str(s) => Footprint {
                bytes: alloc_bytes(s.capacity()),
                depth: 0,
            },
            Value::List(_) | Value::Dict(_) => self.container_footprint(),
        }
    }

    fn container_footprint(&self) -> Footprint {
        let mut bytes = 0u64;
        let mut depth = 0u32;
        // Nested containers wait on the stack; a flat one never allocates it.
        let mut stack: Vec<(&Value, u32)> = Vec::new();
        let mut next = Some((self, 1));
        while let Some((v, level)) = next.take().or_else(|| stack.pop()) {
            match v {
                Value::Str(s) => bytes = bytes.saturating_add(alloc_bytes(s.capacity())),
                Value::List(items) => {
                    depth = depth.max(level);
                    bytes = bytes.saturating_add(LIST_BOX + list_table(items.capacity()));
                    for item in items.iter() {
                        if item.is_container() {
                            stack.push((item, level + 1));
                        } else if let Value::Str(s) = item {
                            bytes = bytes.saturating_add(alloc_bytes(s.capacity()));
                        }
                    }
                }
                Value::Dict(map) => {
                    depth = depth.max(level);
                    bytes = bytes.saturating_add(DICT_BOX + dict_table(map.capacity()));
                    for (k, item) in map.iter() {
                        bytes = bytes.saturating_add(alloc_bytes(k.capacity()));
                        if item.is_container() {
                            stack.push((item, level + 1));
                        } else if let Value::Str(s) = item {
                            bytes = bytes.saturating_add(alloc_bytes(s.capacity()));
                        }
                    }
                }
                Value::None | Value::Bool(_) | Value::Int(_) | Value::Float(_) => {}
            }
        }
        Footprint { bytes, depth }
    }

    fn is_container(&self) -> bool {
        matches!(self, Value::List(_) | Value::Dict(_))
    }
}

/// Longest `str()` of a number, `None` or a bool.
const MAX_SCALAR_TEXT: usize = 24;

/// `MemoryLimit` when a value would nest deeper than [`MAX_DEPTH`].
pub fn check_depth(depth: u32) -> Result<(), LimitHit> {
    if depth > MAX_DEPTH {
        return Err(LimitHit::new(
            LimitKind::MemoryLimit,
            format!("value nested {depth} levels deep; lists and dicts may nest at most {MAX_DEPTH} levels"),
        ));
    }
    Ok(())
}

/// What is left of the run's memory limit during one host call, and what
/// the call claimed and freed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    available: u64,
    claimed: u64,
    released: u64,
    deepest: u32,
}

impl MemoryBudget {
    /// A budget of `available` bytes.
    pub fn new(available: u64) -> MemoryBudget {
        MemoryBudget {
            available,
            claimed: 0,
            released: 0,
            deepest: 0,
        }
    }

    /// No limit (tests and tools that run without a sandbox).
    pub fn unlimited() -> MemoryBudget {
        MemoryBudget::new(u64::MAX)
    }

    /// Claim `bytes` that are about to be allocated. Past the budget this
    /// fails with `MemoryLimit` and the caller must not allocate. What the
    /// call released (freed) already is available again.
    pub fn claim(&mut self, bytes: u64) -> Result<(), LimitHit> {
        let live = self.claimed.saturating_sub(self.released);
        let next = live.saturating_add(bytes);
        if next > self.available {
            return Err(LimitHit::new(
                LimitKind::MemoryLimit,
                format!(
                    "memory limit exceeded: this step needs {next} bytes and {} are left",
                    self.available
                ),
            ));
        }
        self.claimed = self.claimed.saturating_add(bytes);
        Ok(())
    }

    /// Record `bytes` freed (a replaced value, a table that moved).
    pub fn release(&mut self, bytes: u64) {
        self.released = self.released.saturating_add(bytes);
    }

    /// What the budget started with.
    pub fn available(&self) -> u64 {
        self.available
    }

    /// A fresh budget of what this one has left.
    #[must_use]
    pub fn remaining(&self) -> MemoryBudget {
        MemoryBudget::new(
            self.available
                .saturating_sub(self.claimed.saturating_sub(self.released)),
        )
    }

    /// Bytes claimed so far.
    pub fn claimed(&self) -> u64 {
        self.claimed
    }

    /// What the call left allocated: claimed minus freed (negative when it
    /// freed more than it allocated).
    pub fn net(&self) -> i64 {
        i64::try_from(self.claimed).unwrap_or(i64::MAX) - i64::try_from(self.released).unwrap_or(i64::MAX)
    }

    /// Claim the footprint of a copy of `v`, then make it. Returns the copy
    /// and its footprint (the inline part is the holder's to count).
    pub fn clone_value(&mut self, v: &Value) -> Result<(Value, Footprint), LimitHit> {
        if let Value::Str(s) = v {
            // The copy has exactly the text's length.
            let bytes = alloc_bytes(s.len());
            self.claim(bytes)?;
            return Ok((Value::Str(s.clone()), Footprint { bytes, depth: 0 }));
        }
        // Measured and claimed as a whole copy, though the clone of a list
        // or dict only shares it (copy-on-write, see `Value`): a holder is
        // charged for its copy as if it owned it alone, so a write that
        // later unshares it needs no claim of its own, and what is shared
        // is never undercounted.
        let footprint = v.footprint();
        self.claim(footprint.bytes)?;
        self.deepest = self.deepest.max(footprint.depth);
        Ok((v.clone(), footprint))
    }

    /// The deepest value copied with [`MemoryBudget::clone_value`] so far
    /// (what a container that keeps the copies now nests, less one).
    pub fn deepest(&self) -> u32 {
        self.deepest
    }

    /// Claim a new string of `len` bytes (exact capacity).
    pub fn claim_str(&mut self, len: usize) -> Result<(), LimitHit> {
        self.claim(alloc_bytes(len))
    }
}

/// `str(v)`, its length measured and claimed before the text is built.
pub fn text_within(v: &Value, budget: &mut MemoryBudget) -> Result<String, LimitHit> {
    if let Value::None | Value::Bool(_) | Value::Int(_) | Value::Float(_) = v {
        // At most 24 bytes (`-9223372036854775808`, `-1.2345678901234567e-300`):
        // claimed as that bound, formatted once.
        budget.claim_str(MAX_SCALAR_TEXT)?;
        return Ok(v.to_text());
    }
    let len = v.text_len();
    budget.claim_str(len)?;
    Ok(match v {
        Value::Str(s) => s.clone(),
        other => {
            // Exactly the claimed capacity: growing by doubling could hold
            // up to twice as much.
            let mut out = String::with_capacity(len);
            let _ = other.write_repr(&mut out);
            debug_assert_eq!(out.len(), len, "text_len agrees with write_repr");
            out
        }
    })
}

/// Append `v` (its own footprint already claimed) to `items`, claiming the
/// buffer's growth first: when full, the buffer doubles, and while it moves
/// the old and the new one both exist.
pub fn push(items: &mut Vec<Value>, v: Value, budget: &mut MemoryBudget) -> Result<(), LimitHit> {
    reserve_list(items, 1, budget)?;
    items.push(v);
    Ok(())
}

/// Room for `extra` more values in `items`, claimed before it is allocated.
pub fn reserve_list(items: &mut Vec<Value>, extra: usize, budget: &mut MemoryBudget) -> Result<(), LimitHit> {
    let needed = items.len().saturating_add(extra);
    if needed <= items.capacity() {
        return Ok(());
    }
    let new_capacity = needed.max(items.capacity().saturating_mul(2)).max(4);
    budget.claim(list_table(new_capacity))?;
    budget.release(list_table(items.capacity()));
    items.reserve_exact(new_capacity - items.len());
    Ok(())
}

/// `map[key] = v` (both footprints already claimed), claiming the tables'
/// growth first. An existing key keeps its place and its old value is freed
/// (and so is the new copy of the key).
pub fn insert(map: &mut Dict, key: String, v: Value, budget: &mut MemoryBudget) -> Result<(), LimitHit> {
    // A full map grows first (also when the key turns out to exist: one
    // hash lookup per insert instead of two).
    if map.len() == map.capacity() {
        let before = dict_table(map.capacity());
        // hashbrown doubles its buckets; the entry vector follows.
        let predicted = dict_table(map.capacity().saturating_mul(2).max(3) + 1);
        budget.claim(predicted)?;
        map.reserve(1);
        let after = dict_table(map.capacity());
        // Settle the prediction to what was really allocated.
        budget.release(before.saturating_add(predicted).saturating_sub(after));
        if after > predicted {
            budget.claimed = budget.claimed.saturating_add(after - predicted);
        }
    }
    match map.entry(key) {
        indexmap::map::Entry::Occupied(mut entry) => {
            // The map keeps its own copy of the key: this one is freed.
            budget.release(alloc_bytes(entry.key().len()));
            replace(entry.get_mut(), v, budget);
        }
        indexmap::map::Entry::Vacant(entry) => {
            entry.insert(v);
        }
    }
    Ok(())
}

/// `*slot = v` (its footprint already claimed): the old value is freed.
pub fn replace(slot: &mut Value, v: Value, budget: &mut MemoryBudget) {
    let old = std::mem::replace(slot, v);
    budget.release(old.footprint().bytes);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn footprint_counts_capacity_and_depth() {
        let mut s = String::with_capacity(100);
        s.push('a');
        assert_eq!(Value::Str(s).footprint(), Footprint { bytes: 112, depth: 0 });
        let nested = Value::list(vec![Value::list(vec![Value::Int(1)]), Value::Str("ab".into())]);
        let fp = nested.footprint();
        assert_eq!(fp.depth, 2);
        assert_eq!(fp.bytes, 2 * LIST_BOX + list_table(2) + list_table(1) + 16);
        assert_eq!(Value::dict(Dict::new()).footprint().depth, 1);
    }

    #[test]
    fn footprint_of_a_very_deep_value_does_not_recurse() {
        let mut v = Value::list(Vec::new());
        for _ in 0..100_000 {
            v = Value::list(vec![v]);
        }
        assert_eq!(v.footprint().depth, 100_001);
        // Dropping it recursively would overflow the test thread's stack.
        let mut v = v;
        while let Value::List(items) = v {
            v = Arc::unwrap_or_clone(items).pop().unwrap_or(Value::None);
        }
    }

    #[test]
    fn claims_past_the_budget_fail_before_allocating() {
        let mut budget = MemoryBudget::new(1000);
        assert!(budget.claim(600).is_ok());
        let err = budget.claim(600).unwrap_err();
        assert_eq!(err.kind, LimitKind::MemoryLimit);
        assert_eq!(budget.claimed(), 600);
    }

    #[test]
    fn container_growth_is_claimed_and_settled() {
        let mut budget = MemoryBudget::unlimited();
        let mut items = Vec::new();
        for i in 0..100 {
            push(&mut items, Value::Int(i), &mut budget).unwrap();
        }
        assert_eq!(u64::try_from(budget.net()).unwrap(), list_table(items.capacity()));

        let mut budget = MemoryBudget::unlimited();
        let mut map = Dict::new();
        for i in 0..100 {
            let key = i.to_string();
            budget.claim(alloc_bytes(key.capacity())).unwrap();
            insert(&mut map, key, Value::Int(i), &mut budget).unwrap();
        }
        // (Measured on the map itself: a clone's tables may be smaller.)
        let map = Value::dict(map);
        assert_eq!(u64::try_from(budget.net()).unwrap() + DICT_BOX, map.footprint().bytes);
        let Value::Dict(map) = map else { unreachable!() };
        let mut map = Arc::unwrap_or_clone(map);
        // Overwriting keys frees the replaced values and the duplicate keys.
        let mut budget = MemoryBudget::unlimited();
        for i in 0..100 {
            let key = i.to_string();
            budget.claim(alloc_bytes(key.capacity())).unwrap();
            budget.claim(16).unwrap();
            insert(&mut map, key, Value::Str("x".into()), &mut budget).unwrap();
        }
        assert_eq!(budget.net(), 100 * 16);
    }
}
