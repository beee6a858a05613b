//! The contract between generated WebAssembly and the runtime.
//!
//! `avap-codegen` emits modules against these constants and import
//! signatures; `avap-runtime` links exactly these. Changing anything here
//! means bumping [`FORMAT_VERSION`].
//!
//! ## Values
//! An AVAP value is a pair `(tag: i32, payload: i64)`. Ints, floats (payload =
//! f64 bits), bools (0/1) and `None` live entirely in wasm. Strings, lists
//! and dicts live in the run's host heap; their payload is a heap handle.
//! The tag [`TAG_ERR`] is never a value: a function or helper returning it
//! says "an error is pending in the host; branch to the handler".
//!
//! ## Memory layout (linear memory 0, exported as `memory`)
//! Its size is fixed (minimum = maximum) and counted in bytes (page size
//! 1, format version 4): the end of the constant bytes rounded up to 4 KiB.
//! * `[ARGS_BASE, ARGS_BASE + ARGS_BYTES)`: argument area for command calls,
//!   [`SLOT_BYTES`] per argument (tag at +0, payload at +8).
//! * `[GLOBALS_BASE, …)`: one slot per top-level variable, same layout. Host
//!   code may read these (garbage-collector roots).
//! * constant table at the address exported in global `consts`: `u32 count`,
//!   then `count` pairs `(u32 offset, u32 len)` of UTF-8 bytes; constant `k`
//!   becomes heap handle `k` before the run starts (pinned, never freed).

/// Version of the artifact format and of this ABI. Version 2 added the
/// [`EXPORT_GC_COUNTDOWN`] global (version 1 modules still run; they poll
/// the collector on their own schedule only). Version 3 runs `go_async`
/// blocks concurrently: each block is an export ([`EXPORT_ASYNC_PREFIX`])
/// started by [`Helper::AsyncStart`]; older modules still run, their blocks
/// to completion where they stand ([`Helper::AsyncDone`]). Version 4 adds
/// [`Helper::DictFrom`] and sizes
/// linear memory in bytes (the custom-page-sizes proposal, one-byte pages,
/// rounded up to 4 KiB) instead of 64 KiB wasm pages, so the pooling
/// allocator resets a few KiB after each run; older modules still run. A
/// runtime of version 3 refuses version 4 modules as invalid WebAssembly
/// (it does not enable custom page sizes); from version 4 on, a runtime
/// names a newer format as such even when its WebAssembly does not
/// validate (`artifact::inspect`).
pub const FORMAT_VERSION: u32 = 4;

/// Import module of the runtime helpers.
pub const RT_MODULE: &str = "rt";
/// Import module of AVAP commands (import name = command name).
pub const COMMAND_MODULE: &str = "avap";

/// Variable never assigned (only in variable slots; never passed to a command
/// except as "missing").
pub const TAG_UNDEF: i32 = 0;
pub const TAG_NONE: i32 = 1;
pub const TAG_BOOL: i32 = 2;
pub const TAG_INT: i32 = 3;
pub const TAG_FLOAT: i32 = 4;
pub const TAG_STR: i32 = 5;
pub const TAG_LIST: i32 = 6;
pub const TAG_DICT: i32 = 7;
/// Opaque host object (connector).
pub const TAG_OBJ: i32 = 8;
/// Key of the dict the compiler passes for a backtick template given to a
/// database command's SQL parameter (`ormDirect`'s `sql`, a
/// `whereSelector`): `{SQL_TEMPLATE_KEY: [text, value, text, …, text]}`
/// (texts and values alternate), so the host binds the values as
/// parameters instead of splicing their text into SQL.
pub const SQL_TEMPLATE_KEY: &str = "$sql_template";
/// Key of the dict the compiler passes in `ormDirect`'s `sql` slot for a
/// method call `object.name(args…)`: `{METHOD_CALL_KEY: [object, name,
/// args…]}`. Only connector values (see [`CONNECTOR_KEY`]) have a method,
/// `query(sql)`; the host refuses every other call with a `TypeError`.
pub const METHOD_CALL_KEY: &str = "$method_call";
/// Key of the value `avapConnector(token)` returns: `{CONNECTOR_KEY: token}`.
pub const CONNECTOR_KEY: &str = "$connector";
/// "An error is pending": not a value.
pub const TAG_ERR: i32 = 15;

