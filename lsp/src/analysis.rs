//! One document checked the way `avap check` checks a file, plus what the
//! editor features ask of it: the word under the cursor, the functions and
//! variables in scope, where a variable is first written, where an include
//! leads.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use avap_codegen::ast::{Function, Program, Stmt, StmtKind, TemplatePart, walk_stmts};
use avap_codegen::check::{IncludeError, LoadedSource, SourceLoader, check_file};
use avap_codegen::diag::FileId;
use avap_codegen::lexer::{Token, TokenKind, lex};
use avap_codegen::parser::is_identifier;
use avap_codegen::{CheckedProgram, SourceFile, Span};
use avap_hostfns::signature::{self, ParamKind};

/// Where `include` finds files for a document on disk. The binary passes
/// the CLI's filesystem loader (`FsLoader`), so the editor and `avap check`
/// resolve includes by the same rules.
pub trait IncludeResolver {
    /// The loader for the script at `script` (an absolute path). An error
    /// says why this script can include nothing; it becomes the note of
    /// each of its includes' diagnostics.
    fn loader_for(&self, script: &Path) -> Result<Box<dyn SourceLoader>, String>;
}

impl<F> IncludeResolver for F
where
    F: Fn(&Path) -> Result<Box<dyn SourceLoader>, String>,
{
    fn loader_for(&self, script: &Path) -> Result<Box<dyn SourceLoader>, String> {
        self(script)
    }
}

/// No includes anywhere (every include is the usual E0060).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoIncludeResolver;

impl IncludeResolver for NoIncludeResolver {
    fn loader_for(&self, _script: &Path) -> Result<Box<dyn SourceLoader>, String> {
        Err("this language server was started without access to included files".into())
    }
}

/// A loader that refuses every include, saying why.
struct Refusing(String);

impl SourceLoader for Refusing {
    fn load(&self, _from: &str, path: &str) -> Result<LoadedSource, IncludeError> {
        Err(IncludeError::with_help(
            format!("`{path}` cannot be included: {}", self.0),
            "save the script as a .avap file; includes resolve relative to it",
        ))
    }
}

/// One include the checker loaded: `include("path")` written in `from`
/// loaded the file shown as `name`.
#[derive(Debug, Clone)]
pub struct IncludeLoad {
    pub from: String,
    pub path: String,
    pub name: String,
}

/// Wraps the real loader to remember what each include loaded, so an
/// include can be followed (go to definition) and a diagnostic inside an
/// included file can be shown at the include that brought it in.
struct Recording<'a> {
    inner: &'a dyn SourceLoader,
    loads: RefCell<Vec<IncludeLoad>>,
}

impl SourceLoader for Recording<'_> {
    fn load(&self, from: &str, path: &str) -> Result<LoadedSource, IncludeError> {
        let found = self.inner.load(from, path)?;
        self.loads.borrow_mut().push(IncludeLoad {
            from: from.to_owned(),
            path: path.to_owned(),
            name: found.name.clone(),
        });
        Ok(found)
    }

    fn identity(&self, name: &str) -> String {
        self.inner.identity(name)
    }
}

/// How a variable gets a value at one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    Assignment,
    /// A parameter of the named function.
    Parameter,
    LoopCounter,
    ErrorVariable,
    /// The target argument of this command.
    CommandTarget(&'static str),
}

/// A place where a variable is written.
#[derive(Debug, Clone)]
pub struct Write {
    pub name: String,
    pub span: Span,
    pub kind: WriteKind,
}

/// The identifier under the cursor.
#[derive(Debug, Clone)]
pub struct Word {
    pub name: String,
    pub span: Span,
    /// `$name`, or `${name}` inside a template: always a variable.
    pub variable_only: bool,
    /// Followed by `(`.
    pub called: bool,
    /// The name in `function name(…)`.
    pub defined: bool,
    /// After `.`: a dict key or a connector method, nothing we know.
    pub attribute: bool,
}

/// A checked document.
#[derive(Debug)]
pub struct Analysis {
    pub checked: CheckedProgram,
    pub loads: Vec<IncludeLoad>,
    pub tokens: Vec<Token>,
}

impl Analysis {
    /// Check `text` as the file at `path` (or as an unsaved document).
    pub fn new(text: &str, path: Option<&Path>, resolver: &dyn IncludeResolver) -> Analysis {
        let (name, loader): (String, Box<dyn SourceLoader>) = match path {
            Some(path) => (
                path.display().to_string(),
                resolver.loader_for(path).unwrap_or_else(|why| Box::new(Refusing(why))),
            ),
            None => (
                "untitled.avap".to_owned(),
                Box::new(Refusing("the document is not saved as a file".into())),
            ),
        };
        let recording = Recording {
            inner: loader.as_ref(),
            loads: RefCell::new(Vec::new()),
        };
        let checked = check_file(SourceFile::new(name, text), &recording);
        let tokens = lex(checked.sources.get(0).text(), &mut Vec::new());
        Analysis {
            checked,
            loads: recording.loads.into_inner(),
            tokens,
        }
    }

