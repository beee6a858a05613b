//! The wasmtime `Linker`: runtime helpers (module `rt`) and every command
//! of the registry (module `avap`), adapted from `avap-hostfns`.
//!
//! Convention: a catchable error is stored in [`RunState::pending`] and the
//! helper returns `TAG_ERR` (or -1); a sandbox limit is returned as a wasm
//! error, which unwinds the whole run past every `try`.

use std::borrow::Cow;
use std::sync::Arc;

use avap_hostfns::abi::{self, BinOp, BuiltinCode, Helper, IfCmp, UnOp};
use avap_hostfns::commands::{self, Outcome};
use avap_hostfns::memory::{self, MemoryBudget};
use avap_hostfns::signature::{CommandSig, ParamKind};
use avap_hostfns::{AvapError, ErrorKind, HostError, LimitHit, LimitKind, Value, ops};
use wasmtime::{Caller, Engine, Linker, WasmBacktrace};

use crate::heap::Heap;
use crate::state::RunState;

pub(crate) type Pair = (i32, i64);
/// A command's arguments: most commands take at most 8 slots, kept on the
/// stack (a heap allocation per call showed in profiles).
pub(crate) type Slots<T> = smallvec::SmallVec<[T; 8]>;
type Res<T> = wasmtime::Result<T>;

