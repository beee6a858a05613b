//! The checker: includes, functions, command signatures.
//!
//! Block structure is already checked by the parser; this pass resolves
//! `include`s (through a [`SourceLoader`], so codegen does no I/O), collects
//! function definitions across files, and checks every call against the
//! command registry in `avap-hostfns`.

use std::collections::HashMap;

use avap_hostfns::signature::{self, CommandSig, ParamKind, Returns};

use crate::ast::{Arg, Call, Condition, Expr, ExprKind, Function, Program, Stmt, StmtKind};
use crate::diag::{Code, Diagnostic, FileId, Sources};
use crate::parser::{is_identifier, parse};
use crate::span::{SourceFile, Span};

/// Statement words that look like calls; a function may not take their names.
pub const STATEMENT_WORDS: &[&str] = &[
    "if",
    "else",
    "end",
    "startLoop",
    "endLoop",
    "try",
    "exception",
    "function",
    "return",
    "go_async",
    "include",
    "import",
];

/// HTTP methods `registerEndpoint` accepts.
pub const HTTP_METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// A file a [`SourceLoader`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSource {
    /// Identity of the file (a canonical path, a store key): two includes of
    /// the same file must give the same identity, whatever the spelling.
    pub identity: String,
    /// How diagnostics name the file.
    pub name: String,
    pub text: String,
}

/// Why a [`SourceLoader`] gives no file for an include: the diagnostic's
/// note, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncludeError {
    /// What is wrong (never the refused file's content).
    pub message: String,
    /// What to do; `None`: the general rule of where includes are found.
    pub help: Option<String>,
}

impl IncludeError {
    /// A refusal that says what to do about it.
    pub fn with_help(message: impl Into<String>, help: impl Into<String>) -> IncludeError {
        IncludeError {
            message: message.into(),
            help: Some(help.into()),
        }
    }
}

impl From<String> for IncludeError {
    fn from(message: String) -> IncludeError {
        IncludeError { message, help: None }
    }
}

/// Where `include("name")` finds its files. The CLI reads the including
/// file's directory (under the directories it allows); the server reads
/// its script store.
pub trait SourceLoader {
    /// Resolve `path` as written in the file displayed as `from`.
    fn load(&self, from: &str, path: &str) -> Result<LoadedSource, IncludeError>;

    /// Identity of the main file (see [`LoadedSource::identity`]).
    fn identity(&self, name: &str) -> String {
        name.to_string()
    }
}

/// A loader for contexts without includes (inline scripts).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoIncludes;

impl SourceLoader for NoIncludes {
    fn load(&self, _from: &str, path: &str) -> Result<LoadedSource, IncludeError> {
        Err(format!("`{path}` cannot be included here: this script has no file or script store to include from").into())
    }
}

/// Includes nest at most this deep.
pub const MAX_INCLUDE_DEPTH: usize = 32;

/// Options of a check run.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Treat warnings as errors (`--deny-warnings`).
    pub deny_warnings: bool,
}

/// A user function known to the checker.
#[derive(Debug, Clone)]
pub struct FunctionInfo {
    pub file: FileId,
    pub arity: usize,
    pub header: Span,
}

/// The result of checking a script and everything it includes.
#[derive(Debug, Clone)]
pub struct CheckedProgram {
    pub sources: Sources,
    /// One program per file, indexed by [`FileId`]; file 0 is the main script.
    pub programs: Vec<Program>,
    pub functions: HashMap<String, FunctionInfo>,
    pub diagnostics: Vec<Diagnostic>,
}

impl CheckedProgram {
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn warning_count(&self) -> usize {
        self.diagnostics.len() - self.error_count()
    }

    /// Whether compilation must stop, given the options.
    pub fn fails(&self, options: CheckOptions) -> bool {
        self.error_count() > 0 || (options.deny_warnings && !self.diagnostics.is_empty())
    }
}