    pub fn main(&self) -> &SourceFile {
        self.checked.sources.get(0)
    }

    pub fn program(&self) -> &Program {
        &self.checked.programs[0]
    }

    /// The path of a loaded file, when it is one on disk (absolute).
    pub fn file_path(&self, file: FileId) -> Option<PathBuf> {
        let path = PathBuf::from(self.checked.sources.get(file).name());
        path.is_absolute().then_some(path)
    }

    /// The span in the main file of the top-level include through which
    /// `file` was loaded (directly or through other includes).
    pub fn include_site(&self, file: FileId) -> Option<Span> {
        let main = self.main().name();
        let mut current = self.checked.sources.get(file).name().to_owned();
        // Each step goes one include up; a chain is no longer than the files.
        for _ in 0..=self.checked.sources.len() {
            let load = self.loads.iter().find(|l| l.name == current)?;
            if load.from == main {
                return self.top_level_includes().find(|(p, _)| *p == load.path).map(|(_, s)| s);
            }
            current.clone_from(&load.from);
        }
        None
    }

    fn top_level_includes(&self) -> impl Iterator<Item = (&str, Span)> {
        self.program().body.iter().filter_map(|s| match &s.kind {
            StmtKind::Include { path, path_span, .. } => Some((path.as_str(), *path_span)),
            _ => None,
        })
    }

    /// The file an `include("…")` of the main file at `offset` loaded, and
    /// the span of the written path.
    pub fn include_at(&self, offset: usize) -> Option<(PathBuf, Span)> {
        let main = self.main().name();
        let (path, span) = self.top_level_includes().find(|(_, s)| contains(*s, offset))?;
        let load = self.loads.iter().find(|l| l.from == main && l.path == path)?;
        let target = PathBuf::from(&load.name);
        target.is_absolute().then_some((target, span))
    }

    /// The identifier at `offset` (or ending there: the cursor just after
    /// a word).
    pub fn word_at(&self, offset: usize) -> Option<Word> {
        let text = self.main().text();
        // A cursor between `name` and `(` touches both: the name wins.
        let index = self.tokens.iter().position(|t| {
            matches!(t.kind, TokenKind::Ident | TokenKind::Global(_) | TokenKind::Template(_))
                && contains(t.span, offset)
        })?;
        let token = &self.tokens[index];
        let next = self.tokens.get(index + 1).map(|t| &t.kind);
        let previous = index.checked_sub(1).map(|i| &self.tokens[i]);
        let plain = |name: String, span: Span| Word {
            name,
            span,
            variable_only: false,
            called: next == Some(&TokenKind::LParen),
            defined: previous.is_some_and(|p| p.kind == TokenKind::Ident && slice(text, p.span) == "function"),
            attribute: previous.is_some_and(|p| p.kind == TokenKind::Dot),
        };
        match &token.kind {
            TokenKind::Ident => Some(plain(slice(text, token.span).to_owned(), token.span)),
            TokenKind::Global(name) => Some(Word {
                variable_only: true,
                called: false,
                ..plain(name.clone(), token.span)
            }),
            TokenKind::Template(parts) => parts.iter().find_map(|p| match p {
                TemplatePart::Var { name } if contains(name.span, offset) => Some(Word {
                    variable_only: true,
                    called: false,
                    defined: false,
                    attribute: false,
                    ..plain(name.name.clone(), name.span)
                }),
                _ => None,
            }),
            _ => None,
        }
    }

    /// The top-level function whose definition (header to `}`) holds `offset`.
    pub fn function_at(&self, offset: usize) -> Option<&Function> {
        self.program().body.iter().find_map(|s| match &s.kind {
            StmtKind::Function(f) if contains(s.span, offset) => Some(f),
            _ => None,
        })
    }

    /// A user function by name (from this file or an included one), with
    /// the file it is in.
    pub fn function(&self, name: &str) -> Option<(FileId, &Function)> {
        let info = self.checked.functions.get(name)?;
        self.checked
            .programs
            .get(info.file)?
            .body
            .iter()
            .find_map(|s| match &s.kind {
                StmtKind::Function(f) if f.name.name == name && f.header == info.header => Some((info.file, f)),
                _ => None,
            })
    }

