//! Statements and blocks.

use std::collections::{HashMap, HashSet};

use avap_hostfns::abi::{self, BinOp, Helper, IfCmp};
use wasm_encoder::{BlockType, ValType};

use super::command::{Site, statement_target};
use super::expr::Known;
use super::func::{FuncCtx, FuncKind, Undefined};
use super::module::PendingAsync;
use super::scope::written_names;
use crate::ast::{Arg, AssignOp, AssignTarget, Comparator, Condition, Expr, ExprKind, Ident, Stmt, StmtKind};

/// Name of the request-wide variable holding the last caught error.
pub(crate) const LAST_ERROR: &str = "__last_error__";

impl<'a> FuncCtx<'_, 'a> {
    pub fn stmts(&mut self, body: &'a [Stmt]) {
        for s in body {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, s: &'a Stmt) {
        self.mark(s.span);
        match &s.kind {
            StmtKind::Assign { target, op, value } => self.assign(target, *op, value),
            StmtKind::Call { call } => {
                self.call_named(call, Site::Statement);
                self.ins().drop().drop();
            }
            StmtKind::If {
                condition,
                then_body,
                else_body,
            } => {
                self.condition(condition);
                self.ins().if_(BlockType::Empty);
                self.open(false);
                let before = self.facts();
                self.stmts(then_body);
                let after_then = self.facts();
                self.set_facts(before.clone());
                if let Some(e) = else_body {
                    self.ins().else_();
                    self.stmts(e);
                }
                let after_else = self.facts();
                self.set_facts(meet(&after_then, &after_else));
                self.close();
            }
            StmtKind::Loop { var, from, to, body } => self.loop_(var, from, to, body),
            StmtKind::Try {
                body,
                error_var,
                assign,
                handler,
            } => {
                self.ins().block(BlockType::Empty);
                self.open(false);
                let after = self.label_count() - 1;
                self.ins().block(BlockType::Empty);
                self.open(true);
                let before = self.facts();
                self.stmts(body);
                let after_body = self.facts();
                // The handler may start anywhere in the body.
                self.set_facts(before);
                self.forget_writes(body);
                let d = self.depth_of(after);
                self.ins().br(d);
                self.close();
                // An error is pending: take its message.
                self.helper(Helper::TakeError);
                let msg = self.new_pair();
                self.store_pair(msg);
                let last = self.global_home(LAST_ERROR);
                self.load_pair(msg);
                self.store(last);
                for v in [error_var, assign].into_iter().flatten() {
                    let home = self.target_home(&v.name);
                    self.load_pair(msg);
                    self.store(home);
                    self.note_write(&v.name, false);
                }
                self.stmts(handler);
                let after_handler = self.facts();
                self.set_facts(meet(&after_body, &after_handler));
                self.close();
            }
            StmtKind::Function(_) | StmtKind::Include { .. } => {}
            StmtKind::Return { value } => {
                match value {
                    Some(v) => self.value_with_call(v),
                    None => self.push_none(),
                }
                self.epilogue();
            }
            StmtKind::Async { id, body } => self.go_async(id, body),
        }
    }

    /// An expression whose outermost call may use the assignment form.
    fn value_with_call(&mut self, v: &Expr) {
        match &v.kind {
            ExprKind::Call(call) if call.name().is_some() => self.call_named(call, Site::Assigned(None)),
            _ => self.expr(v),
        }
    }

    fn assign(&mut self, target: &AssignTarget, op: AssignOp, value: &Expr) {
        let name = &target.name.name;
        let home = match self.kind {
            FuncKind::Main => self.global_home(name),
            _ => self.home(name),
        };
        let binop = match op {
            AssignOp::Assign => None,
            AssignOp::AddAssign => Some(BinOp::Add),
            AssignOp::SubAssign => Some(BinOp::Sub),
            AssignOp::MulAssign => Some(BinOp::Mul),
            AssignOp::DivAssign => Some(BinOp::Div),
        };
        if target.indices.is_empty() {
            let int = if let Some(op) = binop {
                let known_int = self.ints.contains(name) && matches!(home, super::func::Home::Local(_));
                if self.defined.contains(name) && matches!(home, super::func::Home::Local(_)) {
                    self.load(home);
                } else {
                    self.read(home, name, Undefined::NameError);
                }
                self.expr(value);
                let kb = self.last;
                self.mark(target.span);
                let ka = if known_int {
                    super::expr::Known::INT
                } else {
                    super::expr::Known::ANY
                };
                self.binary_known(op, ka, kb).int
            } else {
                match &value.kind {
                    ExprKind::Call(call) if call.name().is_some() => {
                        self.call_named(call, Site::Assigned(Some(&target.name)));
                        false
                    }
                    _ => {
                        self.expr(value);
                        self.last.int
                    }
                }
            };
            self.store(home);
            self.note_write(name, int);
            return;
        }
        // obj[i]…[k] = value: evaluate the container and the last index.
        self.read(home, name, Undefined::NameError);
        let (last, path) = target.indices.split_last().expect("indices is not empty");
        let obj = self.new_pair();
        let idx = self.new_pair();
        if path.is_empty() {
            self.store_pair(obj);
            self.expr(last);
            self.store_pair(idx);
        } else {
            // Nested containers are values inside their parent, so the
            // runtime sets a whole path at once.
            self.store_pair(obj);
            let all: Vec<Expr> = target.indices.clone();
            self.list(&all, false);
            self.store_pair(idx);
        }
        match binop {
            Some(op) => {
                self.load_pair(obj);
                for i in path {
                    self.expr(i);
                    self.helper(Helper::Index);
                    self.check_err();
                }
                self.expr(last);
                self.mark(target.span);
                self.helper(Helper::Index);
                self.check_err();
                self.expr(value);
                self.binary(op);
            }
            None => self.expr(value),
        }
        let v = self.new_pair();
        self.store_pair(v);
        self.load_pair(obj);
        self.load_pair(idx);
        self.load_pair(v);
        self.mark(target.span);
        self.helper(if path.is_empty() {
            Helper::SetIndex
        } else {
            Helper::SetPath
        });
        self.check_status();
    }

    /// Push an `i32` truth value for an `if` condition.
    fn condition(&mut self, c: &Condition) {
        match c {
            Condition::Expression { expr, .. } => {
                self.expr(expr);
                self.truthy();
            }
            Condition::Compare {
                lhs, rhs, comparator, ..
            } => {
                self.if_arg(lhs);
                self.if_arg(rhs);
                let (a, b) = (self.lhs, self.rhs);
                self.store_pair(b);
                self.store_pair(a);
                let cmp = if_cmp(*comparator);
                self.ins().block(BlockType::Result(ValType::I32));
                self.open(false);
                if !matches!(cmp, IfCmp::In | IfCmp::NotIn) {
                    // Two ints compare inline (text normalisation agrees).
                    self.ins().block(BlockType::Empty);
                    self.open(false);
                    self.int_guard(Known::ANY, Known::ANY);
                    self.ins().local_get(a.payload()).local_get(b.payload());
                    match cmp {
                        IfCmp::Eq => self.ins().i64_eq(),
                        IfCmp::NotEq => self.ins().i64_ne(),
                        IfCmp::Lt => self.ins().i64_lt_s(),
                        IfCmp::Le => self.ins().i64_le_s(),
                        IfCmp::Gt => self.ins().i64_gt_s(),
                        _ => self.ins().i64_ge_s(),
                    };
                    self.ins().br(1);
                    self.close();
                }
                self.ins().i32_const(cmp as i32);
                self.load_pair(a);
                self.load_pair(b);
                self.helper(Helper::IfCompare);
                let s = self.scratch;
                self.ins().local_tee(s.tag());
                self.check_status();
                self.ins().local_get(s.tag());
                self.close();
            }
        }
    }

    fn if_arg(&mut self, a: &Arg) {
        match &a.value {
            Some(e) => self.value_arg(e),
            None => self.push_none(),
        }
    }

    /// `startLoop(var, from, to)`: the counter lives in an `i64` local and
    /// is stored into the variable at the start of every iteration, so a
    /// body that assigns the variable does not change the iterations.
    ///
    /// When both bounds are known statically (constants, or counters of
    /// enclosing loops), the counter's range is a fact the body compiles
    /// with (no overflow or sign checks on `i * i`, `i % 7`, …). When one
    /// comes from the request, the loop is *versioned*: a guard on the
    /// evaluated bounds picks a fast copy compiled with the counter in
    /// [`FAST_COUNTER`], or the general copy (see [`Self::versioned_loop`]).
    fn loop_(&mut self, var: &'a Ident, from: &'a Expr, to: &'a Expr, body: &'a [Stmt]) {
        let lo = self.new_local(ValType::I64);
        let hi = self.new_local(ValType::I64);
        let mut known = [None, None];
        for (i, (e, local)) in [(from, lo), (to, hi)].into_iter().enumerate() {
            known[i] = self.loop_bound(e);
            self.ins().local_set(local);
        }
        let lp = CountedLoop {
            var,
            body,
            lo,
            hi,
            home: self.target_home(&var.name),
        };
        match known {
            [Some(f), Some(t)] => {
                // The counter runs within from's lowest and to's highest
                // value (never, when those cross).
                let range = (f.0 <= t.1).then_some((f.0, t.1));
                self.counted_loop(&lp, range);
            }
            [f, t] => match fast_range(f, t) {
                Some(fast) if self.may_version(var, body) => self.versioned_loop(&lp, fast),
                _ => {
                    self.counted_loop(&lp, None);
                }
            },
        }
    }

    /// Whether a loop over `body` is worth a second copy: its body reads
    /// the counter (else the range facts change nothing), holds no
    /// `go_async` (each copy would queue a block function of its own) and
    /// no loop that will be versioned itself — the innermost request-bound
    /// loops are versioned, where the time goes, and nothing is copied
    /// twice. Never inside a copy of a versioned loop (no growth with the
    /// nesting depth).
    fn may_version(&self, var: &Ident, body: &[Stmt]) -> bool {
        if self.in_versioned_copy {
            return false;
        }
        let mut reads_counter = false;
        let mut blocked = false;
        crate::ast::walk_stmts(body, &mut |s| {
            match &s.kind {
                StmtKind::Async { .. } => blocked = true,
                StmtKind::Loop { from, to, .. }
                    if !matches!((&from.kind, &to.kind), (ExprKind::Int(_), ExprKind::Int(_))) =>
                {
                    blocked = true;
                }
                _ => {}
            }
            crate::ast::walk_stmt_exprs(s, &mut |e| {
                if matches!(&e.kind, ExprKind::Name(id) if id.name == var.name) {
                    reads_counter = true;
                }
            });
        });
        reads_counter && !blocked
    }

    /// `if (bounds within fast) { loop with the counter in fast } else {
    /// loop }`. Both copies have the same semantics (the fast one only
    /// drops checks that cannot fire when the guard holds); facts after
    /// the statement are those of both. The fast copy is dropped again
    /// when its body compiled to the same bytes as the general one, or
    /// when it does not fit the versioning budget.
    fn versioned_loop(&mut self, lp: &CountedLoop<'a>, fast: FastRange) {
        let c0 = self.checkpoint();
        let start = self.offset();
        let before = self.facts();
        let budget = self.speculation_budget;
        let first_local = self.declared_locals();
        if fast.check_lo {
            self.ins().local_get(lp.lo).i64_const(fast.range.0).i64_ge_s();
        }
        if fast.check_hi {
            self.ins().local_get(lp.hi).i64_const(fast.range.1).i64_le_s();
        }
        if fast.check_lo && fast.check_hi {
            self.ins().i32_and();
        }
        self.ins().if_(BlockType::Empty);
        self.open(false);
        let outer_copy = std::mem::replace(&mut self.in_versioned_copy, true);
        let fast_body = self.counted_loop(lp, Some(fast.range));
        let after_fast = self.facts();
        let budget_fast = self.speculation_budget;
        self.ins().else_();
        let else_at = self.offset();
        // What the fast copy adds: the guard, the copy, `else` and `end`.
        let extra = else_at - start + 1;
        if extra > self.versioning_left() {
            // Too large to keep twice: the general copy alone, on the
            // locals the fast one no longer uses.
            self.in_versioned_copy = outer_copy;
            self.rollback(c0);
            let (_, kept) = self.general_copy(lp, before, budget, first_local);
            self.note_versioned_locals(first_local, kept);
            return;
        }
        let (general_body, general_allocations) = self.general_copy(lp, before, budget, first_local);
        self.in_versioned_copy = outer_copy;
        self.speculation_budget = budget_fast.min(self.speculation_budget);
        let after_general = self.facts();
        let general_len = self.offset() - else_at;
        if self.code(fast_body.0, fast_body.1) == self.code(general_body.0, general_body.1) {
            // The counter's range changed nothing: keep the general copy
            // alone, in a block where the `if` was (same label depths).
            let mut block = Vec::new();
            wasm_encoder::InstructionSink::new(&mut block).block(BlockType::Empty);
            self.splice(c0, &block, else_at);
        }
        self.close();
        self.versioned.bytes += self.offset() - start - general_len;
        self.note_versioned_locals(first_local, general_allocations);
        self.set_facts(meet(&after_fast, &after_general));
    }

    /// The general copy of a versioned loop, compiled from the facts and
    /// speculation budget that held before the fast copy, on the locals
    /// from `first_local` on (the fast copy's, reused). Returns where its
    /// body lies and how many locals it allocated.
    fn general_copy(
        &mut self,
        lp: &CountedLoop<'a>,
        before: Facts,
        budget: u32,
        first_local: usize,
    ) -> ((usize, usize), usize) {
        self.set_facts(before);
        self.speculation_budget = budget;
        self.reuse_locals(Some(first_local));
        let allocations = self.allocations();
        let body = self.counted_loop(lp, None);
        let allocated = self.allocations() - allocations;
        self.reuse_locals(None);
        (body, allocated)
    }

    /// Versioning bytes this function may still spend (its own budget and
    /// what is left of the module's).
    fn versioning_left(&self) -> usize {
        let module_left = super::VERSIONING_MODULE_BYTES.saturating_sub(self.m.versioned_bytes);
        super::VERSIONING_FUNCTION_BYTES
            .min(module_left)
            .saturating_sub(self.versioned.bytes)
    }

    /// Locals declared since `first` beyond the `kept` an unversioned loop
    /// would have declared count as versioning's.
    fn note_versioned_locals(&mut self, first: usize, kept: usize) {
        let declared = self.declared_locals() - first;
        self.versioned.locals += declared.saturating_sub(kept);
    }

    /// Emit the loop; the counter lies in `range` when given. Leaves the
    /// facts that hold after the loop; returns where the code of its body
    /// (as finally emitted) starts and ends.
    fn counted_loop(&mut self, lp: &CountedLoop<'a>, counter_range: Option<(i64, i64)>) -> (usize, usize) {
        let CountedLoop {
            var,
            body,
            lo,
            hi,
            home,
        } = *lp;
        self.ins().block(BlockType::Empty);
        self.open(false);
        self.ins().local_get(lo).local_get(hi).i64_gt_s().br_if(0);
        self.ins().loop_(BlockType::Empty);
        self.open(false);
        self.ins().i32_const(abi::TAG_INT).local_get(lo);
        self.store(home);
        // What holds at the start of every iteration: assume the facts from
        // before the loop, emit the body, and keep the assumption only if
        // the body preserves it; otherwise shrink it and emit again. The
        // counter was just stored, so it is an int at every start.
        let before = self.facts();
        let mut assumed = before.clone();
        let mut conservative = false;
        let emitted = loop {
            let checkpoint = self.checkpoint();
            let body_start = self.offset();
            if conservative {
                self.set_facts(before.clone());
                self.forget_writes(body);
            } else {
                self.set_facts(assumed.clone());
            }
            self.note_write(&var.name, true);
            if let Some(r) = counter_range {
                self.ranges.insert(var.name.clone(), r);
            }
            let start = self.facts();
            let outer_allocates = std::mem::replace(&mut self.allocates, false);
            self.stmts(body);
            // Poll only when the body may create garbage: a pure int loop
            // pays nothing for the collector.
            if self.kind == FuncKind::Main && self.allocates {
                self.gc_poll();
            }
            self.allocates |= outer_allocates;
            let end = self.facts();
            if conservative || start.preserved_by(&end, &var.name) {
                break (body_start, self.offset());
            }
            self.rollback(checkpoint);
            if self.speculation_budget == 0 {
                conservative = true;
            } else {
                self.speculation_budget -= 1;
                assumed = meet(&assumed, &end);
            }
        };
        // Next iteration while the counter is below `to`: stepping only
        // then means the counter never wraps (at i64::MAX it would, and run
        // forever).
        self.ins()
            .local_get(lo)
            .local_get(hi)
            .i64_lt_s()
            .if_(BlockType::Empty)
            .local_get(lo)
            .i64_const(1)
            .i64_add()
            .local_set(lo)
            .br(1)
            .end();
        // Counter after the loop: to + 1 (spec §5), an IntegerOverflow when
        // `to` is i64::MAX, like any other int arithmetic. A counter known
        // to stay below the maximum needs no check.
        if counter_range.is_none_or(|(_, to)| to == i64::MAX) {
            self.mark(var.span);
            self.ins()
                .local_get(lo)
                .i64_const(i64::MAX)
                .i64_eq()
                .if_(BlockType::Empty);
            self.open(false);
            self.raise(
                avap_hostfns::ErrorKind::IntegerOverflow,
                &format!(
                    "integer overflow: loop counter '{}' cannot step past {}",
                    var.name,
                    i64::MAX
                ),
            );
            self.ins().drop().drop();
            self.close();
        }
        self.ins().local_get(lo).i64_const(1).i64_add().local_set(lo);
        self.ins().i32_const(abi::TAG_INT).local_get(lo);
        self.store(home);
        self.close();
        self.close();
        // The body may not have run: what held before and at its end. The
        // variable holds `to + 1` or its old value.
        let mut after = meet(&before, &self.facts());
        after.ints.remove(&var.name);
        after.ranges.remove(&var.name);
        self.set_facts(after);
        emitted
    }

    /// Top-level loop back-edge: every so many iterations, write the
    /// variables back to their slots and let the host collect garbage
    /// (the host picks the interval from the allocation rate, and zeroes
    /// the module-wide countdown when a poll is due sooner).
    fn gc_poll(&mut self) {
        let countdown = super::GC_COUNTDOWN_GLOBAL;
        self.ins()
            .global_get(countdown)
            .i32_const(1)
            .i32_sub()
            .global_set(countdown)
            .global_get(countdown)
            .i32_const(0)
            .i32_le_s()
            .if_(BlockType::Empty);
        self.open(false);
        self.flush_main();
        self.helper(Helper::Collect);
        self.ins().global_set(countdown);
        self.close();
    }

    /// What is known about locals here.
    fn facts(&self) -> Facts {
        Facts {
            defined: self.defined.clone(),
            ints: self.ints.clone(),
            ranges: self.ranges.clone(),
        }
    }

    fn set_facts(&mut self, f: Facts) {
        self.defined = f.defined;
        self.ints = f.ints;
        self.ranges = f.ranges;
    }

    /// Forget int knowledge of everything `body` may write (and, on the
    /// top level, of every global when it calls a user function).
    fn forget_writes(&mut self, body: &[Stmt]) {
        for name in super::scope::written_names(body, &statement_target) {
            self.ints.remove(&name);
            self.ranges.remove(&name);
        }
        if self.kind == FuncKind::Main && self.m.calls_user_function(body) {
            self.ints.clear();
            self.ranges.clear();
        }
    }

    /// Evaluate a loop bound and leave it as an `i64`, converted like
    /// `int(float(x))`; returns the range it is known to lie in.
    fn loop_bound(&mut self, e: &Expr) -> Option<(i64, i64)> {
        match &e.kind {
            // An assigned variable reads the same as in an expression (the
            // own-text rule is for unassigned names only), and keeps what is
            // known about it: `startLoop(j, 1, i)` inside a loop over `i`.
            ExprKind::Name(id)
                if self.defined.contains(&id.name) && matches!(self.home(&id.name), super::func::Home::Local(_)) =>
            {
                self.expr(e);
            }
            _ => self.value_arg(e),
        }
        // The conversion stays even for a bound known to be an int (it
        // runs once, before the loop): without it, `loop_arith`'s bounds
        // reach Cranelift as plain constants, and its register allocator
        // then kept the sum on the stack inside the loop — 1.4× slower with
        // fuel metering (BENCHMARKS.md, "Request-bound loops").
        let known = self.last;
        let s = self.lhs;
        self.store_pair(s);
        self.ins()
            .local_get(s.tag())
            .i32_const(abi::TAG_INT)
            .i32_eq()
            .if_(BlockType::Result(ValType::I64));
        self.open(false);
        self.ins().local_get(s.payload()).else_();
        for code in [abi::BuiltinCode::Float, abi::BuiltinCode::Int] {
            let s = self.lhs;
            self.ins()
                .i32_const(code as i32)
                .i32_const(1)
                .local_get(s.tag())
                .local_get(s.payload());
            self.helper(Helper::Builtin);
            self.check_err();
            self.store_pair(s);
        }
        let s = self.lhs;
        self.ins().local_get(s.payload());
        self.close();
        known.range.filter(|_| known.int)
    }

    /// The normal exit of a function: give back the stack budget, report
    /// an endpoint handler's output, return the value on the stack.
    pub fn epilogue(&mut self) {
        match self.kind {
            FuncKind::Main => {
                self.ins().drop().drop().i32_const(0).return_();
            }
            FuncKind::User | FuncKind::Async => {
                let ret = self.lhs;
                self.store_pair(ret);
                self.give_back_stack();
                if let Some(out) = self.output_var.clone() {
                    let home = self.home(&out);
                    self.load(home);
                    self.helper(Helper::SetOutput);
                }
                self.load_pair(ret);
                self.ins().return_();
            }
        }
    }

    pub fn give_back_stack(&mut self) {
        let cost = self.frame_cost;
        if cost > 0 {
            self.ins()
                .global_get(super::STACK_LEFT_GLOBAL)
                .i64_const(cost)
                .i64_add()
                .global_set(super::STACK_LEFT_GLOBAL);
        }
    }

    fn go_async(&mut self, id: &Expr, body: &'a [Stmt]) {
        let written = written_names(body, &statement_target);
        let mut captured: Vec<String> = match self.kind {
            FuncKind::Main => Vec::new(),
            _ => {
                let mut v: Vec<String> = self.vars.keys().cloned().collect();
                v.sort();
                v
            }
        };
        for w in &written {
            if !captured.contains(w) {
                captured.push(w.clone());
            }
        }
        let idp = self.new_pair();
        self.value_arg(id);
        self.store_pair(idp);
        let index = self.m.reserve_function();
        let block = self.m.async_blocks;
        self.m.async_blocks += 1;
        self.m.pending_async.push(PendingAsync {
            index,
            block,
            file: self.file,
            body,
            span: id.span.to(body.last().map_or(id.span, |s| s.span)),
            captured: captured.clone(),
            written: written.into_iter().collect(),
        });
        // The captured values travel as a dict keyed by their position
        // ("0", "1", …); one not yet assigned is left out, so the block sees
        // it unassigned too. Everything else the block reads comes from its
        // copy of the top-level slots, which must be current in memory when
        // the runtime takes the snapshot.
        let dict = self.new_local(ValType::I64);
        self.helper(Helper::DictNew);
        self.ins().local_set(dict);
        for (i, name) in captured.iter().enumerate() {
            let home = self.home(name);
            let p = self.new_pair();
            self.load(home);
            self.store_pair(p);
            self.ins().local_get(p.tag()).if_(BlockType::Empty);
            self.ins().local_get(dict);
            self.push_str(&i.to_string());
            self.load_pair(p);
            self.helper(Helper::DictSet);
            self.ins().drop().end();
        }
        self.flush_main();
        self.allocates = true;
        self.load_pair(idp);
        self.ins()
            .i32_const(i32::try_from(block).unwrap_or(i32::MAX))
            .i32_const(abi::TAG_DICT)
            .local_get(dict);
        self.helper(Helper::AsyncStart);
    }
}