/// Parse and check `file` and everything it includes, and hold it to the
/// compile budget: every error the compiler would refuse the program for.
pub fn check_file(file: SourceFile, loader: &dyn SourceLoader) -> CheckedProgram {
    let mut checked = check_source(file, loader);
    // The compile budget: a well-formed program is lowered (cheap: a few
    // milliseconds per 100 KB of source) to find functions too large for
    // Cranelift to compile within its budget, so `check` reports them like
    // any other error, with their span.
    if checked.error_count() == 0 {
        let oversize = crate::lower::lower(&checked).oversize;
        checked.diagnostics.extend(oversize);
    }
    checked
}

/// The front end alone: parse `file` and everything it includes, check
/// blocks, names and command signatures. No compile budget (see
/// [`check_file`]); for tools that never compile, and for measuring the
/// front end.
pub fn check_source(file: SourceFile, loader: &dyn SourceLoader) -> CheckedProgram {
    let mut cx = Checker {
        sources: Sources::new(),
        programs: Vec::new(),
        functions: HashMap::new(),
        diags: Vec::new(),
        loader,
        current: 0,
        identities: Vec::new(),
        block_depth: 0,
    };
    let identity = loader.identity(file.name());
    cx.load_file(file, identity, &mut Vec::new());
    cx.collect_functions();
    for id in 0..cx.programs.len() {
        cx.current = id;
        let body = std::mem::take(&mut cx.programs[id].body);
        cx.stmts_in_block(&body, id != 0);
        cx.programs[id].body = body;
    }
    let mut diagnostics = cx.diags;
    diagnostics.sort_by_key(|d| (d.file, d.span.start, d.span.end));
    CheckedProgram {
        sources: cx.sources,
        programs: cx.programs,
        functions: cx.functions,
        diagnostics,
    }
}

struct Checker<'l> {
    sources: Sources,
    programs: Vec<Program>,
    functions: HashMap<String, FunctionInfo>,
    diags: Vec<Diagnostic>,
    loader: &'l dyn SourceLoader,
    current: FileId,
    /// Identity of each loaded file, indexed by `FileId`.
    identities: Vec<String>,
    /// How many blocks enclose the statements being checked (0 = top level).
    block_depth: usize,
}

