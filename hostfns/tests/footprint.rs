//! The memory model against the real allocator: a counting global
//! allocator measures what building a value really requests, and the
//! value's footprint (what the runtime accounts) must cover it — and not by
//! much more, or memory limits would refuse what fits.

// A `GlobalAlloc` is an unsafe trait; this one only counts and delegates.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use avap_hostfns::memory::{self, MemoryBudget, VALUE_BYTES};
use avap_hostfns::{Dict, Value};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every method delegates to `System` with the same arguments; the
// counter is only arithmetic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(i64::try_from(layout.size()).unwrap_or(i64::MAX), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(i64::try_from(layout.size()).unwrap_or(i64::MAX), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let delta = i64::try_from(new_size).unwrap_or(i64::MAX) - i64::try_from(layout.size()).unwrap_or(i64::MAX);
        LIVE.fetch_add(delta, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes `make` leaves allocated (the value it returns is still alive),
/// and the value. Tests in this file run one at a time (a single test).
fn measured(make: impl FnOnce() -> Value) -> (u64, Value) {
    let before = LIVE.load(Ordering::Relaxed);
    let v = make();
    let after = LIVE.load(Ordering::Relaxed);
    (u64::try_from(after - before).unwrap_or(0), v)
}

fn assert_covers(what: &str, requested: u64, accounted: u64) {
    assert!(
        accounted >= requested,
        "{what}: accounted {accounted} bytes, the allocator was asked for {requested}"
    );
    // Allocator rounding is modelled generously, but not wildly.
    assert!(
        accounted <= requested * 3 / 2 + 64,
        "{what}: accounted {accounted} bytes for {requested} requested"
    );
}

#[test]
fn footprints_and_budgets_cover_what_the_allocator_holds() {
    // Strings: by capacity.
    for len in [1, 15, 16, 100, 4096, 1 << 20] {
        let (requested, v) = measured(|| Value::Str("x".repeat(len)));
        assert_covers(&format!("a {len}-byte string"), requested, v.footprint().bytes);
    }

    // Lists grown one push at a time, through the budget as the runtime does.
    for n in [1, 4, 5, 100, 10_000] {
        let mut budget = MemoryBudget::unlimited();
        let (requested, v) = measured(|| {
            let mut items = Vec::new();
            for i in 0..n {
                memory::push(&mut items, Value::Int(i), &mut budget).expect("unlimited");
            }
            Value::list(items)
        });
        // Claimed as the buffer grew; the list's box comes with the value.
        let net = u64::try_from(budget.net()).expect("grew") + memory::LIST_BOX;
        assert_covers(&format!("a list of {n} ints (claimed)"), requested, net);
        assert_covers(
            &format!("a list of {n} ints (footprint)"),
            requested,
            v.footprint().bytes,
        );
    }

    // Dicts with string keys and values, inserted through the budget.
    for n in [1, 3, 8, 100, 10_000] {
        let mut budget = MemoryBudget::unlimited();
        let (requested, v) = measured(|| {
            let mut map = Dict::new();
            for i in 0..n {
                let key = format!("key{i}");
                let text = format!("value number {i}");
                budget.claim_str(key.len()).expect("unlimited");
                budget.claim_str(text.len()).expect("unlimited");
                memory::insert(&mut map, key, Value::Str(text), &mut budget).expect("unlimited");
            }
            Value::dict(map)
        });
        let net = u64::try_from(budget.net()).expect("grew") + memory::DICT_BOX;
        assert_covers(&format!("a dict of {n} entries (claimed)"), requested, net);
        assert_covers(
            &format!("a dict of {n} entries (footprint)"),
            requested,
            v.footprint().bytes,
        );
    }

    // Copies made by the budget: a nested value, and a list of dicts.
    let rows: Vec<Value> = (0..1000)
        .map(|i| {
            let mut row = Dict::new();
            row.insert("id".into(), Value::Int(i));
            row.insert("name".into(), Value::Str(format!("user{i}")));
            Value::dict(row)
        })
        .collect();
    let original = Value::list(vec![Value::list(rows), Value::Str("tail".into())]);
    let mut budget = MemoryBudget::unlimited();
    let (shared, copy) = measured(|| budget.clone_value(&original).expect("unlimited").0);
    assert_eq!(shared, 0, "a copy shares the original's containers until written");
    // Writing into every row of the copy unshares all of it: what that
    // allocates is what the copy was charged for.
    let (requested, copy) = measured(move || {
        let mut copy = copy;
        if let Value::List(outer) = &mut copy
            && let Value::List(rows) = &mut Arc::make_mut(outer)[0]
        {
            for row in Arc::make_mut(rows).iter_mut() {
                if let Value::Dict(map) = row {
                    Arc::make_mut(map).insert("id".into(), Value::Int(0));
                }
            }
        }
        copy
    });
    assert_covers(
        "a copy of 1,000 rows, all written (claimed)",
        requested,
        budget.claimed(),
    );
    assert_covers(
        "a copy of 1,000 rows, all written (footprint)",
        requested,
        copy.footprint().bytes,
    );

    // A heap slot holds the value inline as well: `heap_bytes` counts it.
    assert_eq!(
        Value::Str(String::new()).heap_bytes() as u64,
        VALUE_BYTES,
        "an empty string is its inline part only"
    );
}
