//! Module-wide state while lowering: types, imports, constants, global
//! slots and function indices.

use std::collections::HashMap;

use avap_hostfns::abi::{self, Helper, Ty};
use avap_hostfns::signature::CommandSig;
use indexmap::{IndexMap, IndexSet};
use wasm_encoder::{Function, ValType};

use crate::ast::Stmt;
use crate::diag::{Code, Diagnostic, FileId, Sources};
use crate::span::Span;

/// A user function as callers see it.
#[derive(Debug, Clone)]
pub(crate) struct UserFn {
    pub index: u32,
    pub params: usize,
}

/// A `go_async` block waiting to be compiled into its own function.
pub(crate) struct PendingAsync<'a> {
    pub index: u32,
    /// Its number among the module's blocks: the export `go_async:<block>`.
    pub block: u32,
    pub file: FileId,
    pub body: &'a [Stmt],
    /// The `go_async` statement, for diagnostics.
    pub span: Span,
    /// Variables of the enclosing function passed in as a snapshot.
    pub captured: Vec<String>,
    /// Variables the block writes: the dict `gather` returns.
    pub written: Vec<String>,
}

pub(crate) struct ModuleCtx<'a> {
    pub sources: &'a Sources,
    types: IndexMap<(Vec<ValType>, Vec<ValType>), u32>,
    consts: IndexSet<String>,
    globals: IndexSet<String>,
    /// Commands this module imports, with the first line using each.
    pub commands: IndexMap<&'static str, (u32, &'static CommandSig, u32)>,
    pub user_fns: HashMap<String, UserFn>,
    /// Defined functions: `(type index, body, source-map marks, name, file)`.
    pub defined: Vec<Option<DefinedFn>>,
    pub pending_async: Vec<PendingAsync<'a>>,
    /// `go_async` blocks numbered so far.
    pub async_blocks: u32,
    /// Handler name → output variable, for `registerEndpoint` sites.
    pub outputs: HashMap<String, String>,
    /// Functions beyond the compile budget (see `lower::MAX_FUNCTION_BYTES`).
    pub oversize: Vec<Diagnostic>,
    /// Bytes of code loop versioning added in the functions finished so
    /// far (see `lower::VERSIONING_MODULE_BYTES`).
    pub versioned_bytes: usize,
}

pub(crate) struct DefinedFn {
    pub type_index: u32,
    pub body: Function,
    pub marks: Vec<(u32, u32, u32)>,
    pub name: String,
    pub file: FileId,
    pub export: Option<String>,
}

impl<'a> ModuleCtx<'a> {
    pub fn new(sources: &'a Sources, commands: IndexMap<&'static str, (u32, &'static CommandSig, u32)>) -> Self {
        ModuleCtx {
            sources,
            types: IndexMap::new(),
            consts: IndexSet::new(),
            globals: abi::FIXED_GLOBALS.iter().map(|g| (*g).to_owned()).collect(),
            commands,
            user_fns: HashMap::new(),
            defined: Vec::new(),
            pending_async: Vec::new(),
            async_blocks: 0,
            outputs: HashMap::new(),
            oversize: Vec::new(),
            versioned_bytes: 0,
        }
    }

    /// Record a diagnostic when one lowered function (`what`, at `span`)
    /// is beyond the compile budget.
    pub fn check_shape(&mut self, what: &str, file: FileId, span: Span, body_bytes: usize, locals: usize) {
        if body_bytes > super::MAX_FUNCTION_BYTES {
            self.oversize.push(
                Diagnostic::new(
                    Code::FunctionTooLarge,
                    span,
                    format!(
                        "{what} compiles to {} KiB of code; one function may have at most {} KiB",
                        body_bytes / 1024,
                        super::MAX_FUNCTION_BYTES / 1024
                    ),
                )
                .in_file(file)
                .with_help("split it into smaller functions (a loop or a helper function repeats code without repeating it in the source)"),
            );
        }
        if locals > super::MAX_LOCALS {
            self.oversize.push(
                Diagnostic::new(
                    Code::TooManyVariables,
                    span,
                    format!(
                        "{what} uses {} variables and parameters; one function may have at most {}",
                        locals / 2,
                        super::MAX_LOCALS / 2
                    ),
                )
                .in_file(file)
                .with_help("group related values in a dict or a list"),
            );
        }
    }

    /// Whether `body` calls a user function anywhere (expressions included).
    pub fn calls_user_function(&self, body: &[Stmt]) -> bool {
        let mut found = false;
        super::each_call(body, &mut |c| {
            if c.name().is_some_and(|n| self.user_fns.contains_key(&n.name)) {
                found = true;
            }
        });
        found
    }

    pub fn type_index(&mut self, params: &[ValType], results: &[ValType]) -> u32 {
        let n = u32::try_from(self.types.len()).expect("type count fits u32");
        *self.types.entry((params.to_vec(), results.to_vec())).or_insert(n)
    }

    pub fn types(&self) -> impl Iterator<Item = &(Vec<ValType>, Vec<ValType>)> {
        self.types.keys()
    }

    pub fn const_index(&mut self, s: &str) -> i32 {
        let (i, _) = self.consts.insert_full(s.to_owned());
        i32::try_from(i).expect("constant count fits i32")
    }

    pub fn consts(&self) -> &IndexSet<String> {
        &self.consts
    }

    pub fn global_slot(&mut self, name: &str) -> u32 {
        let (i, _) = self.globals.insert_full(name.to_owned());
        u32::try_from(i).expect("global count fits u32")
    }

    pub fn global_count(&self) -> u32 {
        u32::try_from(self.globals.len()).expect("global count fits u32")
    }

    pub fn helper_index(h: Helper) -> u32 {
        let pos = Helper::ALL.iter().position(|x| *x == h).expect("helper listed in ALL");
        u32::try_from(pos).expect("helper index fits u32")
    }

    pub fn import_count(&self) -> u32 {
        u32::try_from(Helper::ALL.len() + self.commands.len()).expect("import count fits u32")
    }

    /// Reserve the next defined-function index.
    pub fn reserve_function(&mut self) -> u32 {
        let idx = self.import_count() + u32::try_from(self.defined.len()).expect("function count fits u32");
        self.defined.push(None);
        idx
    }

    pub fn set_function(&mut self, index: u32, f: DefinedFn) {
        let slot = (index - self.import_count()) as usize;
        self.defined[slot] = Some(f);
    }

    /// Type index of the wasm signature of `h`.
    pub fn helper_type(&mut self, h: Helper) -> u32 {
        let (p, r) = h.signature();
        let p: Vec<ValType> = p.iter().map(|t| val_type(*t)).collect();
        let r: Vec<ValType> = r.iter().map(|t| val_type(*t)).collect();
        self.type_index(&p, &r)
    }

    pub fn command_type(&mut self) -> u32 {
        let (p, r) = abi::COMMAND_SIGNATURE;
        let p: Vec<ValType> = p.iter().map(|t| val_type(*t)).collect();
        let r: Vec<ValType> = r.iter().map(|t| val_type(*t)).collect();
        self.type_index(&p, &r)
    }

    /// Type of a user function with `n` parameters: `n` pairs → one pair.
    pub fn user_fn_type(&mut self, n: usize) -> u32 {
        let mut p = Vec::with_capacity(n * 2);
        for _ in 0..n {
            p.push(ValType::I32);
            p.push(ValType::I64);
        }
        self.type_index(&p, &[ValType::I32, ValType::I64])
    }
}

pub(crate) fn val_type(t: Ty) -> ValType {
    match t {
        Ty::I32 => ValType::I32,
        Ty::I64 => ValType::I64,
    }
}