    /// Every variable write that reaches a global: the top level's, and
    /// the command targets and loop counters inside functions whose name
    /// is not a local there (spec §6).
    pub fn global_writes(&self) -> Vec<Write> {
        let mut out = Vec::new();
        for s in &self.program().body {
            if !matches!(s.kind, StmtKind::Function(_)) {
                writes(std::slice::from_ref(s), &mut out);
            }
        }
        for s in &self.program().body {
            if let StmtKind::Function(f) = &s.kind {
                let locals = locals(f);
                let mut inside = Vec::new();
                writes(&f.body, &mut inside);
                out.extend(inside.into_iter().filter(|w| !locals.contains(&w.name.as_str())));
            }
        }
        out
    }

    /// The variables visible at `offset`, each with its first write there:
    /// inside a function its parameters and its own writes come first.
    pub fn variables_at(&self, offset: usize) -> Vec<Write> {
        let mut all = Vec::new();
        if let Some(f) = self.function_at(offset) {
            all.extend(parameters(f));
            writes(&f.body, &mut all);
        }
        all.extend(self.global_writes());
        let mut seen = std::collections::HashSet::new();
        all.retain(|w| seen.insert(w.name.clone()));
        all
    }

    /// Where the variable `name`, read at `offset`, is first written: in
    /// the enclosing function when it is one of its locals, else globally.
    pub fn first_write(&self, name: &str, offset: usize, global_only: bool) -> Option<Write> {
        if !global_only
            && let Some(f) = self.function_at(offset)
            && locals(f).contains(&name)
        {
            let mut inside = parameters(f);
            writes(&f.body, &mut inside);
            return inside.into_iter().find(|w| w.name == name);
        }
        self.global_writes().into_iter().find(|w| w.name == name)
    }

    /// The source line holding `offset`, trimmed.
    pub fn line_text(&self, offset: usize) -> &str {
        let file = self.main();
        let line = file.line_index(offset.min(file.text().len()));
        let start = file.line_starts()[line];
        let end = file.line_starts().get(line + 1).map_or(file.text().len(), |n| n - 1);
        file.text().get(start..end).unwrap_or("").trim()
    }
}

/// A function's locals (spec §6): its parameters and every name it assigns
/// with `=` (or `+=`, a subscript assignment).
pub fn locals(f: &Function) -> Vec<&str> {
    let mut names: Vec<&str> = f.params.iter().map(|p| p.name.as_str()).collect();
    walk_stmts(&f.body, &mut |s| {
        if let StmtKind::Assign { target, .. } = &s.kind {
            names.push(target.name.name.as_str());
        }
    });
    names
}

fn parameters(f: &Function) -> Vec<Write> {
    f.params
        .iter()
        .map(|p| Write {
            name: p.name.clone(),
            span: p.span,
            kind: WriteKind::Parameter,
        })
        .collect()
}

/// The writes of `stmts` (nested blocks included), in source order.
fn writes(stmts: &[Stmt], out: &mut Vec<Write>) {
    walk_stmts(stmts, &mut |s| match &s.kind {
        StmtKind::Assign { target, .. } => out.push(Write {
            name: target.name.name.clone(),
            span: target.name.span,
            kind: WriteKind::Assignment,
        }),
        StmtKind::Call { call } => {
            let Some(sig) = call.name().and_then(|n| signature::command(&n.name)) else {
                return;
            };
            let Some(form) = sig.form_with_arity(call.args.len()) else {
                return;
            };
            for (param, arg) in form.iter().zip(&call.args) {
                if param.kind != ParamKind::Target {
                    continue;
                }
                let written = arg.value.as_ref().and_then(|e| match &e.kind {
                    avap_codegen::ast::ExprKind::Name(id) => Some((id.name.clone(), id.span)),
                    avap_codegen::ast::ExprKind::Str { value, .. } if is_identifier(value) => {
                        Some((value.clone(), e.span))
                    }
                    _ => None,
                });
                if let Some((name, span)) = written {
                    out.push(Write {
                        name,
                        span,
                        kind: WriteKind::CommandTarget(sig.name),
                    });
                }
            }
        }
        StmtKind::Loop { var, .. } => out.push(Write {
            name: var.name.clone(),
            span: var.span,
            kind: WriteKind::LoopCounter,
        }),
        StmtKind::Try { error_var, assign, .. } => {
            for v in [error_var, assign].into_iter().flatten() {
                out.push(Write {
                    name: v.name.clone(),
                    span: v.span,
                    kind: WriteKind::ErrorVariable,
                });
            }
        }
        _ => {}
    });
}

/// Whether `offset` is in `span` or right at its end (a cursor after the
/// last character still points at the word).
pub fn contains(span: Span, offset: usize) -> bool {
    span.start as usize <= offset && offset <= span.end as usize
}

fn slice(text: &str, span: Span) -> &str {
    text.get(span.range()).unwrap_or("")
}