/// Bytes per value slot in linear memory.
pub const SLOT_BYTES: u32 = 16;
/// Start of the command argument area.
pub const ARGS_BASE: u32 = 64;
/// Largest number of arguments a command call may pass.
pub const MAX_ARGS: u32 = 32;
/// Start of the top-level variable slots.
pub const GLOBALS_BASE: u32 = ARGS_BASE + MAX_ARGS * SLOT_BYTES;

/// Global slot of `_status` (always slot 0): the response status (spec §7).
pub const STATUS_SLOT: u32 = 0;
/// Global slot of `__last_error__` (always slot 1).
pub const LAST_ERROR_SLOT: u32 = 1;
/// Names of the fixed global slots, in slot order.
pub const FIXED_GLOBALS: [&str; 2] = ["_status", "__last_error__"];

/// Exported entry point: runs the top level; returns 0 on success, 1 when an
/// uncaught error is pending in the host.
pub const EXPORT_MAIN: &str = "main";
/// Exported memory.
pub const EXPORT_MEMORY: &str = "memory";
/// Exported i32 global: address of the constant table.
pub const EXPORT_CONSTS: &str = "consts";
/// Exported mutable i64 global: stack budget left in bytes; the host sets it
/// before the run, every function entry subtracts its frame cost.
pub const EXPORT_STACK_LEFT: &str = "stack_left";
/// Exported i32 global: number of top-level variable slots.
pub const EXPORT_GLOBAL_COUNT: &str = "global_count";
/// Exported mutable i32 global: top-level loop iterations left before the
/// next garbage-collection poll (`rt.collect`). Loops count it down; the
/// host sets it to 0 when the run has allocated enough since the last poll
/// to make one due, so a loop whose allocation rate jumps is not left on a
/// schedule measured when it allocated little.
pub const EXPORT_GC_COUNTDOWN: &str = "gc_countdown";
/// Prefix of exported user functions (`fn:greet`), called by the host for
/// `registerEndpoint` middleware and handlers. Only functions without
/// parameters are exported; they return `(tag, payload)`.
pub const EXPORT_FN_PREFIX: &str = "fn:";
/// Prefix of exported `go_async` blocks, numbered in the order the compiler
/// met them (`go_async:0`). A block takes the values of the variables it
/// captures as `(tag, payload)` parameters ([`Helper::AsyncStart`]), reads every other top-level
/// variable from its global slot, and returns the dict of the variables it
/// assigned (or `TAG_ERR`).
pub const EXPORT_ASYNC_PREFIX: &str = "go_async:";

/// Operator codes passed to [`Helper::Binary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum BinOp {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
    FloorDiv = 4,
    Mod = 5,
    Pow = 6,
    Eq = 10,
    NotEq = 11,
    Lt = 12,
    Le = 13,
    Gt = 14,
    Ge = 15,
    In = 16,
    NotIn = 17,
    Is = 18,
    IsNot = 19,
}

impl BinOp {
    pub fn from_code(code: i32) -> Option<BinOp> {
        use BinOp::{Add, Div, Eq, FloorDiv, Ge, Gt, In, Is, IsNot, Le, Lt, Mod, Mul, NotEq, NotIn, Pow, Sub};
        Some(match code {
            0 => Add,
            1 => Sub,
            2 => Mul,
            3 => Div,
            4 => FloorDiv,
            5 => Mod,
            6 => Pow,
            10 => Eq,
            11 => NotEq,
            12 => Lt,
            13 => Le,
            14 => Gt,
            15 => Ge,
            16 => In,
            17 => NotIn,
            18 => Is,
            19 => IsNot,
            _ => return None,
        })
    }
}

/// Operator codes passed to [`Helper::Unary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum UnOp {
    Neg = 0,
    Pos = 1,
    Not = 2,
}

/// Comparator codes of `if(lhs, rhs, comparator)`, passed to [`Helper::IfCompare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum IfCmp {
    Eq = 0,
    NotEq = 1,
    Lt = 2,
    Le = 3,
    Gt = 4,
    Ge = 5,
    In = 6,
    NotIn = 7,
}

impl IfCmp {
    pub fn from_code(code: i32) -> Option<IfCmp> {
        use IfCmp::{Eq, Ge, Gt, In, Le, Lt, NotEq, NotIn};
        Some(match code {
            0 => Eq,
            1 => NotEq,
            2 => Lt,
            3 => Le,
            4 => Gt,
            5 => Ge,
            6 => In,
            7 => NotIn,
            _ => return None,
        })
    }
}

