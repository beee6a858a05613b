//! Expressions. Every expression leaves `(tag, payload)` on the wasm stack,
//! or branches to the innermost error handler.
//!
//! Int and float arithmetic and comparisons run inline; anything else (heap
//! values, overflow, mixed types, errors) takes the slow path through the
//! `binary` helper, which implements the full semantics.

use avap_hostfns::ErrorKind;
use avap_hostfns::abi::{self, BinOp, BuiltinCode, Helper, METHOD_CALL_KEY, SQL_TEMPLATE_KEY, UnOp};
use wasm_encoder::{BlockType, ValType};

use super::func::{FuncCtx, Undefined};
use crate::ast::{BinaryOp, Call, CompareOp, Expr, ExprKind, LogicalOp, TemplatePart, UnaryOp};

/// What the compiler knows statically about a value on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Known {
    /// The tag is `TAG_INT`.
    pub int: bool,
    /// The int lies in `lo..=hi`.
    pub range: Option<(i64, i64)>,
}

impl Known {
    pub const ANY: Known = Known {
        int: false,
        range: None,
    };
    pub const INT: Known = Known { int: true, range: None };

    pub fn int_in(lo: i64, hi: i64) -> Known {
        Known {
            int: true,
            range: Some((lo, hi)),
        }
    }

    /// The constant this value certainly is.
    pub fn constant(self) -> Option<i64> {
        match self.range {
            Some((lo, hi)) if lo == hi => Some(lo),
            _ => None,
        }
    }
}

/// Range of `a op b` for ints in the given ranges, if no result in it can
/// overflow (`None` also when `op` has no range rule).
fn result_range(op: BinOp, a: (i64, i64), b: (i64, i64)) -> Option<(i64, i64)> {
    let corners = |f: fn(i64, i64) -> Option<i64>| -> Option<(i64, i64)> {
        let v = [f(a.0, b.0)?, f(a.0, b.1)?, f(a.1, b.0)?, f(a.1, b.1)?];
        Some((*v.iter().min()?, *v.iter().max()?))
    };
    match op {
        BinOp::Add => Some((a.0.checked_add(b.0)?, a.1.checked_add(b.1)?)),
        BinOp::Sub => Some((a.0.checked_sub(b.1)?, a.1.checked_sub(b.0)?)),
        BinOp::Mul => corners(i64::checked_mul),
        BinOp::Mod if b.0 == b.1 && b.0 > 0 => Some((0, b.0 - 1)),
        BinOp::FloorDiv if b.0 == b.1 && b.0 > 0 => Some((a.0.div_euclid(b.0), a.1.div_euclid(b.0))),
        _ => None,
    }
}

/// What is known about `a op b` for two ints.
fn int_result_known(op: BinOp, ka: Known, kb: Known) -> Known {
    if !matches!(op, BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Mod | BinOp::FloorDiv) {
        return Known::ANY;
    }
    let range = match (ka.range, kb.range) {
        (Some(a), Some(b)) => result_range(op, a, b),
        _ => None,
    };
    Known { int: true, range }
}

/// Whether the inline int code for `a op b` has no failure branch: no
/// overflow is possible, or the divisor is a positive constant.
fn never_fails(op: BinOp, ka: Known, kb: Known) -> bool {
    match op {
        BinOp::Add | BinOp::Sub | BinOp::Mul => match (ka.range, kb.range) {
            (Some(a), Some(b)) => result_range(op, a, b).is_some(),
            _ => false,
        },
        BinOp::Mod | BinOp::FloorDiv => kb.constant().is_some_and(|k| k > 0),
        _ => false,
    }
}

impl FuncCtx<'_, '_> {
    /// Evaluate `e`; [`FuncCtx::last`] says what is known about the result.
    pub fn expr(&mut self, e: &Expr) {
        let k = self.expr_known(e);
        self.last = k;
    }

