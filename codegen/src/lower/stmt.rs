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

    fn loop_(&mut self, var: &Ident, from: &Expr, to: &Expr, body: &'a [Stmt]) {
        let lo = self.new_local(ValType::I64);
        let hi = self.new_local(ValType::I64);
        let mut bounds = [None, None];
        for (i, (e, local)) in [(from, lo), (to, hi)].into_iter().enumerate() {
            self.value_arg(e);
            bounds[i] = self.last.constant();
            self.loop_bound();
            self.ins().local_set(local);
        }
        let counter_range = match bounds {
            [Some(a), Some(b)] if a <= b => Some((a, b)),
            _ => None,
        };
        let home = self.target_home(&var.name);
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
        loop {
            let checkpoint = self.checkpoint();
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
                break;
            }
            self.rollback(checkpoint);
            if self.speculation_budget == 0 {
                conservative = true;
            } else {
                self.speculation_budget -= 1;
                assumed = meet(&assumed, &end);
            }
        }
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
        // `to` is i64::MAX, like any other int arithmetic. Constant bounds
        // below the maximum need no check.
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
        let mut after = meet(&before, &self.facts());
        after.ints.remove(&var.name);
        after.ranges.remove(&var.name);
        self.set_facts(after);
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

    /// Stack `(tag, payload)` → `i64` bound, converted like `int(float(x))`.
    fn loop_bound(&mut self) {
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