/// Built-in expression functions, passed to [`Helper::Builtin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum BuiltinCode {
    Str = 0,
    Int = 1,
    Float = 2,
    Len = 3,
}

/// Wasm value types of helper signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    I32,
    I64,
}

/// A runtime helper import (module [`RT_MODULE`]). Each helper's doc says its
/// wasm signature `(params) -> (results)`; a `(i32, i64)` result may carry
/// [`TAG_ERR`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Helper {
    /// `(op, ta, pa, tb, pb) -> (tag, payload)`: any binary or comparison
    /// operator on any values (the slow path of inline int/float code).
    Binary,
    /// `(op, t, p) -> (tag, payload)`.
    Unary,
    /// `(t, p) -> i32`: Python truthiness of a heap value.
    Truthy,
    /// `(cmp, ta, pa, tb, pb) -> i32`: `if()` comparator; 0 false, 1 true,
    /// -1 error pending.
    IfCompare,
    /// `(code, argc, t0, p0) -> (tag, payload)`: `str`/`int`/`float`/`len`
    /// (argc is 1 today; kept for arity errors).
    Builtin,
    /// `(t, p, ti, pi) -> (tag, payload)`: `obj[index]`.
    Index,
    /// `(t, p, name_const) -> (tag, payload)`: `obj.name`.
    Attr,
    /// `(t, p, ti, pi, tv, pv) -> i32`: `obj[index] = value`; 0 ok, -1 error.
    SetIndex,
    /// `(t, p, tl, pl, tv, pv) -> i32`: `obj[i]…[k] = value` with the
    /// indices given as a list; 0 ok, -1 error.
    SetPath,
    /// `() -> i64`: a new empty list handle.
    ListNew,
    /// `(handle, t, p) -> ()`: append to a list being built by a display.
    ListPush,
    /// `() -> i64`: a new empty dict handle.
    DictNew,
    /// `(handle, tk, pk, tv, pv) -> i32`: set a key of a dict being built;
    /// 0 ok, -1 error (non-string key).
    DictSet,
    /// `(t, p) -> (tag, payload)`: text of a value for template interpolation
    /// (`str()` semantics; `None`/undefined give "").
    ToText,
    /// `(kind, message_const) -> (tag, payload)`: raise a catchable error of
    /// `kind` (see [`crate::error::ErrorKind::code`]); always returns `TAG_ERR`.
    Raise,
    /// `() -> (tag, payload)`: take the pending error (at a `try` handler);
    /// returns its message as a string.
    TakeError,
    /// `() -> ()`: the stack budget ran out; ends the run with `StackOverflow`.
    StackOverflow,
    /// `(t, p) -> ()`: remember the value of an endpoint handler's `output`
    /// variable at return.
    SetOutput,
    /// `(idt, idp, t, p) -> ()`: a `go_async` block finished; `(t, p)` is the
    /// dict of variables it assigned, or `TAG_ERR` if it failed. Format ≤ 2
    /// modules only (their blocks run inline); kept so they still link.
    AsyncDone,
    /// `() -> i32`: a safe point on the top level (all its variables are in
    /// their global slots, nothing else is live): collect garbage if the
    /// heap grew enough; returns how many loop iterations to run before
    /// polling again.
    Collect,
    /// `(idt, idp, block, lt, lp) -> ()`: start `go_async` block number
    /// `block` (export [`EXPORT_ASYNC_PREFIX`]`block`) under id `(idt, idp)`,
    /// on a snapshot of the top-level variable slots (as they are in linear
    /// memory now) and of the captured values, the dict `(lt, lp)` keyed by
    /// parameter position (`"0"`, `"1"`, …; a value not yet assigned is
    /// absent and reaches the block unassigned). Returns at once; the block
    /// runs concurrently with the caller.
    AsyncStart,
    /// `(ptr, count) -> i64`: a new dict of `count` entries read from the
    /// value slots at `ptr` (key, value, key, value, …), in order, a later
    /// duplicate key replacing the earlier value in its place. The compiler
    /// uses it for a dict display whose keys are all string literals and
    /// that fits the argument area ([`MAX_DICT_FROM`] entries): one host
    /// call instead of `dict_new` and one `dict_set` per key. Format ≥ 4.
    DictFrom,
}