/// Build the linker with every helper and command.
pub fn build(engine: &Engine) -> Res<Linker<RunState>> {
    let mut l: Linker<RunState> = Linker::new(engine);
    let rt = abi::RT_MODULE;
    l.func_wrap(
        rt,
        Helper::Binary.name(),
        |mut c: Caller<'_, RunState>, op: i32, ta: i32, pa: i64, tb: i32, pb: i64| {
            let op = BinOp::from_code(op).ok_or_else(|| bad("operator code"))?;
            if op == BinOp::Add
                && ta == abi::TAG_STR
                && tb == abi::TAG_STR
                && let Some(pair) = append_str(&mut c, pa, pb)?
            {
                return Ok(pair);
            }
            with_values(&mut c, [(ta, pa), (tb, pb)], |v, mem| ops::binary(op, v[0], v[1], mem))
        },
    )?;
    l.func_wrap(
        rt,
        Helper::Unary.name(),
        |mut c: Caller<'_, RunState>, op: i32, t: i32, p: i64| {
            let op = match op {
                0 => UnOp::Neg,
                1 => UnOp::Pos,
                2 => UnOp::Not,
                _ => return Err(bad("unary operator code")),
            };
            with_values(&mut c, [(t, p)], |v, _| Ok(ops::unary(op, v[0])?))
        },
    )?;
    l.func_wrap(
        rt,
        Helper::Truthy.name(),
        |c: Caller<'_, RunState>, t: i32, p: i64| -> Res<i32> {
            let v = value(&c.data().heap, t, p)?;
            Ok(i32::from(v.truthy()))
        },
    )?;
    l.func_wrap(
        rt,
        Helper::IfCompare.name(),
        |mut c: Caller<'_, RunState>, cmp: i32, ta: i32, pa: i64, tb: i32, pb: i64| -> Res<i32> {
            let cmp = IfCmp::from_code(cmp).ok_or_else(|| bad("comparator code"))?;
            let r = {
                let heap = &c.data().heap;
                let a = value(heap, ta, pa)?;
                let b = value(heap, tb, pb)?;
                ops::if_compare(cmp, &a, &b, &mut heap.budget())
            };
            match r {
                Ok(b) => Ok(i32::from(b)),
                Err(HostError::Script(e)) => {
                    raise(&mut c, e);
                    Ok(-1)
                }
                Err(HostError::Limit(l)) => Err(wasmtime::Error::new(l)),
            }
        },
    )?;
    l.func_wrap(
        rt,
        Helper::Builtin.name(),
        |mut c: Caller<'_, RunState>, code: i32, _argc: i32, t: i32, p: i64| {
            let code = match code {
                0 => BuiltinCode::Str,
                1 => BuiltinCode::Int,
                2 => BuiltinCode::Float,
                3 => BuiltinCode::Len,
                _ => return Err(bad("builtin code")),
            };
            with_values(&mut c, [(t, p)], |v, mem| ops::builtin(code, v[0], mem))
        },
    )?;
    l.func_wrap(
        rt,
        Helper::Index.name(),
        |mut c: Caller<'_, RunState>, t: i32, p: i64, ti: i32, pi: i64| {
            with_values(&mut c, [(t, p), (ti, pi)], |v, mem| ops::index(v[0], v[1], mem))
        },
    )?;
    l.func_wrap(
        rt,
        Helper::Attr.name(),
        |mut c: Caller<'_, RunState>, t: i32, p: i64, name: i32| {
            with_values(&mut c, [(t, p), (abi::TAG_STR, i64::from(name))], |v, mem| match v[1] {
                Value::Str(n) => ops::attr(v[0], n, mem),
                _ => Err(AvapError::new(ErrorKind::TypeError, "attribute name").into()),
            })
        },
    )?;
    l.func_wrap(
        rt,
        Helper::SetIndex.name(),
        |mut c: Caller<'_, RunState>, t: i32, p: i64, ti: i32, pi: i64, tv: i32, pv: i64| -> Res<i32> {
            set_path(&mut c, (t, p), (ti, pi), (tv, pv), false)
        },
    )?;
    l.func_wrap(
        rt,
        Helper::SetPath.name(),
        |mut c: Caller<'_, RunState>, t: i32, p: i64, ti: i32, pi: i64, tv: i32, pv: i64| -> Res<i32> {
            set_path(&mut c, (t, p), (ti, pi), (tv, pv), true)
        },
    )?;
    l.func_wrap(rt, Helper::ListNew.name(), |mut c: Caller<'_, RunState>| -> Res<i64> {
        Ok(c.data_mut().heap.alloc(Value::list(Vec::new()))?)
    })?;
    l.func_wrap(
        rt,
        Helper::ListPush.name(),
        |mut c: Caller<'_, RunState>, h: i64, t: i32, p: i64| -> Res<()> {
            let (v, footprint, mut mem) = copy_in(&c.data().heap, t, p)?;
            charge(&mut c, 1 + footprint.bytes / BYTES_PER_FUEL)?;
            let heap = &mut c.data_mut().heap;
            match heap.get_mut(h)? {
                Value::List(items) => memory::push(Arc::make_mut(items), v, &mut mem)?,
                _ => return Err(bad("list_push on a non-list")),
            }
            heap.settle(h, mem.net(), footprint.depth + 1)?;
            Ok(())
        },
    )?;
    l.func_wrap(rt, Helper::DictNew.name(), |mut c: Caller<'_, RunState>| -> Res<i64> {
        Ok(c.data_mut().heap.alloc(Value::dict(avap_hostfns::Dict::new()))?)
    })?;
    l.func_wrap(
        rt,
        Helper::DictSet.name(),
        |mut c: Caller<'_, RunState>, h: i64, tk: i32, pk: i64, tv: i32, pv: i64| -> Res<i32> {
            if tk != abi::TAG_STR {
                let name = value(&c.data().heap, tk, pk)?.type_name();
                raise(
                    &mut c,
                    AvapError::new(ErrorKind::TypeError, format!("dict keys must be strings, not {name}")),
                );
                return Ok(-1);
            }
            let (entry, mut mem) = {
                let heap = &c.data().heap;
                let mut mem = heap.budget();
                (copy_entry(heap, &mut mem, (tk, pk), (tv, pv))?, mem)
            };
            charge(&mut c, entry.fuel)?;
            let DictEntry {
                key,
                value: v,
                footprint,
                ..
            } = entry;
            let heap = &mut c.data_mut().heap;
            match heap.get_mut(h)? {
                Value::Dict(d) => memory::insert(Arc::make_mut(d), key, v, &mut mem)?,
                _ => return Err(bad("dict_set on a non-dict")),
            }
            heap.settle(h, mem.net(), footprint.depth + 1)?;
            Ok(0)
        },
    )?;
    l.func_wrap(
        rt,
        Helper::DictFrom.name(),
        |mut c: Caller<'_, RunState>, ptr: i32, count: i32| -> Res<i64> { dict_from(&mut c, ptr, count) },
    )?;
    l.func_wrap(
        rt,
        Helper::ToText.name(),
        |mut c: Caller<'_, RunState>, t: i32, p: i64| -> Res<Pair> {
            if t == abi::TAG_STR {
                return Ok((t, p));
            }
            let text = if t == abi::TAG_UNDEF {
                String::new()
            } else {
                let heap = &c.data().heap;
                ops::template_text_within(value(heap, t, p)?.as_ref(), &mut heap.budget())?
            };
            charge(&mut c, text.len() as u64 / BYTES_PER_FUEL)?;
            let h = c.data_mut().heap.alloc(Value::Str(text))?;
            Ok((abi::TAG_STR, h))
        },
    )?;
    l.func_wrap(
        rt,
        Helper::Raise.name(),
        |mut c: Caller<'_, RunState>, kind: i32, msg: i32| -> Res<Pair> {
            let kind = ErrorKind::from_code(kind).ok_or_else(|| bad("error kind"))?;
            let message = match value(&c.data().heap, abi::TAG_STR, i64::from(msg))?.as_ref() {
                Value::Str(s) => s.clone(),
                _ => String::new(),
            };
            raise(&mut c, AvapError::new(kind, message));
            Ok((abi::TAG_ERR, 0))
        },
    )?;
    l.func_wrap(
        rt,
        Helper::TakeError.name(),
        |mut c: Caller<'_, RunState>| -> Res<Pair> {
            let message = c.data_mut().pending.take().map(|(e, _)| e.message).unwrap_or_default();
            let h = c.data_mut().heap.alloc(Value::Str(message))?;
            Ok((abi::TAG_STR, h))
        },
    )?;
    l.func_wrap(
        rt,
        Helper::StackOverflow.name(),
        |_c: Caller<'_, RunState>| -> Res<()> {
            Err(wasmtime::Error::new(LimitHit::new(
                LimitKind::StackOverflow,
                "call depth exceeded the stack limit",
            )))
        },
    )?;
    l.func_wrap(
        rt,
        Helper::SetOutput.name(),
        |mut c: Caller<'_, RunState>, t: i32, p: i64| -> Res<()> {
            c.data_mut().output = Some((t, p));
            Ok(())
        },
    )?;
    l.func_wrap(
        rt,
        Helper::AsyncDone.name(),
        |mut c: Caller<'_, RunState>, idt: i32, idp: i64, t: i32, p: i64| -> Res<()> {
            crate::blocks::done_inline(&mut c, (idt, idp), (t, p))
        },
    )?;
    l.func_wrap(
        rt,
        Helper::AsyncStart.name(),
        |mut c: Caller<'_, RunState>, idt: i32, idp: i64, block: i32, dt: i32, dp: i64| -> Res<()> {
            crate::blocks::start(&mut c, (idt, idp), block, (dt, dp))
        },
    )?;
    l.func_wrap(rt, Helper::Collect.name(), |mut c: Caller<'_, RunState>| -> Res<i32> {
        let count = c.data().global_count;
        let memory = c.data().memory.ok_or_else(|| bad("memory export"))?;
        let (data, state) = memory.data_and_store_mut(&mut c);
        let roots = || {
            let mut roots = Vec::new();
            for slot in 0..count {
                let at = (abi::GLOBALS_BASE + slot * abi::SLOT_BYTES) as usize;
                if let Some(b) = data.get(at..at + 16) {
                    let t = i32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
                    if matches!(t, abi::TAG_STR | abi::TAG_LIST | abi::TAG_DICT) {
                        roots.push(i64::from_le_bytes(b[8..16].try_into().expect("8 bytes")));
                    }
                }
            }
            if let Some((t, p)) = state.output
                && matches!(t, abi::TAG_STR | abi::TAG_LIST | abi::TAG_DICT)
            {
                roots.push(p);
            }
            roots
        };
        let next = state.heap.poll(state.poll_interval, roots);
        state.poll_interval = next;
        Ok(i32::try_from(next).unwrap_or(1))
    })?;
    for sig in avap_hostfns::commands() {
        l.func_wrap(
            abi::COMMAND_MODULE,
            sig.name,
            move |mut c: Caller<'_, RunState>, ptr: i32, argc: i32| command(&mut c, sig, ptr, argc),
        )?;
    }
    crate::effects::register(&mut l)?;
    Ok(l)
}