/// What is known about the locals at one point of the code.
#[derive(Debug, Clone)]
struct Facts {
    /// Certainly assigned.
    defined: HashSet<String>,
    /// Certainly holding an int.
    ints: HashSet<String>,
    /// Ints certainly within a range (loop counters; meaningful only for
    /// names in `ints`).
    ranges: HashMap<String, (i64, i64)>,
}

impl Facts {
    /// Whether what `self` says at the start of a loop body still holds at
    /// its end (`end`), so the next iteration may assume it too; the
    /// counter, stored anew at every start, is not judged.
    fn preserved_by(&self, end: &Facts, counter: &str) -> bool {
        self.defined.is_subset(&end.defined)
            && self.ints.iter().all(|n| n == counter || end.ints.contains(n))
            && self
                .ranges
                .iter()
                .all(|(n, &(lo, hi))| n == counter || end.ranges.get(n).is_some_and(|&(l, h)| lo <= l && h <= hi))
    }
}

/// Facts that hold on both paths.
fn meet(a: &Facts, b: &Facts) -> Facts {
    Facts {
        defined: a.defined.intersection(&b.defined).cloned().collect(),
        ints: a.ints.intersection(&b.ints).cloned().collect(),
        ranges: a
            .ranges
            .iter()
            .filter_map(|(n, &(lo, hi))| {
                let &(l, h) = b.ranges.get(n)?;
                Some((n.clone(), (lo.min(l), hi.max(h))))
            })
            .collect(),
    }
}