/// Most entries of a dict display built by one [`Helper::DictFrom`] call
/// (two argument slots each).
pub const MAX_DICT_FROM: u32 = MAX_ARGS / 2;

impl Helper {
    pub const ALL: [Helper; 22] = [
        Helper::Binary,
        Helper::Unary,
        Helper::Truthy,
        Helper::IfCompare,
        Helper::Builtin,
        Helper::Index,
        Helper::Attr,
        Helper::SetIndex,
        Helper::SetPath,
        Helper::ListNew,
        Helper::ListPush,
        Helper::DictNew,
        Helper::DictSet,
        Helper::ToText,
        Helper::Raise,
        Helper::TakeError,
        Helper::StackOverflow,
        Helper::SetOutput,
        Helper::AsyncDone,
        Helper::Collect,
        Helper::AsyncStart,
        Helper::DictFrom,
    ];

    /// Import name.
    pub fn name(self) -> &'static str {
        match self {
            Helper::Binary => "binary",
            Helper::Unary => "unary",
            Helper::Truthy => "truthy",
            Helper::IfCompare => "if_compare",
            Helper::Builtin => "builtin",
            Helper::Index => "index",
            Helper::Attr => "attr",
            Helper::SetIndex => "set_index",
            Helper::SetPath => "set_path",
            Helper::ListNew => "list_new",
            Helper::ListPush => "list_push",
            Helper::DictNew => "dict_new",
            Helper::DictSet => "dict_set",
            Helper::ToText => "to_text",
            Helper::Raise => "raise",
            Helper::TakeError => "take_error",
            Helper::StackOverflow => "stack_overflow",
            Helper::SetOutput => "set_output",
            Helper::AsyncDone => "async_done",
            Helper::Collect => "collect",
            Helper::AsyncStart => "async_start",
            Helper::DictFrom => "dict_from",
        }
    }

    /// Wasm signature `(params, results)`.
    pub fn signature(self) -> (&'static [Ty], &'static [Ty]) {
        use Ty::{I32, I64};
        const VALUE: &[Ty] = &[I32, I64];
        match self {
            Helper::Binary => (&[I32, I32, I64, I32, I64], VALUE),
            Helper::Unary => (&[I32, I32, I64], VALUE),
            Helper::Truthy => (&[I32, I64], &[I32]),
            Helper::IfCompare => (&[I32, I32, I64, I32, I64], &[I32]),
            Helper::Builtin => (&[I32, I32, I32, I64], VALUE),
            Helper::Index => (&[I32, I64, I32, I64], VALUE),
            Helper::Attr => (&[I32, I64, I32], VALUE),
            Helper::SetIndex | Helper::SetPath => (&[I32, I64, I32, I64, I32, I64], &[I32]),
            Helper::ListNew | Helper::DictNew => (&[], &[I64]),
            Helper::ListPush => (&[I64, I32, I64], &[]),
            Helper::DictSet => (&[I64, I32, I64, I32, I64], &[I32]),
            Helper::ToText => (&[I32, I64], VALUE),
            Helper::Raise => (&[I32, I32], VALUE),
            Helper::TakeError => (&[], VALUE),
            Helper::StackOverflow => (&[], &[]),
            Helper::SetOutput => (&[I32, I64], &[]),
            Helper::AsyncDone => (&[I32, I64, I32, I64], &[]),
            Helper::Collect => (&[], &[I32]),
            Helper::AsyncStart => (&[I32, I64, I32, I32, I64], &[]),
            Helper::DictFrom => (&[I32, I32], &[I64]),
        }
    }
}

/// Wasm signature of every command import: `(args_ptr, argc) -> (tag, payload)`.
/// Arguments are laid out at `args_ptr` in the form's parameter order:
/// a *value* parameter is one slot holding the value; a *literal* parameter is
/// one string slot with its text; a *name* parameter is two slots, the name
/// as a string then the variable's value (`None` if undefined); a *target*
/// parameter is one slot holding the target variable's current value
/// (`None` if undefined), which in-place commands update.
pub const COMMAND_SIGNATURE: (&[Ty], &[Ty]) = (&[Ty::I32, Ty::I32], &[Ty::I32, Ty::I64]);