fn bad(what: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!("corrupt module: invalid {what}"))
}

/// A copy of the value of `(t, p)` for the host to keep, its footprint
/// claimed from a fresh budget first; the budget is returned for the rest
/// of the call.
fn copy_in(heap: &Heap, t: i32, p: i64) -> Res<(Value, memory::Footprint, MemoryBudget)> {
    let mut mem = heap.budget();
    let (v, footprint) = mem.clone_value(value(heap, t, p)?.as_ref())?;
    Ok((v, footprint, mem))
}

/// The value a `(tag, payload)` pair stands for.
pub fn value(heap: &Heap, t: i32, p: i64) -> Res<Cow<'_, Value>> {
    Ok(match t {
        abi::TAG_UNDEF | abi::TAG_NONE => Cow::Owned(Value::None),
        abi::TAG_BOOL => Cow::Owned(Value::Bool(p != 0)),
        abi::TAG_INT => Cow::Owned(Value::Int(p)),
        abi::TAG_FLOAT => Cow::Owned(Value::Float(f64::from_bits(p.cast_unsigned()))),
        abi::TAG_STR | abi::TAG_LIST | abi::TAG_DICT => heap.get(p)?,
        _ => return Err(bad("value tag")),
    })
}

/// Store a value for wasm: scalars inline, the rest on the heap.
pub fn to_pair(heap: &mut Heap, v: Value) -> Res<Pair> {
    Ok(match v {
        Value::None => (abi::TAG_NONE, 0),
        Value::Bool(b) => (abi::TAG_BOOL, i64::from(b)),
        Value::Int(i) => (abi::TAG_INT, i),
        Value::Float(f) => (abi::TAG_FLOAT, f.to_bits().cast_signed()),
        v @ Value::Str(_) => (abi::TAG_STR, heap.alloc(v)?),
        v @ Value::List(_) => (abi::TAG_LIST, heap.alloc(v)?),
        v @ Value::Dict(_) => (abi::TAG_DICT, heap.alloc(v)?),
    })
}

