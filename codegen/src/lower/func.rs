//! One WebAssembly function under construction: locals, the control-label
//! stack, error branches, variable access and source-map marks.

use std::collections::{HashMap, HashSet};

use avap_hostfns::abi::{self, Helper};
use wasm_encoder::{BlockType, Function, InstructionSink, MemArg, ValType};

use super::module::ModuleCtx;
use crate::diag::FileId;
use crate::span::Span;

/// Where a variable lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Home {
    /// Wasm locals `tag` and `tag + 1` (payload).
    Local(u32),
    /// Top-level variable slot in linear memory.
    Global(u32),
}

/// What reading an unassigned variable yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Undefined {
    /// Raise `NameError` (expressions).
    NameError,
    /// The variable's own name as a string (value arguments, spec §4).
    OwnText,
    /// `None` (name arguments, targets).
    AsNone,
}

/// Kind of function being built; decides scope rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FuncKind {
    /// The top level: every variable is global.
    Main,
    /// A user function: its locals, then globals.
    User,
    /// A `go_async` block: everything it writes is its own (a snapshot).
    Async,
}

/// One value-producing pair of wasm locals `(tag: i32, payload: i64)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pair(pub u32);

impl Pair {
    pub fn tag(self) -> u32 {
        self.0
    }
    pub fn payload(self) -> u32 {
        self.0 + 1
    }
}

pub(crate) struct FuncCtx<'m, 'a> {
    pub m: &'m mut ModuleCtx<'a>,
    pub file: FileId,
    pub kind: FuncKind,
    body: Vec<u8>,
    params: u32,
    locals: Vec<ValType>,
    /// Variables with a local home.
    pub vars: HashMap<String, Pair>,
    /// Open control constructs; `true` marks an error handler target.
    labels: Vec<bool>,
    /// Scratch for error checks and stores (never live across evaluation).
    pub scratch: Pair,
    /// Operands of a binary operator (never live across evaluation).
    pub lhs: Pair,
    pub rhs: Pair,
    pub tmp64: u32,
    /// `(offset in body, line, column)`.
    marks: Vec<(usize, u32, u32)>,
    /// Bytes of stack budget this frame costs (user functions only).
    pub frame_cost: i64,
    /// For endpoint handlers: the `output` variable reported at return.
    pub output_var: Option<String>,
    /// Top level: globals cached in locals, with their slots.
    cached: Vec<(Pair, u32)>,
    /// What the last [`FuncCtx::expr`] left on the stack.
    pub last: super::expr::Known,
    /// Local variables certainly assigned at this point of the code.
    pub defined: HashSet<String>,
    /// Local variables certainly holding an int at this point.
    pub ints: HashSet<String>,
    /// Loop counters with constant bounds: the range their value lies in.
    pub ranges: HashMap<String, (i64, i64)>,
    /// Whether code emitted since the enclosing loop began may create heap
    /// objects (then its back-edge polls the garbage collector).
    pub allocates: bool,
    /// Loop bodies this function may still emit again to refine what is
    /// known at their start (bounds compile time under deep nesting).
    pub speculation_budget: u32,
    /// Code and locals that loop versioning added on top of what the
    /// unversioned loops would take (see `FuncCtx::loop_`): the compile
    /// budget judges a script without them, and they have a budget of their
    /// own ([`super::VERSIONING_FUNCTION_BYTES`]).
    pub versioned: Versioned,
    /// Inside one copy of a versioned loop: loops in it are not versioned
    /// again, so code grows at most twofold, never with nesting depth.
    pub in_versioned_copy: bool,
    /// While emitting the general copy of a versioned loop, new locals
    /// reuse the fast copy's (same types, same order) so that two copies of
    /// the same code are byte for byte the same: `(next, end)` indices into
    /// `locals`.
    reuse: Option<(usize, usize)>,
    /// Locals handed out so far (reused ones included).
    allocations: usize,
}

/// What loop versioning added to a function: bytes of code, wasm locals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Versioned {
    pub bytes: usize,
    pub locals: usize,
}

/// A point in the emitted code to return to (see [`FuncCtx::rollback`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checkpoint {
    body: usize,
    marks: usize,
    labels: usize,
    versioned: Versioned,
}