    fn expr_known(&mut self, e: &Expr) -> Known {
        match &e.kind {
            ExprKind::Int(i) => {
                self.ins().i32_const(abi::TAG_INT).i64_const(*i);
                return Known::int_in(*i, *i);
            }
            ExprKind::Float(f) => {
                self.ins()
                    .i32_const(abi::TAG_FLOAT)
                    .i64_const(f.to_bits().cast_signed());
            }
            ExprKind::Str { value, .. } => self.push_str(value),
            ExprKind::Bool(b) => {
                self.ins().i32_const(abi::TAG_BOOL).i64_const(i64::from(*b));
            }
            ExprKind::None => self.push_none(),
            ExprKind::Template(parts) => self.template(parts, e),
            ExprKind::Name(id) => {
                let home = self.home(&id.name);
                self.mark(e.span);
                if self.defined.contains(&id.name) && matches!(home, super::func::Home::Local(_)) {
                    self.load(home);
                } else {
                    self.read(home, &id.name, Undefined::NameError);
                }
                if self.ints.contains(&id.name) && matches!(home, super::func::Home::Local(_)) {
                    return Known {
                        int: true,
                        range: self.ranges.get(&id.name).copied(),
                    };
                }
            }
            ExprKind::Global(id) => {
                let home = self.global_home(&id.name);
                self.mark(e.span);
                self.read(home, &id.name, Undefined::NameError);
            }
            ExprKind::List(items) => self.list(items, false),
            ExprKind::Dict(entries) if literal_keys(entries) => self.dict_from(entries, e.span),
            ExprKind::Dict(entries) => {
                let h = self.new_local(ValType::I64);
                self.helper(Helper::DictNew);
                self.ins().local_set(h);
                for (k, v) in entries {
                    self.ins().local_get(h);
                    self.expr(k);
                    self.expr(v);
                    self.mark(k.span);
                    self.helper(Helper::DictSet);
                    self.check_status();
                }
                self.ins().i32_const(abi::TAG_DICT).local_get(h);
            }
            ExprKind::Unary { op, operand } => {
                self.expr(operand);
                self.mark(e.span);
                match op {
                    UnaryOp::Not => {
                        self.truthy();
                        let r = self.tmp64;
                        self.ins().i32_eqz().i64_extend_i32_u().local_set(r);
                        self.ins().i32_const(abi::TAG_BOOL).local_get(r);
                    }
                    UnaryOp::Neg => self.unary_slow(UnOp::Neg),
                    UnaryOp::Pos => self.unary_slow(UnOp::Pos),
                }
            }
            ExprKind::Binary { op, lhs, rhs } => {
                self.expr(lhs);
                let a = self.last;
                self.expr(rhs);
                let b = self.last;
                self.mark(e.span);
                return self.binary_known(binop(*op), a, b);
            }
            ExprKind::Compare { first, rest } => self.compare_chain(first, rest, e),
            ExprKind::Logical { op, lhs, rhs } => {
                // Python: `a and b` is `b if a else a`; `a or b` is `a if a else b`.
                let keep = self.new_pair();
                self.expr(lhs);
                self.store_pair(keep);
                self.load_pair(keep);
                self.truthy();
                if *op == LogicalOp::Or {
                    self.ins().i32_eqz();
                }
                let ty = self.pair_type();
                self.ins().if_(ty);
                self.open(false);
                self.expr(rhs);
                self.ins().else_();
                self.load_pair(keep);
                self.close();
            }
            ExprKind::Conditional { then, cond, otherwise } => {
                self.expr(cond);
                self.truthy();
                let ty = self.pair_type();
                self.ins().if_(ty);
                self.open(false);
                self.expr(then);
                self.ins().else_();
                self.expr(otherwise);
                self.close();
            }
            ExprKind::Call(call) => self.call_expr(call),
            ExprKind::Index { object, index } => {
                self.expr(object);
                self.expr(index);
                self.mark(e.span);
                self.helper(Helper::Index);
                self.check_err();
            }
            ExprKind::Attribute { object, name } => {
                self.expr(object);
                let k = self.m.const_index(&name.name);
                self.ins().i32_const(k);
                self.mark(e.span);
                self.helper(Helper::Attr);
                self.check_err();
            }
        }
        Known::ANY
    }