/// Counters of a versioned loop's fast copy lie in `0..=i32::MAX`: then
/// `i * i`, `i * k` and `i + k` for small constants `k` cannot overflow,
/// `i * x` checks only `x`, and `i % c`, `i // c` need no sign fix-up —
/// while the guard admits every loop counting up from zero or one to two
/// thousand million.
pub(crate) const FAST_COUNTER: (i64, i64) = (0, 0x7FFF_FFFF);

/// The fast copy of a loop whose bounds are not both known: the counter's
/// range there, and which bounds the guard tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FastRange {
    range: (i64, i64),
    check_lo: bool,
    check_hi: bool,
}

/// The fast copy for bounds known to lie in `from` / `to` (when known):
/// an unknown bound is tested against [`FAST_COUNTER`], a known one is
/// used as it is. `None` when the fast copy could never run its body.
fn fast_range(from: Option<(i64, i64)>, to: Option<(i64, i64)>) -> Option<FastRange> {
    let lo = from.map_or(FAST_COUNTER.0, |f| f.0);
    let hi = to.map_or(FAST_COUNTER.1, |t| t.1);
    (lo <= hi).then_some(FastRange {
        range: (lo, hi),
        check_lo: from.is_none(),
        check_hi: to.is_none(),
    })
}

/// One `startLoop` as both copies of a versioned loop emit it: the bounds
/// in `i64` locals, the counter variable's home.
#[derive(Clone, Copy)]
struct CountedLoop<'a> {
    var: &'a Ident,
    body: &'a [Stmt],
    lo: u32,
    hi: u32,
    home: super::func::Home,
}

fn if_cmp(c: Comparator) -> IfCmp {
    match c {
        Comparator::Eq => IfCmp::Eq,
        Comparator::NotEq => IfCmp::NotEq,
        Comparator::Lt => IfCmp::Lt,
        Comparator::Le => IfCmp::Le,
        Comparator::Gt => IfCmp::Gt,
        Comparator::Ge => IfCmp::Ge,
        Comparator::In => IfCmp::In,
        Comparator::NotIn => IfCmp::NotIn,
    }
}