/// Record a catchable error with the wasm location that raised it.
pub fn raise(c: &mut Caller<'_, RunState>, e: AvapError) {
    let loc = WasmBacktrace::capture(&*c).frames().first().and_then(|f| {
        let off = f.func_offset()?;
        Some((f.func_index(), u32::try_from(off).ok()?))
    });
    c.data_mut().pending = Some((e, loc));
}

/// Evaluate `f` on the values of `pairs` with the run's memory budget;
/// store its result or its error (a limit ends the run). The operands sit
/// in arrays: an operator's host call allocates nothing but its result.
fn with_values<const N: usize>(
    c: &mut Caller<'_, RunState>,
    pairs: [Pair; N],
    f: impl FnOnce(&[&Value; N], &mut MemoryBudget) -> Result<Value, HostError>,
) -> Res<Pair> {
    let r = {
        let heap = &c.data().heap;
        let mut vals: [Cow<'_, Value>; N] = std::array::from_fn(|_| Cow::Owned(Value::None));
        for (val, &(t, p)) in vals.iter_mut().zip(&pairs) {
            *val = value(heap, t, p)?;
        }
        let refs: [&Value; N] = std::array::from_fn(|i| vals[i].as_ref());
        f(&refs, &mut heap.budget())
    };
    match r {
        Ok(v) => {
            let tag = match v {
                Value::Str(_) => abi::TAG_STR,
                Value::List(_) => abi::TAG_LIST,
                Value::Dict(_) => abi::TAG_DICT,
                _ => return to_pair(&mut c.data_mut().heap, v),
            };
            let footprint = v.footprint();
            charge(c, footprint.bytes / BYTES_PER_FUEL)?;
            Ok((tag, c.data_mut().heap.alloc_measured(v, footprint)?))
        }
        Err(HostError::Script(e)) => {
            raise(c, e);
            Ok((abi::TAG_ERR, 0))
        }
        Err(HostError::Limit(l)) => Err(wasmtime::Error::new(l)),
    }
}

/// `str + str` appended in place to the left operand's buffer (see
/// `Heap::append_str`), charged for the bytes appended; `None` when the left
/// operand cannot be extended and the result must be a copy.
fn append_str(c: &mut Caller<'_, RunState>, left: i64, right: i64) -> Res<Option<Pair>> {
    let Some((h, appended)) = c.data_mut().heap.append_str(left, right)? else {
        return Ok(None);
    };
    charge(c, 1 + appended as u64 / BYTES_PER_FUEL)?;
    Ok(Some((abi::TAG_STR, h)))
}

/// Host work is charged at one fuel unit per this many bytes produced.
pub const BYTES_PER_FUEL: u64 = 8;

/// Take `units` of fuel for host work; `FuelExhausted` when there is not
/// enough left. A no-op when metering is off.
pub(crate) fn charge(c: &mut Caller<'_, RunState>, units: u64) -> Res<()> {
    if units == 0 {
        return Ok(());
    }
    let Ok(mut left) = c.get_fuel() else { return Ok(()) };
    if units > left {
        // Other flows of the run may have given fuel back since this one
        // took its lease.
        crate::shared::top_up(wasmtime::AsContextMut::as_context_mut(c), units)?;
        left = c.get_fuel()?;
    }
    if units > left {
        c.set_fuel(0)?;
        return Err(wasmtime::Error::new(LimitHit::new(
            LimitKind::FuelExhausted,
            "all fuel consumed (in a host call)",
        )));
    }
    c.set_fuel(left - units)
}

fn set_path(c: &mut Caller<'_, RunState>, obj: Pair, idx: Pair, val: Pair, path: bool) -> Res<i32> {
    if !matches!(obj.0, abi::TAG_LIST | abi::TAG_DICT) {
        let name = value(&c.data().heap, obj.0, obj.1)?.type_name();
        raise(
            c,
            AvapError::new(
                ErrorKind::TypeError,
                format!("'{name}' object does not support item assignment"),
            ),
        );
        return Ok(-1);
    }
    let (indices, v, footprint, mut mem) = {
        let heap = &c.data().heap;
        // The index copies are dropped after the walk: claimed apart from
        // what the container keeps, so only the latter is settled on it.
        let mut scratch = heap.budget();
        let (i, _) = scratch.clone_value(value(heap, idx.0, idx.1)?.as_ref())?;
        let indices = match (path, i) {
            (true, Value::List(items)) => Arc::unwrap_or_clone(items),
            (_, i) => vec![i],
        };
        let mut mem = MemoryBudget::new(heap.budget().available().saturating_sub(scratch.claimed()));
        let (v, footprint) = mem.clone_value(value(heap, val.0, val.1)?.as_ref())?;
        (indices, v, footprint, mem)
    };
    let depth = u32::try_from(indices.len())
        .unwrap_or(u32::MAX)
        .saturating_add(footprint.depth);
    let heap = &mut c.data_mut().heap;
    let root = heap.get_mut(obj.1)?;
    match walk_and_set(root, &indices, v, &mut mem) {
        Ok(()) => {
            heap.settle(obj.1, mem.net(), depth)?;
            Ok(0)
        }
        Err(HostError::Script(e)) => {
            raise(c, e);
            Ok(-1)
        }
        Err(HostError::Limit(l)) => Err(wasmtime::Error::new(l)),
    }
}

/// The form of `sig` a call with `argc` argument slots uses (name
/// parameters take two slots), and the slots read from the argument area at
/// `ptr`. `argc` is checked against the forms before anything is read or
/// allocated, so a corrupt count cannot make the host allocate.
pub(crate) fn call_slots(c: &Caller<'_, RunState>, sig: &CommandSig, ptr: i32, argc: i32) -> Res<(usize, Slots<Pair>)> {
    let memory = c.data().memory.ok_or_else(|| bad("memory export"))?;
    let argc = usize::try_from(argc).map_err(|_| bad("argument count"))?;
    let start = usize::try_from(ptr).map_err(|_| bad("argument pointer"))?;
    let slot_count = |form: &[avap_hostfns::signature::Param]| {
        form.iter()
            .map(|p| if p.kind == ParamKind::Name { 2 } else { 1 })
            .sum::<usize>()
    };
    let form_index = sig
        .forms
        .iter()
        .position(|f| slot_count(f) == argc)
        .ok_or_else(|| bad("argument count"))?;
    Ok((form_index, read_slots(memory.data(c), start, argc)?))
}

/// `count` value slots (tag at +0, payload at +8) from `start` in linear memory.
fn read_slots(data: &[u8], start: usize, count: usize) -> Res<Slots<Pair>> {
    (0..count)
        .map(|i| {
            let at = start + i * abi::SLOT_BYTES as usize;
            let bytes = data.get(at..at + 16).ok_or_else(|| bad("argument area"))?;
            let t = i32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
            let p = i64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
            Ok((t, p))
        })
        .collect()
}

/// A key and value copied for a dict being built (`dict_set`, `dict_from`),
/// claimed from `mem`, with the fuel the copy costs.
struct DictEntry {
    key: String,
    value: Value,
    footprint: memory::Footprint,
    fuel: u64,
}

/// Copy the string key `k` and the value `v` for a dict entry.
fn copy_entry(heap: &Heap, mem: &mut MemoryBudget, (tk, pk): Pair, (tv, pv): Pair) -> Res<DictEntry> {
    let Value::Str(key) = mem.clone_value(value(heap, tk, pk)?.as_ref())?.0 else {
        return Err(bad("string handle"));
    };
    let (value, footprint) = mem.clone_value(value(heap, tv, pv)?.as_ref())?;
    let fuel = 1 + (key.len() as u64 + footprint.bytes) / BYTES_PER_FUEL;
    Ok(DictEntry {
        key,
        value,
        footprint,
        fuel,
    })
}

/// `rt.dict_from`: a dict display with string-literal keys built in one
/// call. Every key and value is copied and claimed as `dict_set` would,
/// and fuel is charged the same, before the dict takes a heap slot.
fn dict_from(c: &mut Caller<'_, RunState>, ptr: i32, count: i32) -> Res<i64> {
    let memory = c.data().memory.ok_or_else(|| bad("memory export"))?;
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= abi::MAX_DICT_FROM as usize)
        .ok_or_else(|| bad("dict entry count"))?;
    let start = usize::try_from(ptr).map_err(|_| bad("argument pointer"))?;
    let slots = read_slots(memory.data(&*c), start, 2 * count)?;
    let (dict, mem, fuel) = {
        let heap = &c.data().heap;
        let mut mem = heap.budget();
        let mut dict = avap_hostfns::Dict::new();
        let mut fuel = 0u64;
        for pair in slots.chunks_exact(2) {
            if pair[0].0 != abi::TAG_STR {
                return Err(bad("dict_from key is not a string"));
            }
            let entry = copy_entry(heap, &mut mem, pair[0], pair[1])?;
            fuel += entry.fuel;
            memory::insert(&mut dict, entry.key, entry.value, &mut mem)?;
        }
        (dict, mem, fuel)
    };
    charge(c, fuel)?;
    let footprint = memory::Footprint {
        bytes: u64::try_from(mem.net()).unwrap_or(0) + memory::DICT_BOX,
        depth: mem.deepest() + 1,
    };
    Ok(c.data_mut().heap.alloc_measured(Value::dict(dict), footprint)?)
}