    /// A dict display whose keys are all string literals, in one
    /// `rt.dict_from` call: the values are evaluated first, in order (they
    /// may call commands or build displays of their own, which use the
    /// argument area), then every key and value is stored in the argument
    /// area. Such a dict cannot fail on a key, so no status check follows.
    fn dict_from(&mut self, entries: &[(Expr, Expr)], span: crate::span::Span) {
        let values: Vec<_> = entries
            .iter()
            .map(|(_, v)| {
                self.expr(v);
                let p = self.new_pair();
                self.store_pair(p);
                p
            })
            .collect();
        for (i, ((k, _), v)) in entries.iter().zip(values).enumerate() {
            let ExprKind::Str { value, .. } = &k.kind else {
                unreachable!("literal_keys checked every key");
            };
            let key = i64::from(self.m.const_index(value));
            self.store_arg_const(2 * i, abi::TAG_STR, key);
            self.store_arg(2 * i + 1, v);
        }
        self.mark(span);
        let count = i32::try_from(entries.len()).expect("few entries");
        self.ins().i32_const(super::func::arg_slot(0)).i32_const(count);
        self.helper(Helper::DictFrom);
        let h = self.new_local(ValType::I64);
        self.ins().local_set(h).i32_const(abi::TAG_DICT).local_get(h);
    }

    /// A list display. In value arguments (`own_text`), bare undefined names
    /// inside it give their own text, as they would as the argument itself
    /// (`registerEndpoint(…, [auth, log], …)` names functions).
    pub fn list(&mut self, items: &[Expr], own_text: bool) {
        let h = self.new_local(ValType::I64);
        self.helper(Helper::ListNew);
        self.ins().local_set(h);
        for item in items {
            self.ins().local_get(h);
            if own_text {
                self.value_arg(item);
            } else {
                self.expr(item);
            }
            self.helper(Helper::ListPush);
        }
        self.ins().i32_const(abi::TAG_LIST).local_get(h);
    }

    /// An expression in a *value* argument position (spec §4): a bare
    /// undefined name gives its own text.
    pub fn value_arg(&mut self, e: &Expr) {
        match &e.kind {
            ExprKind::Name(id) => {
                let home = self.home(&id.name);
                self.read(home, &id.name, Undefined::OwnText);
                self.last = Known::ANY;
            }
            ExprKind::List(items) => {
                self.list(items, true);
                self.last = Known::ANY;
            }
            _ => self.expr(e),
        }
    }

    fn template(&mut self, parts: &[TemplatePart], e: &Expr) {
        if parts.is_empty() {
            self.push_str("");
            return;
        }
        for (i, part) in parts.iter().enumerate() {
            match part {
                TemplatePart::Text { text } => self.push_str(text),
                TemplatePart::Var { name } => {
                    let home = self.home(&name.name);
                    self.load(home);
                    self.helper(Helper::ToText);
                }
            }
            if i > 0 {
                self.mark(e.span);
                self.binary_helper(BinOp::Add);
            }
        }
    }

    fn compare_chain(&mut self, first: &Expr, rest: &[(CompareOp, Expr)], e: &Expr) {
        if let [(op, rhs)] = rest {
            self.expr(first);
            self.expr(rhs);
            self.mark(e.span);
            self.binary(cmpop(*op));
            return;
        }
        // a < b < c  ==  (a < b) and (b < c), each operand evaluated once.
        let left = self.new_pair();
        let right = self.new_pair();
        let ty = self.pair_type();
        self.expr(first);
        self.store_pair(left);
        self.ins().block(ty);
        self.open(false);
        let out = self.label_count() - 1;
        for (i, (op, rhs)) in rest.iter().enumerate() {
            self.expr(rhs);
            self.store_pair(right);
            self.load_pair(left);
            self.load_pair(right);
            self.mark(e.span);
            self.binary(cmpop(*op));
            if i + 1 == rest.len() {
                break;
            }
            // Stop at the first false comparison (its result is the answer).
            let s = self.scratch;
            self.ins().local_set(s.payload()).local_set(s.tag());
            self.ins().local_get(s.tag()).local_get(s.payload());
            self.ins().local_get(s.payload()).i64_eqz();
            let d = self.depth_of(out);
            self.ins().br_if(d).drop().drop();
            self.load_pair(right);
            self.store_pair(left);
        }
        self.close();
    }