impl Checker<'_> {
    fn report(&mut self, d: Diagnostic) {
        self.diags.push(d.in_file(self.current));
    }

    /// Parse a file and, depth first, the files it includes. `chain` holds
    /// the include path from the main script (identity, display name), for
    /// cycle detection.
    fn load_file(&mut self, file: SourceFile, identity: String, chain: &mut Vec<(String, String)>) -> FileId {
        let name = file.name().to_string();
        let (program, diags) = parse(&file);
        let id = self.sources.add(file);
        self.identities.push(identity.clone());
        self.diags.extend(diags.into_iter().map(|d| d.in_file(id)));
        let includes: Vec<(String, Span)> = program
            .body
            .iter()
            .filter_map(|s| match &s.kind {
                StmtKind::Include { path, path_span, .. } => Some((path.clone(), *path_span)),
                _ => None,
            })
            .collect();
        if id != 0 {
            for s in &program.body {
                if !matches!(s.kind, StmtKind::Function(_) | StmtKind::Include { .. }) {
                    self.diags.push(
                        Diagnostic::new(
                            Code::IncludeTopLevel,
                            s.span,
                            "top-level statement in an included file is ignored",
                        )
                        .with_note("`include` brings in only the function definitions of a file")
                        .in_file(id),
                    );
                }
            }
        }
        self.programs.push(program);
        chain.push((identity, name.clone()));
        for (path, span) in includes {
            let loaded = if chain.len() > MAX_INCLUDE_DEPTH {
                Err(format!("includes nest deeper than {MAX_INCLUDE_DEPTH} files").into())
            } else {
                self.loader.load(&name, &path)
            };
            match loaded {
                Err(IncludeError { message, help }) => self.diags.push(
                    Diagnostic::new(Code::IncludeNotFound, span, format!("cannot include `{path}`"))
                        .with_note(message)
                        .with_help(help.unwrap_or_else(|| {
                            "include paths are relative to the including file (or names in the script store)".into()
                        }))
                        .in_file(id),
                ),
                Ok(found) => {
                    if let Some(pos) = chain.iter().position(|(c, _)| *c == found.identity) {
                        let cycle: Vec<&str> = chain[pos..]
                            .iter()
                            .map(|(_, n)| n.as_str())
                            .chain([found.name.as_str()])
                            .collect();
                        self.diags.push(
                            Diagnostic::new(
                                Code::IncludeCycle,
                                span,
                                format!("include cycle: {}", cycle.join(" → ")),
                            )
                            .with_help("move the shared functions into a file that includes nothing")
                            .in_file(id),
                        );
                    } else if !self.identities.contains(&found.identity) {
                        self.load_file(SourceFile::new(found.name, found.text), found.identity, chain);
                    }
                }
            }
        }
        chain.pop();
        id
    }

    fn collect_functions(&mut self) {
        let mut found: Vec<(FileId, Function)> = Vec::new();
        for (id, program) in self.programs.iter().enumerate() {
            for s in &program.body {
                if let StmtKind::Function(f) = &s.kind {
                    found.push((id, f.clone()));
                }
            }
            // Functions misplaced inside blocks were reported by the parser;
            // they are not callable.
        }
        for (file, f) in found {
            if f.name.name.is_empty() {
                continue; // a header that did not parse (already reported)
            }
            self.current = file;
            let name = &f.name.name;
            let shadowed = if signature::command(name).is_some() {
                Some("the command")
            } else if signature::builtin(name).is_some() {
                Some("the built-in function")
            } else if STATEMENT_WORDS.contains(&name.as_str()) {
                Some("the statement")
            } else {
                None
            };
            if let Some(what) = shadowed {
                self.report(
                    Diagnostic::new(
                        Code::ShadowsCommand,
                        f.name.span,
                        format!("function `{name}` has the name of {what} `{name}`"),
                    )
                    .with_help("rename the function"),
                );
                continue;
            }
            let mut seen: HashMap<&str, Span> = HashMap::new();
            for p in &f.params {
                if let Some(first) = seen.insert(&p.name, p.span) {
                    self.report(
                        Diagnostic::new(
                            Code::DuplicateParameter,
                            p.span,
                            format!("parameter `{}` appears twice", p.name),
                        )
                        .with_secondary(first, "first here"),
                    );
                }
            }
            if let Some(prev) = self.functions.get(name) {
                // Built in its file first: `report` would move a same-file
                // label along with the file id.
                let d = Diagnostic::new(
                    Code::DuplicateFunction,
                    f.name.span,
                    format!("function `{name}` is defined twice"),
                )
                .with_help("rename one of them")
                .in_file(file)
                .with_secondary_in(prev.file, prev.header, "first defined here");
                self.diags.push(d);
                continue;
            }
            self.functions.insert(
                name.clone(),
                FunctionInfo {
                    file,
                    arity: f.params.len(),
                    header: f.header,
                },
            );
        }
    }

    fn stmts(&mut self, stmts: &[Stmt], included: bool) {
        self.block_depth += 1;
        self.stmts_in_block(stmts, included);
        self.block_depth -= 1;
    }

    fn stmts_in_block(&mut self, stmts: &[Stmt], included: bool) {
        let mut ended_by: Option<Span> = None;
        for s in stmts {
            if let Some(end) = ended_by.take() {
                self.report(
                    Diagnostic::new(Code::UnreachableCode, s.span, "this statement can never run")
                        .with_secondary(end, "the block always leaves here"),
                );
            }
            if included && !matches!(s.kind, StmtKind::Function(_) | StmtKind::Include { .. }) {
                continue;
            }
            self.stmt(s);
            ended_by = match &s.kind {
                StmtKind::Return { .. } => Some(s.span),
                StmtKind::Call { call: c } if c.name().is_some_and(|n| n.name == "raise") => Some(s.span),
                _ => None,
            };
        }
    }

    fn stmt(&mut self, s: &Stmt) {
        match &s.kind {
            StmtKind::Assign { target, value, .. } => {
                for i in &target.indices {
                    self.expr(i);
                }
                match &value.kind {
                    ExprKind::Call(call) => self.call(call, CallSite::Assigned),
                    _ => self.expr(value),
                }
            }
            StmtKind::Call { call } => self.call(call, CallSite::Statement),
            StmtKind::If {
                condition,
                then_body,
                else_body,
            } => {
                match condition {
                    Condition::Compare { lhs, rhs, .. } => {
                        self.arg(lhs);
                        self.arg(rhs);
                    }
                    Condition::Expression { expr, .. } => self.expr(expr),
                }
                self.stmts(then_body, false);
                if let Some(e) = else_body {
                    self.stmts(e, false);
                }
            }
            StmtKind::Loop { from, to, body, .. } => {
                self.expr(from);
                self.expr(to);
                self.stmts(body, false);
            }
            StmtKind::Try { body, handler, .. } => {
                self.stmts(body, false);
                self.stmts(handler, false);
            }
            StmtKind::Function(f) => self.stmts(&f.body, false),
            StmtKind::Return { value } => {
                if let Some(v) = value {
                    match &v.kind {
                        ExprKind::Call(call) => self.call(call, CallSite::Assigned),
                        _ => self.expr(v),
                    }
                }
            }
            StmtKind::Async { id, body } => {
                self.expr(id);
                self.stmts(body, false);
            }
            StmtKind::Include { path_span, .. } => {
                if self.block_depth > 0 {
                    self.report(
                        Diagnostic::new(Code::IncludeNotTopLevel, *path_span, "`include` inside a block")
                            .with_note("includes are resolved at compile time, before anything runs")
                            .with_help("move the `include` to the top level of the file"),
                    );
                }
            }
        }
    }

    fn arg(&mut self, a: &Arg) {
        if let Some(e) = &a.value {
            self.expr(e);
        }
    }

    fn expr(&mut self, e: &Expr) {
        match &e.kind {
            ExprKind::Int(_)
            | ExprKind::Float(_)
            | ExprKind::Str { .. }
            | ExprKind::Bool(_)
            | ExprKind::None
            | ExprKind::Template(_)
            | ExprKind::Name(_)
            | ExprKind::Global(_) => {}
            ExprKind::List(items) => items.iter().for_each(|i| self.expr(i)),
            ExprKind::Dict(entries) => {
                for (k, v) in entries {
                    self.expr(k);
                    self.expr(v);
                }
            }
            ExprKind::Unary { operand, .. } => self.expr(operand),
            ExprKind::Binary { lhs, rhs, .. } | ExprKind::Logical { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            ExprKind::Compare { first, rest } => {
                self.expr(first);
                for (_, r) in rest {
                    self.expr(r);
                }
            }
            ExprKind::Conditional { then, cond, otherwise } => {
                self.expr(then);
                self.expr(cond);
                self.expr(otherwise);
            }
            ExprKind::Call(call) => self.call(call, CallSite::Expression),
            ExprKind::Index { object, index } => {
                self.expr(object);
                self.expr(index);
            }
            ExprKind::Attribute { object, .. } => self.expr(object),
        }
    }

    /// Arguments of anything but a command must all be present.
    fn plain_args(&mut self, call: &Call, what: &str) {
        for a in &call.args {
            match &a.value {
                Some(e) => self.expr(e),
                None => self.report(
                    Diagnostic::new(
                        Code::EmptyArgument,
                        a.span,
                        format!("empty argument in a call to {what}"),
                    )
                    .with_help("empty arguments (`f(a, , b)`) are only allowed in command calls; pass `None`"),
                ),
            }
        }
    }

    fn call(&mut self, call: &Call, site: CallSite) {
        let Some(name) = call.name() else {
            // Method calls (`conn.query(sql)`) and calls of computed values.
            self.expr(&call.callee);
            self.plain_args(call, "a method");
            return;
        };
        let n = &name.name;
        if let Some(info) = self.functions.get(n) {
            let arity = info.arity;
            if call.args.len() != arity {
                let d = Diagnostic::new(
                    Code::FunctionArity,
                    call.span,
                    format!(
                        "function `{n}` takes {arity} argument{}, found {}",
                        plural(arity),
                        call.args.len()
                    ),
                )
                .in_file(self.current)
                .with_secondary_in(info.file, info.header, "defined here");
                self.diags.push(d);
            }
            self.plain_args(call, &format!("function `{n}`"));
        } else if let Some(sig) = signature::command(n) {
            self.command(call, sig, site);
        } else if let Some(b) = signature::builtin(n) {
            let found = call.args.len();
            if found < b.min_args || found > b.max_args {
                let expected = if b.min_args == b.max_args {
                    format!("{}", b.min_args)
                } else {
                    format!("{} or {}", b.min_args, b.max_args)
                };
                self.report(Diagnostic::new(
                    Code::FunctionArity,
                    call.span,
                    format!("`{n}()` takes {expected} argument{}, found {found}", plural(b.max_args)),
                ));
            }
            self.plain_args(call, &format!("`{n}()`"));
        } else {
            let mut d = Diagnostic::new(Code::UnknownCommand, name.span, format!("unknown command `{n}`"))
                .with_label("not a command or a function")
                .with_note(format!("if this line runs it raises NameError: Command not found: {n}"));
            if let Some(s) = self.suggest(n) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            self.report(d);
            self.plain_args(call, &format!("`{n}`"));
        }
    }

    fn suggest(&self, name: &str) -> Option<String> {
        let candidates = signature::commands()
            .iter()
            .map(|c| c.name)
            .chain(signature::builtins().iter().map(|b| b.name))
            .chain(STATEMENT_WORDS.iter().copied())
            .chain(self.functions.keys().map(String::as_str));
        let lower = name.to_ascii_lowercase();
        candidates
            .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), c))
            .filter(|&(d, _)| d <= 2)
            .min_by_key(|&(d, c)| (d, c.len()))
            .map(|(_, c)| c.to_string())
    }

    fn command(&mut self, call: &Call, sig: &'static CommandSig, site: CallSite) {
        let n = sig.name;
        if site != CallSite::Statement && sig.returns == Returns::Nothing {
            self.report(
                Diagnostic::new(Code::NoValue, call.span, format!("`{n}` does not produce a value"))
                    .with_help(format!("call it on its own line: `{n}(…)`")),
            );
        }
        let target_supplied = site != CallSite::Statement && sig.returns == Returns::Target;
        let written = call.args.len();
        // In the assignment form the assignment supplies the target, so the
        // reading with the trailing target left out comes first.
        let form = if target_supplied {
            sig.form_with_arity(written + 1)
                .or_else(|| sig.form_with_arity(written))
        } else {
            sig.form_with_arity(written)
        };
        let Some(form) = form else {
            let forms: Vec<String> = sig
                .forms
                .iter()
                .map(|f| format!("{n}({})", f.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")))
                .collect();
            let (min, max) = sig.arity_range(target_supplied);
            let expected = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            let mut d = Diagnostic::new(
                Code::CommandArity,
                call.span,
                format!("`{n}` takes {expected} argument{}, found {written}", plural(max)),
            )
            .with_help(format!("write {}", forms.join(" or ")));
            if written > 0 && written + 1 == max && !target_supplied && sig.returns == Returns::Target {
                d = d.with_note(format!(
                    "the target may be left out only in the assignment form: `x = {n}(…)`"
                ));
            }
            self.report(d);
            call.args.iter().for_each(|a| self.arg(a));
            return;
        };
        for (i, arg) in call.args.iter().enumerate() {
            let param = form[i];
            match param.kind {
                ParamKind::Target | ParamKind::Name => {
                    let ok = match &arg.value {
                        None => param.kind == ParamKind::Target && target_supplied && i + 1 == form.len(),
                        Some(e) => match &e.kind {
                            ExprKind::Name(_) => true,
                            ExprKind::Str { value, .. } => is_identifier(value),
                            _ => false,
                        },
                    };
                    if !ok {
                        let role = if param.kind == ParamKind::Target {
                            "writes"
                        } else {
                            "reads"
                        };
                        self.report(
                            Diagnostic::new(
                                Code::ExpectedVariableName,
                                if arg.value.is_some() { arg.span } else { call.span },
                                format!("`{}` of `{n}` must be a variable name", param.name),
                            )
                            .with_label(format!("`{n}` {role} the variable named here"))
                            .with_help("write a bare name like `result` (or quote it: \"result\")"),
                        );
                    }
                }
                ParamKind::Literal => {
                    let ok = match &arg.value {
                        None => false,
                        Some(e) => matches!(
                            e.kind,
                            ExprKind::Name(_)
                                | ExprKind::Str { .. }
                                | ExprKind::Int(_)
                                | ExprKind::Float(_)
                                | ExprKind::Bool(_)
                                | ExprKind::None
                        ),
                    };
                    if !ok {
                        self.report(
                            Diagnostic::new(
                                Code::ExpectedLiteral,
                                if arg.value.is_some() { arg.span } else { call.span },
                                format!("`{}` of `{n}` is taken as written", param.name),
                            )
                            .with_help("give a bare word or a quoted string, not an expression"),
                        );
                    }
                }
                ParamKind::Value => self.arg(arg),
            }
        }
        if n == "registerEndpoint" {
            self.register_endpoint(call);
        }
    }

    fn register_endpoint(&mut self, call: &Call) {
        // A quoted method, or a bare word in capitals (a bare lower-case word
        // may be a variable holding the method).
        let method = call
            .args
            .get(1)
            .and_then(|a| a.value.as_ref())
            .and_then(|e| match &e.kind {
                ExprKind::Str { value, .. } => Some((value.as_str(), e.span)),
                ExprKind::Name(id) if id.name.bytes().all(|b| b.is_ascii_uppercase()) => {
                    Some((id.name.as_str(), e.span))
                }
                _ => None,
            });
        if let Some((value, span)) = method
            && !HTTP_METHODS.contains(&value.to_ascii_uppercase().as_str())
        {
            self.report(
                Diagnostic::new(Code::BadMethod, span, format!("`{value}` is not an HTTP method"))
                    .with_help(format!("use one of {}", HTTP_METHODS.join(", "))),
            );
        }
        let check_fn = |cx: &mut Self, e: &Expr, role: &str| {
            let name = match &e.kind {
                ExprKind::Name(id) => Some(id.name.as_str()),
                ExprKind::Str { value, .. } => Some(value.as_str()),
                _ => None,
            };
            match name {
                Some(n) if cx.functions.contains_key(n) => {}
                _ => cx.report(
                    Diagnostic::new(
                        Code::HandlerNotFunction,
                        e.span,
                        format!("the {role} must name a function of this script"),
                    )
                    .with_help("define it with `function name() { … }` and pass its bare name"),
                ),
            }
        };
        if let Some(Expr {
            kind: ExprKind::List(items),
            ..
        }) = call.args.get(2).and_then(|a| a.value.as_ref())
        {
            for item in items {
                check_fn(self, item, "middleware");
            }
        }
        if let Some(handler) = call.args.get(4).and_then(|a| a.value.as_ref()) {
            check_fn(self, handler, "handler");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallSite {
    /// `cmd(…)` on its own line.
    Statement,
    /// `x = cmd(…)` or `return cmd(…)`: the trailing target may be omitted.
    Assigned,
    /// Inside a larger expression.
    Expression,
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Levenshtein distance over chars.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}