/// A command call: read the argument slots, run the command, store the
/// result. See `avap_hostfns::abi::COMMAND_SIGNATURE` for the layout.
pub(crate) fn command(c: &mut Caller<'_, RunState>, sig: &'static CommandSig, ptr: i32, argc: i32) -> Res<Pair> {
    let (form_index, slots) = call_slots(c, sig, ptr, argc)?;
    let form = sig.forms[form_index];
    // Position of the target slot, if the form has one.
    let mut target_slot = None;
    let mut at = 0;
    for p in form {
        if p.kind == ParamKind::Target {
            target_slot = Some(at);
        }
        at += if p.kind == ParamKind::Name { 2 } else { 1 };
    }
    if std::mem::take(&mut c.data_mut().rebalance) {
        crate::shared::rebalance(wasmtime::AsContextMut::as_context_mut(c))?;
    }
    crate::shared::top_up(wasmtime::AsContextMut::as_context_mut(c), 0)?;
    let fuel = c.get_fuel().unwrap_or(u64::MAX);
    let state = c.data_mut();
    state.services.fuel_available = fuel;
    state.services.fuel_charged = 0;
    state.services.memory = state.heap.budget();
    // Take the target out of the heap so the command may update it in place.
    let target_handle = target_slot
        .map(|i| slots[i])
        .filter(|(t, _)| matches!(*t, abi::TAG_LIST | abi::TAG_DICT));
    // Bytes of a copy of the target that replaces the original when the
    // command updates it in place (the original is then freed).
    let mut replaced_copy = 0u64;
    let mut target = match (target_slot, target_handle) {
        (_, Some((_, h))) => {
            let aliased = slots
                .iter()
                .enumerate()
                .any(|(i, s)| Some(i) != target_slot && s.1 == h && s.0 >= abi::TAG_STR);
            if aliased {
                let (copy, footprint) = state.services.memory.clone_value(state.heap.get(h)?.as_ref())?;
                replaced_copy = footprint.bytes;
                copy
            } else {
                std::mem::take(state.heap.get_mut(h)?)
            }
        }
        (Some(i), None) => {
            let current = value(&state.heap, slots[i].0, slots[i].1)?;
            state.services.memory.clone_value(current.as_ref())?.0
        }
        (None, None) => Value::None,
    };
    let result = {
        let heap = &state.heap;
        let vals: Slots<Cow<'_, Value>> = slots
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != target_slot)
            .map(|(_, &(t, p))| value(heap, t, p))
            .collect::<Res<_>>()?;
        let refs: Slots<&Value> = vals.iter().map(AsRef::as_ref).collect();
        let r = commands::call(sig.name, form_index, &mut state.services, &refs, &mut target);
        // Updated in place, the target now holds a copy of an argument.
        let depth = 1 + state.services.memory.deepest();
        r.map(|o| (o, depth))
    };
    let charged = state.services.fuel_charged;
    if charged > 0 && fuel != u64::MAX {
        c.set_fuel(fuel.saturating_sub(charged))?;
    }
    let state = c.data_mut();
    // Routes this store keeps, and what the run keeps (results).
    state.heap.retained = state.services.retained();
    state.heap.shared = state.services.run.shared_for(state.published);
    match result {
        Ok((Outcome::Value(v), _)) => {
            if let Some((_, h)) = target_handle {
                *state.heap.get_mut(h)? = target;
            }
            to_pair(&mut state.heap, v)
        }
        Ok((Outcome::InPlace, depth)) => {
            let tag = match &target {
                Value::List(_) => Some(abi::TAG_LIST),
                Value::Dict(_) => Some(abi::TAG_DICT),
                _ => None,
            };
            match (target_handle, tag) {
                (Some((_, h)), Some(tag)) => {
                    *state.heap.get_mut(h)? = target;
                    let grown = state.services.memory.net() - i64::try_from(replaced_copy).unwrap_or(i64::MAX);
                    state.heap.settle(h, grown, depth)?;
                    Ok((tag, h))
                }
                _ => to_pair(&mut state.heap, target),
            }
        }
        Err(e) => {
            if let Some((_, h)) = target_handle {
                *state.heap.get_mut(h)? = target;
            }
            match e {
                HostError::Script(e) => {
                    raise(c, e);
                    Ok((abi::TAG_ERR, 0))
                }
                HostError::Limit(l) => Err(wasmtime::Error::new(l)),
            }
        }
    }
}