impl<'m, 'a> FuncCtx<'m, 'a> {
    /// A function whose first `params` wasm locals are parameter pairs.
    pub fn new(m: &'m mut ModuleCtx<'a>, file: FileId, kind: FuncKind, param_pairs: u32) -> Self {
        let mut f = FuncCtx {
            m,
            file,
            kind,
            body: Vec::new(),
            params: param_pairs * 2,
            locals: Vec::new(),
            vars: HashMap::new(),
            labels: Vec::new(),
            scratch: Pair(0),
            lhs: Pair(0),
            rhs: Pair(0),
            tmp64: 0,
            marks: Vec::new(),
            frame_cost: 0,
            output_var: None,
            cached: Vec::new(),
            last: super::expr::Known::ANY,
            defined: HashSet::new(),
            ints: HashSet::new(),
            ranges: HashMap::new(),
            speculation_budget: 32,
            allocates: false,
            versioned: Versioned::default(),
            in_versioned_copy: false,
            reuse: None,
            allocations: 0,
        };
        f.scratch = f.new_pair();
        f.lhs = f.new_pair();
        f.rhs = f.new_pair();
        f.tmp64 = f.new_local(ValType::I64);
        f
    }

    pub fn ins(&mut self) -> InstructionSink<'_> {
        InstructionSink::new(&mut self.body)
    }

    pub fn new_local(&mut self, ty: ValType) -> u32 {
        self.alloc(&[ty])
    }

    /// Consecutive locals of the given types; the index of the first.
    fn alloc(&mut self, types: &[ValType]) -> u32 {
        self.allocations += types.len();
        if let Some((next, end)) = self.reuse {
            let fits = next + types.len() <= end && self.locals[next..next + types.len()] == *types;
            if fits {
                self.reuse = Some((next + types.len(), end));
                return self.params + u32::try_from(next).expect("local count fits u32");
            }
            // The copies differ from here on: no point in lining them up.
            self.reuse = None;
        }
        let idx = self.params + u32::try_from(self.locals.len()).expect("local count fits u32");
        self.locals.extend_from_slice(types);
        idx
    }

    /// From now on, hand out the locals `from..` (declared so far) again
    /// before declaring new ones (see [`FuncCtx::reuse`]); `None` stops.
    pub fn reuse_locals(&mut self, from: Option<usize>) {
        self.reuse = from.map(|f| (f, self.locals.len()));
    }

    /// Locals declared so far, parameters excluded (a position for
    /// [`FuncCtx::reuse_locals`]).
    pub fn declared_locals(&self) -> usize {
        self.locals.len()
    }

    /// Locals handed out so far, reused ones included.
    pub fn allocations(&self) -> usize {
        self.allocations
    }

    /// Wasm locals declared so far, parameters included.
    pub fn local_count(&self) -> usize {
        self.params as usize + self.locals.len()
    }

    /// A fresh `(tag, payload)` pair of locals.
    pub fn new_pair(&mut self) -> Pair {
        Pair(self.alloc(&[ValType::I32, ValType::I64]))
    }

    /// Record that the code emitted next belongs to `span`.
    pub fn mark(&mut self, span: Span) {
        let lc = self.m.sources.get(self.file).line_col(span.start as usize);
        if self
            .marks
            .last()
            .is_some_and(|&(o, l, c)| o == self.body.len() && l == lc.line && c == lc.column)
        {
            return;
        }
        self.marks.push((self.body.len(), lc.line, lc.column));
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            body: self.body.len(),
            marks: self.marks.len(),
            labels: self.labels.len(),
            versioned: self.versioned,
        }
    }

    /// Forget the code emitted since `c`. Locals, constants and reserved
    /// functions created meanwhile stay (unused, harmless).
    pub fn rollback(&mut self, c: Checkpoint) {
        self.body.truncate(c.body);
        self.marks.truncate(c.marks);
        self.labels.truncate(c.labels);
        self.versioned = c.versioned;
    }

    /// Where the code emitted next will start.
    pub fn offset(&self) -> usize {
        self.body.len()
    }

    /// The code emitted between two offsets.
    pub fn code(&self, from: usize, to: usize) -> &[u8] {
        &self.body[from..to]
    }

    /// Replace the code emitted since `c` by `prefix` followed by the code
    /// from offset `from` on (which must be after `c`), moving its
    /// source-map marks along. Wasm code has no absolute offsets, so the
    /// moved instructions mean the same as long as they sit at the same
    /// label depth.
    pub fn splice(&mut self, c: Checkpoint, prefix: &[u8], from: usize) {
        let tail = self.body.split_off(from);
        let first_mark = self.marks.partition_point(|&(o, _, _)| o < from);
        let moved: Vec<(usize, u32, u32)> = self.marks.split_off(first_mark);
        self.body.truncate(c.body);
        self.marks.truncate(c.marks);
        self.body.extend_from_slice(prefix);
        let start = self.body.len();
        self.marks
            .extend(moved.into_iter().map(|(o, l, col)| (o - from + start, l, col)));
        self.body.extend_from_slice(&tail);
        self.versioned = c.versioned;
    }

    // ---- control labels ------------------------------------------------

    pub fn open(&mut self, handler: bool) {
        self.labels.push(handler);
    }

    pub fn close(&mut self) {
        self.labels.pop();
        self.ins().end();
    }

    pub fn block(&mut self, ty: BlockType, handler: bool) {
        self.ins().block(ty);
        self.open(handler);
    }

    /// Relative depth of the innermost error handler.
    pub fn handler_depth(&self) -> u32 {
        let pos = self
            .labels
            .iter()
            .rposition(|h| *h)
            .expect("every function has an error handler label");
        u32::try_from(self.labels.len() - 1 - pos).expect("label depth fits u32")
    }

    /// Relative depth of the label opened `n`-th (0 = outermost).
    pub fn depth_of(&self, index: usize) -> u32 {
        u32::try_from(self.labels.len() - 1 - index).expect("label depth fits u32")
    }

    pub fn label_count(&self) -> usize {
        self.labels.len()
    }

    pub fn pair_type(&mut self) -> BlockType {
        BlockType::FunctionType(self.m.type_index(&[], &[ValType::I32, ValType::I64]))
    }

    // ---- errors ----------------------------------------------------------

    /// Stack: `(tag, payload)` → same; branches to the handler on `TAG_ERR`.
    pub fn check_err(&mut self) {
        let s = self.scratch;
        let depth = self.handler_depth();
        self.ins()
            .local_set(s.payload())
            .local_tee(s.tag())
            .i32_const(abi::TAG_ERR)
            .i32_eq()
            .br_if(depth)
            .local_get(s.tag())
            .local_get(s.payload());
    }

    /// Stack: `i32` status → nothing; branches to the handler when negative.
    pub fn check_status(&mut self) {
        let depth = self.handler_depth();
        self.ins().i32_const(0).i32_lt_s().br_if(depth);
    }

    /// Raise a catchable error of `kind` with a constant message and branch
    /// to the handler. Leaves a well-typed `(tag, payload)` for validation.
    pub fn raise(&mut self, kind: avap_hostfns::ErrorKind, message: &str) {
        let k = self.m.const_index(message);
        self.ins().i32_const(kind.code()).i32_const(k);
        self.helper(Helper::Raise);
        self.check_err();
    }

    pub fn helper(&mut self, h: Helper) {
        // Helpers that never create heap objects.
        if !matches!(
            h,
            Helper::Truthy | Helper::IfCompare | Helper::Raise | Helper::StackOverflow | Helper::SetOutput
        ) {
            self.allocates = true;
        }
        self.call_helper(h);
    }

    /// Call a helper known (from the operand types) not to allocate.
    pub fn call_helper(&mut self, h: Helper) {
        let idx = ModuleCtx::helper_index(h);
        self.ins().call(idx);
    }

    // ---- constants -------------------------------------------------------

    pub fn push_str(&mut self, s: &str) {
        let k = self.m.const_index(s);
        self.ins().i32_const(abi::TAG_STR).i64_const(i64::from(k));
    }

    pub fn push_none(&mut self) {
        self.ins().i32_const(abi::TAG_NONE).i64_const(0);
    }

    // ---- variables -------------------------------------------------------

    /// Where `name` lives when read in this function.
    pub fn home(&mut self, name: &str) -> Home {
        match self.vars.get(name) {
            Some(p) => Home::Local(p.0),
            None => Home::Global(self.m.global_slot(name)),
        }
    }

    /// The global variable `name`: its slot, or on the top level the local
    /// that caches it.
    pub fn global_home(&mut self, name: &str) -> Home {
        if self.kind == FuncKind::Main
            && let Some(p) = self.vars.get(name)
        {
            return Home::Local(p.0);
        }
        Home::Global(self.m.global_slot(name))
    }

    /// Top level: cache every global it touches in a pair of locals.
    pub fn cache_globals(&mut self, names: impl IntoIterator<Item = String>) {
        for name in names {
            let slot = self.m.global_slot(&name);
            let p = self.new_pair();
            self.vars.insert(name, p);
            self.cached.push((p, slot));
        }
    }

    /// Top level: write the cached globals back to memory, where user
    /// functions, `go_async` blocks and the host read them.
    pub fn flush_main(&mut self) {
        for i in 0..self.cached.len() {
            let (p, slot) = self.cached[i];
            let addr = global_addr(slot);
            self.ins().i32_const(addr).local_get(p.tag()).i32_store(mem(0, 2));
            self.ins().i32_const(addr).local_get(p.payload()).i64_store(mem(8, 3));
        }
    }

    /// Record a write of `name` (`int`: the value is certainly an int).
    pub fn note_write(&mut self, name: &str, int: bool) {
        self.ranges.remove(name);
        self.defined.insert(name.to_owned());
        if int {
            self.ints.insert(name.to_owned());
        } else {
            self.ints.remove(name);
        }
    }

    /// Top level, after a call: a function may have written globals.
    pub fn reload_main(&mut self) {
        if self.kind == FuncKind::Main {
            // Globals may now hold anything (but stay assigned).
            self.ints.clear();
            self.ranges.clear();
        }
        for i in 0..self.cached.len() {
            let (p, slot) = self.cached[i];
            let addr = global_addr(slot);
            self.ins().i32_const(addr).i32_load(mem(0, 2)).local_set(p.tag());
            self.ins().i32_const(addr).i64_load(mem(8, 3)).local_set(p.payload());
        }
    }

    /// Push the raw `(tag, payload)` of a variable (tag may be `TAG_UNDEF`).
    pub fn load(&mut self, home: Home) {
        match home {
            Home::Local(t) => {
                self.ins().local_get(t).local_get(t + 1);
            }
            Home::Global(slot) => {
                let addr = global_addr(slot);
                self.ins()
                    .i32_const(addr)
                    .i32_load(mem(0, 2))
                    .i32_const(addr)
                    .i64_load(mem(8, 3));
            }
        }
    }

    /// Pop `(tag, payload)` into a variable.
    pub fn store(&mut self, home: Home) {
        match home {
            Home::Local(t) => {
                self.ins().local_set(t + 1).local_set(t);
            }
            Home::Global(slot) => {
                let addr = global_addr(slot);
                let s = self.scratch;
                self.ins()
                    .local_set(s.payload())
                    .local_set(s.tag())
                    .i32_const(addr)
                    .local_get(s.tag())
                    .i32_store(mem(0, 2))
                    .i32_const(addr)
                    .local_get(s.payload())
                    .i64_store(mem(8, 3));
            }
        }
    }

    pub fn load_pair(&mut self, p: Pair) {
        self.ins().local_get(p.tag()).local_get(p.payload());
    }

    pub fn store_pair(&mut self, p: Pair) {
        self.ins().local_set(p.payload()).local_set(p.tag());
    }

    /// Store local pair `p` in value slot `index` of the argument area
    /// (what a command call or `rt.dict_from` reads).
    pub fn store_arg(&mut self, index: usize, p: Pair) {
        let at = arg_slot(index);
        self.ins().i32_const(at).local_get(p.tag()).i32_store(mem(0, 2));
        self.ins().i32_const(at).local_get(p.payload()).i64_store(mem(8, 3));
    }

    /// Store the constant value `(tag, payload)` in value slot `index` of
    /// the argument area.
    pub fn store_arg_const(&mut self, index: usize, tag: i32, payload: i64) {
        let at = arg_slot(index);
        self.ins().i32_const(at).i32_const(tag).i32_store(mem(0, 2));
        self.ins().i32_const(at).i64_const(payload).i64_store(mem(8, 3));
    }

    /// Read variable `name` with the given rule for unassigned variables.
    pub fn read(&mut self, home: Home, name: &str, undefined: Undefined) {
        self.load(home);
        let s = self.scratch;
        let ty = self.pair_type();
        self.ins().local_set(s.payload()).local_tee(s.tag()).i32_eqz().if_(ty);
        self.open(false);
        match undefined {
            Undefined::NameError => {
                self.raise(
                    avap_hostfns::ErrorKind::NameError,
                    &format!("name '{name}' is not defined"),
                );
            }
            Undefined::OwnText => self.push_str(name),
            Undefined::AsNone => self.push_none(),
        }
        self.ins().else_();
        let s = self.scratch;
        self.ins().local_get(s.tag()).local_get(s.payload());
        self.close();
    }

    /// Finish: the encoded function and its source-map marks (offsets
    /// relative to the start of the body as wasmtime reports them).
    /// The module's versioning total counts this function's.
    pub fn finish(self) -> (Function, Vec<(u32, u32, u32)>) {
        self.m.versioned_bytes += self.versioned.bytes;
        let mut f = Function::new_with_locals_types(self.locals.iter().copied());
        let header = f.byte_len();
        f.raw(self.body.iter().copied());
        let marks = self
            .marks
            .into_iter()
            .map(|(o, l, c)| (u32::try_from(header + o).unwrap_or(u32::MAX), l, c))
            .collect();
        (f, marks)
    }
}

pub(crate) fn global_addr(slot: u32) -> i32 {
    i32::try_from(abi::GLOBALS_BASE + slot * abi::SLOT_BYTES).expect("global slot address fits i32")
}

/// Address of value slot `index` of the argument area, as an `i32.const`.
pub(crate) fn arg_slot(index: usize) -> i32 {
    u32::try_from(index)
        .ok()
        .and_then(|i| i.checked_mul(abi::SLOT_BYTES))
        .and_then(|off| i32::try_from(abi::ARGS_BASE + off).ok())
        .expect("argument slot address fits i32")
}

pub(crate) fn mem(offset: u64, align: u32) -> MemArg {
    MemArg {
        offset,
        align,
        memory_index: 0,
    }
}
