//! The AVAP syntax tree. Every node carries the byte span it came from.
//!
//! The tree keeps what the author wrote (a quoted string stays distinct from
//! a bare word, empty arguments stay in place); what an argument *means* is
//! decided later from the command's signature. `avap parse --json` prints
//! this tree; its shape is stable: fields are only ever added.

use serde::Serialize;

use crate::span::Span;

/// A parsed script: its statements in order (function definitions included).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Program {
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// A name with its span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stmt {
    #[serde(flatten)]
    pub kind: StmtKind,
    pub span: Span,
}

/// Statements (spec §3).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "stmt", rename_all = "snake_case")]
pub enum StmtKind {
    /// `name = expr`, `name += expr`, `name[k] = expr`. When `value` is a
    /// call to a command, the command's target is this assignment's target.
    Assign {
        target: AssignTarget,
        op: AssignOp,
        value: Expr,
    },
    /// A command or user-function call on its own line.
    Call { call: Call },
    /// `if(lhs, rhs, cmp)` … `else()` … `end()`.
    If {
        condition: Condition,
        then_body: Vec<Stmt>,
        else_body: Option<Vec<Stmt>>,
    },
    /// `startLoop(var, from, to)` … `endLoop()`; `to` is inclusive.
    Loop {
        var: Ident,
        from: Expr,
        to: Expr,
        body: Vec<Stmt>,
    },
    /// `try()` … `exception(var)` … `end()`; `assign` is the `v =` of
    /// `v = exception(e)`.
    Try {
        body: Vec<Stmt>,
        error_var: Option<Ident>,
        assign: Option<Ident>,
        handler: Vec<Stmt>,
    },
    /// `function name(params) { … }`.
    Function(Function),
    /// `return`, `return expr`, `return(expr)`.
    Return { value: Option<Expr> },
    /// `go_async(id)` … `end()`.
    Async { id: Expr, body: Vec<Stmt> },
    /// `include("file.avap")` / `import("file.avap")`.
    Include {
        keyword: IncludeKeyword,
        path: String,
        path_span: Span,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Function {
    pub name: Ident,
    pub params: Vec<Ident>,
    pub body: Vec<Stmt>,
    /// Span of the header line (`function name(params) {`).
    pub header: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncludeKeyword {
    Include,
    Import,
}

/// Left side of an assignment: a variable, optionally subscripted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssignTarget {
    pub name: Ident,
    /// `name[a][b] = …` keeps `[a, b]`; empty for a plain variable.
    pub indices: Vec<Expr>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignOp {
    Assign,
    AddAssign,
    SubAssign,
    MulAssign,
    DivAssign,
}

/// The condition of an `if`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Condition {
    /// `if(lhs, rhs, cmp)`.
    Compare {
        lhs: Arg,
        rhs: Arg,
        comparator: Comparator,
        comparator_span: Span,
    },
    /// `if(None, None, "expr")`: the string parsed as an expression.
    Expression { expr: Expr, source_span: Span },
}

/// Comparators of `if` (spec §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparator {
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
}

impl Comparator {
    /// Parse comparator text as written (bare or inside quotes).
    pub fn from_text(text: &str) -> Option<Comparator> {
        Some(match text.trim() {
            "=" | "==" => Comparator::Eq,
            "!=" => Comparator::NotEq,
            "<" => Comparator::Lt,
            "<=" => Comparator::Le,
            ">" => Comparator::Gt,
            ">=" => Comparator::Ge,
            "in" => Comparator::In,
            "not in" => Comparator::NotIn,
            _ => return None,
        })
    }
}

/// A call: `callee(args…)`. Commands, user functions, built-ins and
/// connector methods (`conn.query(sql)`) all use this node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Call {
    pub callee: Box<Expr>,
    pub args: Vec<Arg>,
    pub span: Span,
}

impl Call {
    /// The called name when the callee is a plain identifier.
    pub fn name(&self) -> Option<&Ident> {
        match &self.callee.kind {
            ExprKind::Name(id) => Some(id),
            _ => None,
        }
    }
}

/// One argument position. Empty arguments (`f(a, , b)`) are kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Arg {
    pub value: Option<Expr>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expr {
    #[serde(flatten)]
    pub kind: ExprKind,
    pub span: Span,
}