    /// Stack `(tag, payload)` → `i32` truthiness. Inline for scalars.
    pub fn truthy(&mut self) {
        let s = self.lhs;
        self.ins().local_set(s.payload()).local_set(s.tag());
        self.ins()
            .local_get(s.tag())
            .i32_const(abi::TAG_INT)
            .i32_eq()
            .local_get(s.tag())
            .i32_const(abi::TAG_BOOL)
            .i32_eq()
            .i32_or()
            .if_(BlockType::Result(ValType::I32));
        self.open(false);
        self.ins().local_get(s.payload()).i64_const(0).i64_ne().else_();
        self.ins()
            .local_get(s.tag())
            .i32_const(abi::TAG_STR)
            .i32_ge_u()
            .if_(BlockType::Result(ValType::I32));
        self.open(false);
        self.ins().local_get(s.tag()).local_get(s.payload());
        self.helper(Helper::Truthy);
        self.ins().else_();
        self.ins()
            .local_get(s.payload())
            .f64_reinterpret_i64()
            .f64_const(0.0.into())
            .f64_ne()
            .local_get(s.tag())
            .i32_const(abi::TAG_FLOAT)
            .i32_eq()
            .i32_and();
        self.close();
        self.close();
    }

    fn unary_slow(&mut self, op: UnOp) {
        let s = self.lhs;
        self.ins().local_set(s.payload()).local_set(s.tag());
        self.ins()
            .i32_const(op as i32)
            .local_get(s.tag())
            .local_get(s.payload());
        self.helper(Helper::Unary);
        self.check_err();
    }

    /// Stack `(ta, pa, tb, pb)` → result of `op`, inline when both operands
    /// are numbers and nothing unusual happens.
    pub fn binary(&mut self, op: BinOp) {
        self.binary_known(op, Known::ANY, Known::ANY);
    }

    /// [`Self::binary`] with what is known about the operands: known ints
    /// skip the tag checks, a known positive divisor skips its sign check.
    /// Returns what is known about the result.
    pub fn binary_known(&mut self, op: BinOp, ka: Known, kb: Known) -> Known {
        let (a, b) = (self.lhs, self.rhs);
        self.store_pair(b);
        self.store_pair(a);
        if ka.int && kb.int && never_fails(op, ka, kb) {
            // No check can fire: just the instructions.
            let done = self.int_fast_path(op, ka, kb);
            debug_assert!(done, "never_fails implies an inline int path");
            return int_result_known(op, ka, kb);
        }
        if ka.int && kb.int && matches!(op, BinOp::Add | BinOp::Sub) {
            self.int_add_sub(op, kb);
            return int_result_known(op, ka, kb);
        }
        let ty = self.pair_type();
        self.ins().block(ty);
        self.open(false);
        let done = self.label_count() - 1;

        // Both ints.
        self.ins().block(BlockType::Empty);
        self.open(false);
        self.int_guard(ka, kb);
        if self.int_fast_path(op, ka, kb) {
            let d = self.depth_of(done);
            self.ins().br(d);
        }
        self.close();

        // At least one float, both numbers (impossible when both are ints).
        if !(ka.int && kb.int) {
            self.ins().block(BlockType::Empty);
            self.open(false);
            if self.float_fast_path(op) {
                let d = self.depth_of(done);
                self.ins().br(d);
            }
            self.close();
        }

        self.ins().i32_const(op as i32);
        self.load_pair(a);
        self.load_pair(b);
        if ka.int && kb.int {
            // Two ints give an int, a float or an error: nothing on the heap.
            self.call_helper(Helper::Binary);
        } else {
            self.helper(Helper::Binary);
        }
        self.check_err();
        self.close();
        if ka.int && kb.int {
            int_result_known(op, ka, kb)
        } else {
            Known::ANY
        }
    }

    /// `a + b` / `a - b` of two ints: the only way out of the fast path is
    /// overflow, so the cold path just raises (through the helper, for the
    /// exact message) and the hot path has no merge point.
    fn int_add_sub(&mut self, op: BinOp, kb: Known) {
        let (a, b, r) = (self.lhs, self.rhs, self.tmp64);
        self.add_sub_overflow_flag(op, kb);
        self.ins().if_(BlockType::Empty);
        self.open(false);
        self.ins().i32_const(op as i32);
        self.load_pair(a);
        self.load_pair(b);
        self.call_helper(Helper::Binary);
        self.check_err();
        // Unreachable in practice (overflow always fails); keeps the
        // stack balanced for validation.
        self.ins().drop().drop();
        self.close();
        self.ins().i32_const(abi::TAG_INT).local_get(r);
    }

