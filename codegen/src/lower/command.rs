//! Calls: user functions, commands (through the argument area), and names
//! that are neither (a catchable `NameError` at run time, spec §1).

use avap_hostfns::signature::{CommandSig, ParamKind, Returns};
use avap_hostfns::{ErrorKind, command};

use super::func::{FuncCtx, FuncKind, Home, Pair, Undefined, arg_slot};
use crate::ast::{Arg, Call, Expr, ExprKind, Ident};

/// How a call's result is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Site<'i> {
    /// A statement on its own line: the result is dropped.
    Statement,
    /// `name = call(…)` (or `return call(…)`): the caller stores the result.
    Assigned(Option<&'i Ident>),
    /// Inside an expression.
    Expression,
}

impl FuncCtx<'_, '_> {
    /// Lower a call to a named function or command; pushes its result.
    pub fn call_named(&mut self, call: &Call, site: Site<'_>) {
        let Some(name) = call.name().map(|n| n.name.as_str()) else {
            self.method_call(call);
            return;
        };
        if let Some(f) = self.m.user_fns.get(name).cloned() {
            let given = call.args.len();
            for (i, a) in call.args.iter().enumerate() {
                match &a.value {
                    Some(v) => self.expr(v),
                    None => self.push_none(),
                }
                if i >= f.params {
                    self.ins().drop().drop();
                }
            }
            for _ in given..f.params {
                self.push_none();
            }
            self.mark(call.span);
            self.flush_main();
            self.allocates = true;
            self.ins().call(f.index);
            self.reload_main();
            self.check_err();
            return;
        }
        if let Some(code) = super::expr::builtin_code(name) {
            self.builtin_call(call, code, name);
            return;
        }
        if let Some(sig) = command(name) {
            self.command(call, sig, site);
            return;
        }
        self.mark(call.span);
        self.raise(ErrorKind::NameError, &format!("Command not found: {name}"));
    }

    /// Where a command writes its target `name` (spec §6): inside a function
    /// the local when `name` is one, else the global; in an async block its
    /// own copy.
    pub fn target_home(&mut self, name: &str) -> Home {
        match self.kind {
            FuncKind::Main => self.global_home(name),
            FuncKind::User | FuncKind::Async => self.home(name),
        }
    }

    fn command(&mut self, call: &Call, sig: &'static CommandSig, site: Site<'_>) {
        let written = call.args.len();
        let target_supplied = site != Site::Statement && sig.returns == Returns::Target;
        let form_index = if target_supplied {
            form_index(sig, written + 1).or_else(|| form_index(sig, written))
        } else {
            form_index(sig, written)
        };
        let Some(fi) = form_index else {
            self.mark(call.span);
            self.raise(
                ErrorKind::TypeError,
                &format!("wrong number of arguments for {}", sig.name),
            );
            return;
        };
        let form = sig.forms[fi];
        let assigned = match site {
            Site::Assigned(id) => id,
            _ => None,
        };
        let mut slots: Vec<Pair> = Vec::with_capacity(form.len() + 2);
        let mut target: Option<String> = None;
        for (i, param) in form.iter().enumerate() {
            let arg = call.args.get(i);
            match param.kind {
                ParamKind::Value => {
                    match arg.and_then(|a| a.value.as_ref()) {
                        // Database SQL: template values become bound parameters.
                        Some(Expr {
                            kind: ExprKind::Template(parts),
                            ..
                        }) if is_sql_param(sig.name, param.name) => self.sql_template(parts),
                        Some(e) => self.value_arg(e),
                        None => self.push_none(),
                    }
                    slots.push(self.spill());
                }
                ParamKind::Literal => {
                    let text = arg.map(|a| self.literal_text(a)).unwrap_or_default();
                    self.push_str(&text);
                    slots.push(self.spill());
                }
                ParamKind::Name => {
                    match arg.and_then(variable_name) {
                        Some(n) => {
                            self.push_str(&n);
                            slots.push(self.spill());
                            let home = self.home(&n);
                            self.read(home, &n, Undefined::AsNone);
                        }
                        None => {
                            self.push_none();
                            slots.push(self.spill());
                            self.push_none();
                        }
                    }
                    slots.push(self.spill());
                }
                ParamKind::Target => {
                    let name = arg
                        .and_then(variable_name)
                        .or_else(|| assigned.map(|id| id.name.clone()));
                    match &name {
                        Some(n) => {
                            let home = self.target_home(n);
                            self.read(home, n, Undefined::AsNone);
                        }
                        None => self.push_none(),
                    }
                    slots.push(self.spill());
                    target = name;
                }
            }
        }
        for (i, p) in slots.iter().enumerate() {
            self.store_arg(i, *p);
        }
        let idx = self.m.commands[sig.name].0;
        self.mark(call.span);
        self.ins()
            .i32_const(arg_slot(0))
            .i32_const(i32::try_from(slots.len()).unwrap_or(0));
        self.allocates = true;
        self.ins().call(idx);
        self.check_err();
        // The assignment form's own target wins (spec §3); otherwise the
        // command writes the target it was given.
        if assigned.is_none()
            && let Some(t) = target
        {
            let s = self.rhs;
            self.store_pair(s);
            self.load_pair(s);
            let home = self.target_home(&t);
            self.store(home);
            self.note_write(&t, false);
            self.load_pair(s);
        }
    }

    /// Pop `(tag, payload)` into a fresh pair of locals.
    fn spill(&mut self) -> Pair {
        let p = self.new_pair();
        self.store_pair(p);
        p
    }

    /// A *literal* argument's text, as written (quotes optional).
    fn literal_text(&self, a: &Arg) -> String {
        match a.value.as_ref().map(|e| &e.kind) {
            Some(ExprKind::Str { value, .. }) => value.clone(),
            Some(ExprKind::Name(id)) => id.name.clone(),
            Some(_) => self.m.sources.get(self.file).slice(a.span).trim().to_owned(),
            None => String::new(),
        }
    }
}

/// Parameters that are SQL text: a backtick template there keeps its values
/// apart (bound parameters, spec §9).
fn is_sql_param(command: &str, param: &str) -> bool {
    matches!(
        (command, param),
        ("ormDirect", "sql") | ("ormAccessSelect" | "ormAccessUpdate", "whereSelector")
    )
}

fn form_index(sig: &CommandSig, arity: usize) -> Option<usize> {
    sig.forms.iter().position(|f| f.len() == arity)
}

/// The variable named by a *name* or *target* argument (bare or quoted).
pub(crate) fn variable_name(a: &Arg) -> Option<String> {
    match a.value.as_ref().map(|e| &e.kind) {
        Some(ExprKind::Name(id)) => Some(id.name.clone()),
        Some(ExprKind::Str { value, .. }) if !value.is_empty() => Some(value.clone()),
        _ => None,
    }
}

/// The target variable a statement-level command call writes, if any.
pub(crate) fn statement_target(call: &Call) -> Option<String> {
    let sig = command(call.name()?.name.as_str())?;
    let form = sig.forms.iter().find(|f| f.len() == call.args.len())?;
    form.iter()
        .zip(&call.args)
        .find(|(p, _)| p.kind == ParamKind::Target)
        .and_then(|(_, a)| variable_name(a))
}

/// `[A-Za-z_][A-Za-z0-9_]*`
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