/// Expressions, Python-style (spec §2).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "expr", content = "value", rename_all = "snake_case")]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    /// A quoted string; `quote` is `'"'` or `'\''`.
    Str {
        value: String,
        quote: char,
    },
    Bool(bool),
    None,
    /// `` `text ${name} text` ``.
    Template(Vec<TemplatePart>),
    /// A bare identifier.
    Name(Ident),
    /// `$name`: the global variable `name`.
    Global(Ident),
    List(Vec<Expr>),
    Dict(Vec<(Expr, Expr)>),
    Unary {
        op: UnaryOp,
        operand: Box<Expr>,
    },
    Binary {
        op: BinaryOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `a < b <= c` keeps the chain: `first` then `(op, operand)` pairs.
    Compare {
        first: Box<Expr>,
        rest: Vec<(CompareOp, Expr)>,
    },
    /// `a and b`, `a or b`.
    Logical {
        op: LogicalOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `then if cond else otherwise`.
    Conditional {
        then: Box<Expr>,
        cond: Box<Expr>,
        otherwise: Box<Expr>,
    },
    Call(Call),
    Index {
        object: Box<Expr>,
        index: Box<Expr>,
    },
    Attribute {
        object: Box<Expr>,
        name: Ident,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "part", rename_all = "snake_case")]
pub enum TemplatePart {
    Text { text: String },
    Var { name: Ident },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnaryOp {
    Neg,
    Pos,
    Not,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Is,
    IsNot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogicalOp {
    And,
    Or,
}

/// Visit every statement, depth first, in source order.
pub fn walk_stmts<'a>(stmts: &'a [Stmt], f: &mut dyn FnMut(&'a Stmt)) {
    for s in stmts {
        f(s);
        match &s.kind {
            StmtKind::If {
                then_body, else_body, ..
            } => {
                walk_stmts(then_body, f);
                if let Some(e) = else_body {
                    walk_stmts(e, f);
                }
            }
            StmtKind::Loop { body, .. } | StmtKind::Async { body, .. } => walk_stmts(body, f),
            StmtKind::Try { body, handler, .. } => {
                walk_stmts(body, f);
                walk_stmts(handler, f);
            }
            StmtKind::Function(func) => walk_stmts(&func.body, f),
            StmtKind::Assign { .. } | StmtKind::Call { .. } | StmtKind::Return { .. } | StmtKind::Include { .. } => {}
        }
    }
}

/// Visit `e` and every expression inside it, parents first.
pub fn walk_expr<'a>(e: &'a Expr, f: &mut dyn FnMut(&'a Expr)) {
    f(e);
    match &e.kind {
        ExprKind::List(items) => items.iter().for_each(|i| walk_expr(i, f)),
        ExprKind::Dict(entries) => {
            for (k, v) in entries {
                walk_expr(k, f);
                walk_expr(v, f);
            }
        }
        ExprKind::Unary { operand, .. } => walk_expr(operand, f),
        ExprKind::Binary { lhs, rhs, .. } | ExprKind::Logical { lhs, rhs, .. } => {
            walk_expr(lhs, f);
            walk_expr(rhs, f);
        }
        ExprKind::Compare { first, rest } => {
            walk_expr(first, f);
            for (_, r) in rest {
                walk_expr(r, f);
            }
        }
        ExprKind::Conditional { then, cond, otherwise } => {
            walk_expr(then, f);
            walk_expr(cond, f);
            walk_expr(otherwise, f);
        }
        ExprKind::Call(c) => call_exprs(c, f),
        ExprKind::Index { object, index } => {
            walk_expr(object, f);
            walk_expr(index, f);
        }
        ExprKind::Attribute { object, .. } => walk_expr(object, f),
        ExprKind::Int(_)
        | ExprKind::Float(_)
        | ExprKind::Str { .. }
        | ExprKind::Bool(_)
        | ExprKind::None
        | ExprKind::Template(_)
        | ExprKind::Name(_)
        | ExprKind::Global(_) => {}
    }
}

/// Walk the callee and the present arguments of a call.
fn call_exprs<'a>(call: &'a Call, f: &mut dyn FnMut(&'a Expr)) {
    walk_expr(&call.callee, f);
    for a in &call.args {
        if let Some(e) = &a.value {
            walk_expr(e, f);
        }
    }
}

/// Walk every expression a statement holds itself (not those of the
/// statements nested in its blocks).
pub fn walk_stmt_exprs<'a>(s: &'a Stmt, f: &mut dyn FnMut(&'a Expr)) {
    match &s.kind {
        StmtKind::Assign { target, value, .. } => {
            target.indices.iter().for_each(|i| walk_expr(i, f));
            walk_expr(value, f);
        }
        StmtKind::Call { call } => call_exprs(call, f),
        StmtKind::If { condition, .. } => match condition {
            Condition::Compare { lhs, rhs, .. } => {
                for a in [lhs, rhs] {
                    if let Some(e) = &a.value {
                        walk_expr(e, f);
                    }
                }
            }
            Condition::Expression { expr, .. } => walk_expr(expr, f),
        },
        StmtKind::Loop { from, to, .. } => {
            walk_expr(from, f);
            walk_expr(to, f);
        }
        StmtKind::Return { value: Some(v) } => walk_expr(v, f),
        StmtKind::Async { id, .. } => walk_expr(id, f),
        StmtKind::Return { value: None } | StmtKind::Try { .. } | StmtKind::Function(_) | StmtKind::Include { .. } => {}
    }
}