    /// Inside a block: leave it (`br 0`) unless both operand pairs
    /// (`lhs`, `rhs`) hold ints; operands known to be ints are not tested.
    pub fn int_guard(&mut self, ka: Known, kb: Known) {
        let guards: Vec<u32> = [(ka, self.lhs), (kb, self.rhs)]
            .iter()
            .filter(|(k, _)| !k.int)
            .map(|(_, p)| p.tag())
            .collect();
        for (i, t) in guards.iter().enumerate() {
            self.ins().local_get(*t).i32_const(abi::TAG_INT).i32_eq();
            if i == 1 {
                self.ins().i32_and();
            }
        }
        if !guards.is_empty() {
            self.ins().i32_eqz().br_if(0);
        }
    }

    /// `r = a ± b` (wrapping) into `tmp64`, then push an i32 that is 1 when
    /// the true result overflowed i64.
    fn add_sub_overflow_flag(&mut self, op: BinOp, kb: Known) {
        let (pa, pb, r) = (self.lhs.payload(), self.rhs.payload(), self.tmp64);
        self.ins().local_get(pa).local_get(pb);
        if op == BinOp::Add {
            self.ins().i64_add();
        } else {
            self.ins().i64_sub();
        }
        self.ins().local_set(r);
        if kb.range.is_some_and(|(lo, _)| lo >= 0) {
            // b >= 0: a + b overflows iff r < a; a - b iff r > a.
            self.ins().local_get(r).local_get(pa);
            if op == BinOp::Add {
                self.ins().i64_lt_s();
            } else {
                self.ins().i64_gt_s();
            }
            return;
        }
        // add: (a ^ r) & (b ^ r) < 0; sub: (a ^ b) & (a ^ r) < 0.
        if op == BinOp::Add {
            self.ins()
                .local_get(pa)
                .local_get(r)
                .i64_xor()
                .local_get(pb)
                .local_get(r)
                .i64_xor();
        } else {
            self.ins()
                .local_get(pa)
                .local_get(pb)
                .i64_xor()
                .local_get(pa)
                .local_get(r)
                .i64_xor();
        }
        self.ins().i64_and().i64_const(0).i64_lt_s();
    }

    /// i32 truth value on the stack → a `Bool` pair.
    fn push_bool(&mut self) {
        let r = self.tmp64;
        self.ins().i64_extend_i32_u().local_set(r);
        self.ins().i32_const(abi::TAG_BOOL).local_get(r);
    }

    /// Slow path only (heap values such as template pieces).
    fn binary_helper(&mut self, op: BinOp) {
        let (a, b) = (self.lhs, self.rhs);
        self.store_pair(b);
        self.store_pair(a);
        self.ins().i32_const(op as i32);
        self.load_pair(a);
        self.load_pair(b);
        self.helper(Helper::Binary);
        self.check_err();
    }