/// `obj[idx]` as a place to assign into (the inner steps of `x[a][b] = v`).
fn index_mut<'v>(obj: &'v mut Value, idx: &Value) -> Result<&'v mut Value, AvapError> {
    let type_name = obj.type_name();
    match (obj, idx) {
        (Value::List(items), Value::Int(i)) => {
            let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
            let at = if *i < 0 { i + len } else { *i };
            usize::try_from(at)
                .ok()
                .filter(|&at| at < items.len())
                // Copied first if another value shares the list.
                .map(|at| &mut Arc::make_mut(items)[at])
                .ok_or_else(|| AvapError::new(ErrorKind::IndexError, "list index out of range"))
        }
        (Value::Dict(map), Value::Str(k)) => Arc::make_mut(map)
            .get_mut(k)
            .ok_or_else(|| AvapError::new(ErrorKind::KeyError, Value::Str(k.clone()).repr_short())),
        (_, i) => Err(AvapError::new(
            ErrorKind::TypeError,
            format!("'{type_name}' object cannot be indexed by {}", i.type_name()),
        )),
    }
}

fn walk_and_set(root: &mut Value, indices: &[Value], v: Value, mem: &mut MemoryBudget) -> Result<(), HostError> {
    let Some((last, walk)) = indices.split_last() else {
        return Err(AvapError::new(ErrorKind::TypeError, "empty index path").into());
    };
    let mut target = root;
    for i in walk {
        target = index_mut(target, i)?;
    }
    ops::set_index(target, last, v, mem)
}