    /// Inside a block whose label 0 means "take the slow path": push the
    /// int result and return true, or return false when `op` has no inline
    /// int form (the block then falls through to the slow path).
    fn int_fast_path(&mut self, op: BinOp, ka: Known, kb: Known) -> bool {
        let (a, b, r) = (self.lhs, self.rhs, self.tmp64);
        let (pa, pb) = (a.payload(), b.payload());
        let positive_divisor = kb.constant().is_some_and(|k| k > 0);
        let cannot_overflow = match (ka.range, kb.range) {
            (Some(ra), Some(rb)) => result_range(op, ra, rb).is_some(),
            _ => false,
        };
        let within_i32 = |k: Known| {
            k.range
                .is_some_and(|(lo, hi)| lo >= i64::from(i32::MIN) && hi <= i64::from(i32::MAX))
        };
        let non_negative = ka.range.is_some_and(|(lo, _)| lo >= 0);
        match op {
            BinOp::Add | BinOp::Sub | BinOp::Mul if cannot_overflow => {
                self.ins().i32_const(abi::TAG_INT).local_get(pa).local_get(pb);
                match op {
                    BinOp::Add => self.ins().i64_add(),
                    BinOp::Sub => self.ins().i64_sub(),
                    _ => self.ins().i64_mul(),
                };
                true
            }
            BinOp::Mod | BinOp::FloorDiv if positive_divisor && non_negative => {
                self.ins().i32_const(abi::TAG_INT).local_get(pa).local_get(pb);
                if op == BinOp::Mod {
                    self.ins().i64_rem_s();
                } else {
                    self.ins().i64_div_s();
                }
                true
            }
            BinOp::Add | BinOp::Sub => {
                self.add_sub_overflow_flag(op, kb);
                self.ins().br_if(0).i32_const(abi::TAG_INT).local_get(r);
                true
            }
            BinOp::Mul => {
                // Both within i32 range: the product cannot overflow i64.
                for (p, k) in [(pa, ka), (pb, kb)] {
                    if within_i32(k) {
                        continue;
                    }
                    self.ins()
                        .local_get(p)
                        .i64_const(0x8000_0000)
                        .i64_add()
                        .i64_const(0xFFFF_FFFF)
                        .i64_gt_u()
                        .br_if(0);
                }
                self.ins().i32_const(abi::TAG_INT).local_get(pa).local_get(pb).i64_mul();
                true
            }
            BinOp::Mod | BinOp::FloorDiv if positive_divisor => {
                // Divisor a positive constant: no zero or overflow case.
                // Python rounds toward minus infinity: when the remainder
                // is negative, add the divisor to it / subtract 1 from the
                // quotient (`r >> 63` is -1 exactly then).
                self.ins().local_get(pa).local_get(pb).i64_rem_s().local_set(r);
                if op == BinOp::Mod {
                    self.ins()
                        .i32_const(abi::TAG_INT)
                        .local_get(r)
                        .local_get(r)
                        .i64_const(63)
                        .i64_shr_s()
                        .local_get(pb)
                        .i64_and()
                        .i64_add();
                } else {
                    self.ins()
                        .i32_const(abi::TAG_INT)
                        .local_get(pa)
                        .local_get(pb)
                        .i64_div_s()
                        .local_get(r)
                        .i64_const(63)
                        .i64_shr_s()
                        .i64_add();
                }
                true
            }
            BinOp::Mod | BinOp::FloorDiv => {
                // Non-negative dividend, positive divisor: wasm and Python agree.
                self.ins().local_get(pa).i64_const(0).i64_lt_s().br_if(0);
                self.ins().local_get(pb).i64_const(0).i64_le_s().br_if(0);
                self.ins().i32_const(abi::TAG_INT).local_get(pa).local_get(pb);
                if op == BinOp::Mod {
                    self.ins().i64_rem_s();
                } else {
                    self.ins().i64_div_s();
                }
                true
            }
            BinOp::Div => {
                self.ins().local_get(pb).i64_eqz().br_if(0);
                self.ins()
                    .local_get(pa)
                    .f64_convert_i64_s()
                    .local_get(pb)
                    .f64_convert_i64_s()
                    .f64_div()
                    .i64_reinterpret_f64()
                    .local_set(r);
                self.ins().i32_const(abi::TAG_FLOAT).local_get(r);
                true
            }
            BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                self.ins().local_get(pa).local_get(pb);
                match op {
                    BinOp::Eq => self.ins().i64_eq(),
                    BinOp::NotEq => self.ins().i64_ne(),
                    BinOp::Lt => self.ins().i64_lt_s(),
                    BinOp::Le => self.ins().i64_le_s(),
                    BinOp::Gt => self.ins().i64_gt_s(),
                    _ => self.ins().i64_ge_s(),
                };
                self.push_bool();
                true
            }
            _ => false,
        }
    }

    /// Like [`Self::int_fast_path`] for float/int mixes with at least one
    /// float.
    fn float_fast_path(&mut self, op: BinOp) -> bool {
        let is_arith = matches!(op, BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div);
        let is_cmp = matches!(
            op,
            BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        );
        if !is_arith && !is_cmp {
            return false;
        }
        let (a, b, r) = (self.lhs, self.rhs, self.tmp64);
        // Guard: (a float or b float) and both numeric (int or float).
        self.ins()
            .local_get(a.tag())
            .i32_const(abi::TAG_FLOAT)
            .i32_eq()
            .local_get(b.tag())
            .i32_const(abi::TAG_FLOAT)
            .i32_eq()
            .i32_or();
        for p in [a, b] {
            self.ins()
                .local_get(p.tag())
                .i32_const(abi::TAG_INT)
                .i32_eq()
                .local_get(p.tag())
                .i32_const(abi::TAG_FLOAT)
                .i32_eq()
                .i32_or()
                .i32_and();
        }
        self.ins().i32_eqz().br_if(0);
        if op == BinOp::Div {
            self.as_f64(b);
            self.ins().f64_const(0.0.into()).f64_eq().br_if(0);
        }
        self.as_f64(a);
        self.as_f64(b);
        if is_arith {
            match op {
                BinOp::Add => self.ins().f64_add(),
                BinOp::Sub => self.ins().f64_sub(),
                BinOp::Mul => self.ins().f64_mul(),
                _ => self.ins().f64_div(),
            };
            self.ins().i64_reinterpret_f64().local_set(r);
            self.ins().i32_const(abi::TAG_FLOAT).local_get(r);
        } else {
            match op {
                BinOp::Eq => self.ins().f64_eq(),
                BinOp::NotEq => self.ins().f64_ne(),
                BinOp::Lt => self.ins().f64_lt(),
                BinOp::Le => self.ins().f64_le(),
                BinOp::Gt => self.ins().f64_gt(),
                _ => self.ins().f64_ge(),
            };
            self.push_bool();
        }
        true
    }

    /// Push pair `p` (an int or a float) as an `f64`.
    fn as_f64(&mut self, p: super::func::Pair) {
        self.ins()
            .local_get(p.payload())
            .f64_convert_i64_s()
            .local_get(p.payload())
            .f64_reinterpret_i64()
            .local_get(p.tag())
            .i32_const(abi::TAG_INT)
            .i32_eq()
            .select();
    }

    /// A call in expression position.
    fn call_expr(&mut self, call: &Call) {
        if call.name().is_none() {
            self.method_call(call);
            return;
        }
        self.call_named(call, super::command::Site::Expression);
    }

    /// `object.name(args…)` — connector methods (`conn.query(sql)`, spec
    /// §9). Lowered to a call of the `ormDirect` import (capability `db`)
    /// whose `sql` slot holds
    /// `{"$method_call": [object, "name", args…]}`; the host checks that
    /// `object` is a connector and that it has the method, and raises a
    /// catchable `TypeError` otherwise. Pushes the result.
    pub fn method_call(&mut self, call: &Call) {
        let (ExprKind::Attribute { object, name }, Some(&(import, _, _))) =
            (&call.callee.kind, self.m.commands.get("ormDirect"))
        else {
            self.mark(call.span);
            self.raise(
                ErrorKind::TypeError,
                "only functions, commands and connector methods (`conn.query(sql)`) can be called",
            );
            return;
        };
        let d = self.new_local(ValType::I64);
        self.helper(Helper::DictNew);
        self.ins().local_set(d).local_get(d);
        self.push_str(METHOD_CALL_KEY);
        let h = self.new_local(ValType::I64);
        self.helper(Helper::ListNew);
        self.ins().local_set(h).local_get(h);
        self.expr(object);
        self.helper(Helper::ListPush);
        self.ins().local_get(h);
        self.push_str(&name.name);
        self.helper(Helper::ListPush);
        for a in &call.args {
            self.ins().local_get(h);
            match &a.value {
                Some(Expr {
                    kind: ExprKind::Template(parts),
                    ..
                }) => self.sql_template(parts),
                Some(v) => self.expr(v),
                None => self.push_none(),
            }
            self.helper(Helper::ListPush);
        }
        self.ins().i32_const(abi::TAG_LIST).local_get(h);
        self.mark(call.span);
        self.helper(Helper::DictSet);
        self.check_status();
        // Slot 0: the call; slot 1: ormDirect's (unused) target.
        let base = super::func::arg_slot(0);
        self.ins()
            .i32_const(base)
            .i32_const(abi::TAG_DICT)
            .i32_store(super::func::mem(0, 2));
        self.ins()
            .i32_const(base)
            .local_get(d)
            .i64_store(super::func::mem(8, 3));
        self.store_arg_const(1, abi::TAG_NONE, 0);
        self.mark(call.span);
        self.ins().i32_const(base).i32_const(2);
        self.allocates = true;
        self.ins().call(import);
        self.check_err();
        self.last = Known::ANY;
    }

    /// A backtick template given to a database command's SQL parameter:
    /// `{"$sql_template": [text, value, text, …, text]}` so that the host
    /// binds the values as parameters instead of splicing their text.
    pub fn sql_template(&mut self, parts: &[TemplatePart]) {
        let d = self.new_local(ValType::I64);
        self.helper(Helper::DictNew);
        self.ins().local_set(d).local_get(d);
        self.push_str(SQL_TEMPLATE_KEY);
        let h = self.new_local(ValType::I64);
        self.helper(Helper::ListNew);
        self.ins().local_set(h);
        // Texts and variables alternate, starting and ending with a text.
        let mut texts: Vec<String> = vec![String::new()];
        let mut vars: Vec<&crate::ast::Ident> = Vec::new();
        for part in parts {
            match part {
                TemplatePart::Text { text } => texts.last_mut().expect("never empty").push_str(text),
                TemplatePart::Var { name } => {
                    vars.push(name);
                    texts.push(String::new());
                }
            }
        }
        for (i, text) in texts.iter().enumerate() {
            self.ins().local_get(h);
            self.push_str(text);
            self.helper(Helper::ListPush);
            if let Some(name) = vars.get(i) {
                self.ins().local_get(h);
                let home = self.home(&name.name);
                self.read(home, &name.name, Undefined::AsNone);
                self.helper(Helper::ListPush);
            }
        }
        self.ins().i32_const(abi::TAG_LIST).local_get(h);
        self.helper(Helper::DictSet);
        self.check_status();
        self.ins().i32_const(abi::TAG_DICT).local_get(d);
        self.last = Known::ANY;
    }
    /// `str`/`int`/`float`/`len`: one argument, evaluated as an expression.
    pub fn builtin_call(&mut self, call: &Call, code: BuiltinCode, name: &str) {
        let n = call.args.len();
        for a in &call.args {
            match &a.value {
                Some(v) => self.expr(v),
                None => self.push_none(),
            }
        }
        if n != 1 {
            for _ in 0..n {
                self.ins().drop().drop();
            }
            self.mark(call.span);
            self.raise(
                ErrorKind::TypeError,
                &format!("{name}() takes exactly one argument ({n} given)"),
            );
            return;
        }
        let s = self.lhs;
        self.store_pair(s);
        self.ins().i32_const(code as i32).i32_const(1);
        self.load_pair(s);
        self.mark(call.span);
        self.helper(Helper::Builtin);
        self.check_err();
    }
}

pub(crate) fn builtin_code(name: &str) -> Option<BuiltinCode> {
    Some(match name {
        "str" => BuiltinCode::Str,
        "int" => BuiltinCode::Int,
        "float" => BuiltinCode::Float,
        "len" => BuiltinCode::Len,
        _ => return None,
    })
}

/// A non-empty dict display that one `rt.dict_from` call can build: every
/// key a string literal, and no more entries than the argument area holds.
fn literal_keys(entries: &[(Expr, Expr)]) -> bool {
    !entries.is_empty()
        && entries.len() <= abi::MAX_DICT_FROM as usize
        && entries.iter().all(|(k, _)| matches!(k.kind, ExprKind::Str { .. }))
}

fn binop(op: BinaryOp) -> BinOp {
    match op {
        BinaryOp::Add => BinOp::Add,
        BinaryOp::Sub => BinOp::Sub,
        BinaryOp::Mul => BinOp::Mul,
        BinaryOp::Div => BinOp::Div,
        BinaryOp::FloorDiv => BinOp::FloorDiv,
        BinaryOp::Mod => BinOp::Mod,
        BinaryOp::Pow => BinOp::Pow,
    }
}

fn cmpop(op: CompareOp) -> BinOp {
    match op {
        CompareOp::Eq => BinOp::Eq,
        CompareOp::NotEq => BinOp::NotEq,
        CompareOp::Lt => BinOp::Lt,
        CompareOp::Le => BinOp::Le,
        CompareOp::Gt => BinOp::Gt,
        CompareOp::Ge => BinOp::Ge,
        CompareOp::In => BinOp::In,
        CompareOp::NotIn => BinOp::NotIn,
        CompareOp::Is => BinOp::Is,
        CompareOp::IsNot => BinOp::IsNot,
    }
}
