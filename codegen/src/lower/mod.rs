//! Lowering a checked program to a WebAssembly module (`wasm-encoder`).
//!
//! Layout of the module (the contract is `avap_hostfns::abi`):
//! * imports: every runtime helper (module `rt`), then one import per
//!   command the program uses (module `avap`);
//! * functions: `main` (the top level), one per user function, one per
//!   `go_async` block;
//! * memory: the argument area, the top-level variable slots, the constant
//!   table and the constant bytes; fixed size, never grown;
//! * globals: `stack_left` (i64, set by the host), `consts`, `global_count`.
//!
//! Values are `(tag, payload)` pairs; see [`func`] for variable homes and
//! error branches, [`expr`] for inline arithmetic.

mod command;
mod expr;
mod func;
mod module;
mod scope;
mod stmt;

use avap_hostfns::abi::{self, Helper};
use avap_hostfns::signature::CommandSig;
use avap_hostfns::{Capability, command as lookup_command};
use indexmap::IndexMap;
use wasm_encoder::{
    ConstExpr, DataSection, EntityType, ExportKind, ExportSection, FunctionSection, GlobalSection, GlobalType,
    ImportSection, MemorySection, MemoryType, NameMap, NameSection, TypeSection, ValType,
};

use self::command::variable_name;
use self::func::{FuncCtx, FuncKind};
use self::module::{DefinedFn, ModuleCtx, UserFn};
use crate::ast::{Arg, Call, ExprKind, Stmt, StmtKind, walk_stmt_exprs, walk_stmts};
use crate::check::CheckedProgram;
use crate::diag::{Code, Diagnostic, FileId};
use crate::span::Span;

/// Index of the `stack_left` global.
pub(crate) const STACK_LEFT_GLOBAL: u32 = 0;
/// Index of the `gc_countdown` global (see `abi::EXPORT_GC_COUNTDOWN`).
pub(crate) const GC_COUNTDOWN_GLOBAL: u32 = 3;

// The compile budget: shapes that bound what one script asks of Cranelift,
// whose time and memory grow faster than linearly with the size of one
// function (BENCHMARKS.md, "Compile budget"). Scripts beyond them are
// refused with a diagnostic at the function or statement responsible;
// the top level is split into chunks so that its length alone never is.

/// Largest body of one wasm function (a user function, a `go_async`
/// block, or one top-level statement), in bytes of code.
pub const MAX_FUNCTION_BYTES: usize = 64 * 1024;
/// Most wasm locals one function may have (two per variable or parameter,
/// plus scratch); wasmparser refuses more than 50,000.
pub const MAX_LOCALS: usize = 16_384;
/// Largest compile work of one module: its bytes of code plus
/// [`FUNCTION_COST`] per function (Cranelift's fixed cost per function is
/// about that much code's worth; BENCHMARKS.md, "Compile budget").
pub const MAX_CODE_BYTES: usize = 1024 * 1024;
pub const FUNCTION_COST: usize = 128;
/// Loop versioning (a fast copy of a request-bound loop, `stmt.rs`) may add
/// at most this much code to one function, and to the module, on top of
/// the budget above. The budget judges a script by its unversioned code,
/// so versioning never makes a script too large; these bound what it adds
/// to Cranelift's work (an eighth of a function, a sixteenth of a module).
pub const VERSIONING_FUNCTION_BYTES: usize = MAX_FUNCTION_BYTES / 8;
pub const VERSIONING_MODULE_BYTES: usize = MAX_CODE_BYTES / 16;
/// Top-level statements are grouped into chunk functions of at most this
/// much source each (a statement expands to at most about 50 times its
/// source size in code, so a chunk stays under `MAX_FUNCTION_BYTES` unless
/// one statement alone is too large).
const CHUNK_SOURCE_BYTES: usize = 1024;
/// Linear memory is sized in bytes (custom page sizes of one byte), rounded
/// up to whole host pages: the pooling allocator resets a run's memory
/// after it, and a hello-sized module then resets 4 KiB instead of the
/// 64 KiB of one standard wasm page.
const MEMORY_GRANULE: u32 = 4096;

/// A command the module imports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedCommand {
    pub name: &'static str,
    pub capability: Capability,
    /// First line (of the root file or an included file) that uses it.
    pub line: u32,
}

/// A route declared with literal arguments, known at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticEndpoint {
    pub method: String,
    pub path: String,
    pub handler: String,
    pub description: String,
    /// Middleware names, when written literally (else empty).
    pub middleware: Vec<String>,
}

/// Source-map marks of one function: `(offset in body, line, column)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionMarks {
    pub func_index: u32,
    pub name: String,
    pub file: FileId,
    pub marks: Vec<(u32, u32, u32)>,
}

/// The result of lowering.
#[derive(Debug, Clone)]
pub struct LoweredModule {
    pub wasm: Vec<u8>,
    pub commands: Vec<ImportedCommand>,
    pub endpoints: Vec<StaticEndpoint>,
    pub functions: Vec<String>,
    pub marks: Vec<FunctionMarks>,
    /// Functions or statements beyond the compile budget (errors): the
    /// module is still valid wasm, but must not be compiled.
    pub oversize: Vec<Diagnostic>,
    /// Bytes of code the fast copies of versioned loops added (at most
    /// [`VERSIONING_MODULE_BYTES`]; not judged by the compile budget).
    pub versioned_bytes: usize,
}

/// Lower a program that checked without errors.
pub fn lower(checked: &CheckedProgram) -> LoweredModule {
    let commands = collect_commands(checked);
    let mut m = ModuleCtx::new(&checked.sources, commands);
    let main_index = m.reserve_function();

    // Declare user functions in a stable order (file, then position).
    let mut fns: Vec<(FileId, &crate::ast::Function)> = Vec::new();
    for (file, program) in checked.programs.iter().enumerate() {
        walk_stmts(&program.body, &mut |s| {
            if let StmtKind::Function(f) = &s.kind {
                fns.push((file, f));
            }
        });
    }
    let mut seen = std::collections::HashSet::new();
    fns.retain(|(_, f)| seen.insert(f.name.name.clone()));
    for (_, f) in &fns {
        let index = m.reserve_function();
        m.user_fns.insert(
            f.name.name.clone(),
            UserFn {
                index,
                params: f.params.len(),
            },
        );
    }
    let endpoints = collect_endpoints(checked, &mut m);

    lower_top_level(&mut m, main_index, &checked.programs[0].body);

    for (file, f) in &fns {
        let index = m.user_fns[&f.name.name].index;
        let n = f.params.len();
        let params: Vec<String> = f.params.iter().map(|p| p.name.clone()).collect();
        let output_var = m.outputs.get(&f.name.name).cloned();
        let mut cx = FuncCtx::new(&mut m, *file, FuncKind::User, u32::try_from(n).unwrap_or(0));
        for (i, p) in params.iter().enumerate() {
            cx.vars.insert(p.clone(), func::Pair(u32::try_from(i * 2).unwrap_or(0)));
            // Callers always pass a value (missing arguments are `None`).
            cx.defined.insert(p.clone());
        }
        for name in scope::assigned_names(&f.body) {
            // `_status` and `__last_error__` are request-wide (spec §6).
            if !cx.vars.contains_key(&name) && !abi::FIXED_GLOBALS.contains(&name.as_str()) {
                let p = cx.new_pair();
                cx.vars.insert(name, p);
            }
        }
        cx.output_var = output_var;
        cx.frame_cost = 64 + 16 * i64::try_from(cx.vars.len()).unwrap_or(0);
        // Prologue: take this frame's cost from the stack budget.
        let cost = cx.frame_cost;
        cx.ins()
            .global_get(STACK_LEFT_GLOBAL)
            .i64_const(cost)
            .i64_sub()
            .global_set(STACK_LEFT_GLOBAL)
            .global_get(STACK_LEFT_GLOBAL)
            .i64_const(0)
            .i64_lt_s()
            .if_(wasm_encoder::BlockType::Empty);
        cx.helper(Helper::StackOverflow);
        cx.ins().unreachable().end();
        cx.block(wasm_encoder::BlockType::Empty, true);
        cx.stmts(&f.body);
        cx.push_none();
        cx.epilogue();
        cx.close();
        cx.give_back_stack();
        cx.ins().i32_const(abi::TAG_ERR).i64_const(0).end();
        let (locals, versioned) = (cx.local_count(), cx.versioned);
        let (body, marks) = cx.finish();
        m.check_shape(
            &format!("function `{}`", f.name.name),
            *file,
            f.header,
            body.byte_len() - versioned.bytes,
            locals - versioned.locals,
        );
        let type_index = m.user_fn_type(n);
        let export = (n == 0).then(|| format!("{}{}", abi::EXPORT_FN_PREFIX, f.name.name));
        m.set_function(
            index,
            DefinedFn {
                type_index,
                body,
                marks,
                name: f.name.name.clone(),
                file: *file,
                export,
            },
        );
    }

    // go_async blocks (compiling one may queue more).
    while let Some(pending) = m.pending_async.pop() {
        let n = pending.captured.len();
        let mut cx = FuncCtx::new(&mut m, pending.file, FuncKind::Async, u32::try_from(n).unwrap_or(0));
        for (i, name) in pending.captured.iter().enumerate() {
            cx.vars
                .insert(name.clone(), func::Pair(u32::try_from(i * 2).unwrap_or(0)));
        }
        cx.block(wasm_encoder::BlockType::Empty, true);
        cx.stmts(pending.body);
        // Result: a dict of the variables the block assigned.
        let h = cx.new_local(ValType::I64);
        cx.helper(Helper::DictNew);
        cx.ins().local_set(h);
        for name in &pending.written {
            let p = cx.vars[name];
            cx.ins().local_get(p.tag()).if_(wasm_encoder::BlockType::Empty);
            cx.ins().local_get(h);
            cx.push_str(name);
            cx.load_pair(p);
            cx.helper(Helper::DictSet);
            cx.ins().drop().end();
        }
        cx.ins().i32_const(abi::TAG_DICT).local_get(h);
        cx.epilogue();
        cx.close();
        cx.ins().i32_const(abi::TAG_ERR).i64_const(0).end();
        let (locals, versioned) = (cx.local_count(), cx.versioned);
        let (body, marks) = cx.finish();
        m.check_shape(
            "this go_async block",
            pending.file,
            pending.span,
            body.byte_len() - versioned.bytes,
            locals - versioned.locals,
        );
        let type_index = m.user_fn_type(n);
        let line = marks.first().map_or(0, |m| m.1);
        m.set_function(
            pending.index,
            DefinedFn {
                type_index,
                body,
                marks,
                name: format!("go_async@{line}"),
                file: pending.file,
                export: Some(format!("{}{}", abi::EXPORT_ASYNC_PREFIX, pending.block)),
            },
        );
    }

    assemble(m, endpoints)
}

/// The top level: one function `main` when it is short; otherwise chunk
/// functions of a bounded size, which `main` calls in order. Each chunk
/// caches the globals it uses in locals (loaded at its start, written back
/// at its end) and returns 0 to go on or 1 when an error is pending.
fn lower_top_level<'a>(m: &mut ModuleCtx<'a>, main_index: u32, body: &'a [Stmt]) {
    let chunks = chunk_statements(body);
    let type_index = m.type_index(&[], &[ValType::I32]);
    if chunks.len() <= 1 {
        let (code, marks, locals, versioned) = lower_chunk(m, body, false);
        m.check_shape(
            "the top level",
            0,
            span_of(body_span(body)),
            code.byte_len() - versioned,
            locals,
        );
        m.set_function(
            main_index,
            DefinedFn {
                type_index,
                body: code,
                marks,
                name: "main".into(),
                file: 0,
                export: Some(abi::EXPORT_MAIN.into()),
            },
        );
        return;
    }
    let mut indices = Vec::with_capacity(chunks.len());
    for chunk in &chunks {
        let index = m.reserve_function();
        let (code, marks, locals, versioned) = lower_chunk(m, chunk, true);
        let span = span_of(body_span(chunk));
        let what = match chunk {
            [_] => "this statement",
            _ => "these statements",
        };
        m.check_shape(what, 0, span, code.byte_len() - versioned, locals);
        let line = marks.first().map_or(0, |mark| mark.1);
        m.set_function(
            index,
            DefinedFn {
                type_index,
                body: code,
                marks,
                name: format!("main@{line}"),
                file: 0,
                export: None,
            },
        );
        indices.push(index);
    }
    let mut f = wasm_encoder::Function::new_with_locals_types([ValType::I32]);
    {
        let mut sink = f.instructions();
        for index in indices {
            // A failed chunk ends the top level with its pending error.
            sink.call(index).local_tee(0).if_(wasm_encoder::BlockType::Empty);
            sink.i32_const(1).return_().end();
        }
        sink.i32_const(0).end();
    }
    m.set_function(
        main_index,
        DefinedFn {
            type_index,
            body: f,
            marks: Vec::new(),
            name: "main".into(),
            file: 0,
            export: Some(abi::EXPORT_MAIN.into()),
        },
    );
}

/// One top-level function over `stmts`: globals cached in locals (loaded
/// first when earlier chunks may have set them), written back at the end.
/// Returns the function, its marks, its locals and the bytes versioning
/// added (locals without versioning's).
fn lower_chunk<'a>(
    m: &mut ModuleCtx<'a>,
    stmts: &'a [Stmt],
    reload: bool,
) -> (wasm_encoder::Function, Vec<(u32, u32, u32)>, usize, usize) {
    let mut cx = FuncCtx::new(m, 0, FuncKind::Main, 0);
    let mut names = scope::top_level_names(stmts);
    for fixed in abi::FIXED_GLOBALS {
        names.insert(fixed.to_owned());
    }
    cx.cache_globals(names);
    if reload {
        cx.reload_main();
    }
    cx.block(wasm_encoder::BlockType::Empty, true);
    cx.stmts(stmts);
    cx.flush_main();
    cx.ins().i32_const(0).return_();
    cx.close();
    cx.ins().i32_const(1).end();
    let (locals, versioned) = (cx.local_count(), cx.versioned);
    let (body, marks) = cx.finish();
    (body, marks, locals - versioned.locals, versioned.bytes)
}

/// Consecutive top-level statements in groups of about
/// [`CHUNK_SOURCE_BYTES`] of source (a long statement is a group of its own).
fn chunk_statements(body: &[Stmt]) -> Vec<&[Stmt]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, s) in body.iter().enumerate() {
        if size > 0 && size + s.span.len() > CHUNK_SOURCE_BYTES {
            chunks.push(&body[start..i]);
            start = i;
            size = 0;
        }
        size += s.span.len();
    }
    if start < body.len() || chunks.is_empty() {
        chunks.push(&body[start..]);
    }
    chunks
}

fn body_span(stmts: &[Stmt]) -> Option<Span> {
    Some(stmts.first()?.span.to(stmts.last()?.span))
}

fn span_of(span: Option<Span>) -> Span {
    span.unwrap_or_default()
}

fn assemble(mut m: ModuleCtx<'_>, endpoints: Vec<StaticEndpoint>) -> LoweredModule {
    // Imports first: they fix the type indices of helpers and commands.
    let mut imports = ImportSection::new();
    for h in Helper::ALL {
        let ty = m.helper_type(h);
        imports.import(abi::RT_MODULE, h.name(), EntityType::Function(ty));
    }
    let command_type = m.command_type();
    let command_names: Vec<&'static str> = m.commands.keys().copied().collect();
    for name in &command_names {
        imports.import(abi::COMMAND_MODULE, name, EntityType::Function(command_type));
    }

    // Memory layout: globals, constant table, constant bytes.
    let globals_end = abi::GLOBALS_BASE + m.global_count() * abi::SLOT_BYTES;
    let table_addr = globals_end.next_multiple_of(8);
    let consts: Vec<String> = m.consts().iter().cloned().collect();
    let count = u32::try_from(consts.len()).expect("constant count fits u32");
    let mut bytes_addr = table_addr + 4 + 8 * count;
    let mut table: Vec<u8> = count.to_le_bytes().to_vec();
    let mut blob: Vec<u8> = Vec::new();
    for c in &consts {
        let len = u32::try_from(c.len()).expect("constant fits u32");
        table.extend_from_slice(&bytes_addr.to_le_bytes());
        table.extend_from_slice(&len.to_le_bytes());
        blob.extend_from_slice(c.as_bytes());
        bytes_addr += len;
    }
    let end = bytes_addr;
    let memory_bytes = u64::from(end.max(1).next_multiple_of(MEMORY_GRANULE));

    let mut functions = FunctionSection::new();
    let mut code = wasm_encoder::CodeSection::new();
    let mut exports = ExportSection::new();
    let mut names = NameMap::new();
    let mut marks = Vec::new();
    let mut fn_names = Vec::new();
    let base = m.import_count();
    // Judged without what loop versioning added (bounded on its own).
    let code_bytes: usize = m.defined.iter().flatten().map(|f| f.body.byte_len()).sum::<usize>() - m.versioned_bytes;
    let function_count = m.defined.len();
    let work = code_bytes + FUNCTION_COST * function_count;
    if work > MAX_CODE_BYTES {
        m.oversize.push(
            Diagnostic::new(
                Code::ProgramTooLarge,
                Span::default(),
                format!(
                    "the script compiles to {} KiB of code in {function_count} functions, {} KiB of compile work; \
                     the budget is {} KiB",
                    code_bytes / 1024,
                    work / 1024,
                    MAX_CODE_BYTES / 1024
                ),
            )
            .with_help("split it into several scripts, or move repeated code into functions and loops"),
        );
    }
    for (i, h) in Helper::ALL.iter().enumerate() {
        names.append(u32::try_from(i).unwrap_or(0), h.name());
    }
    for (i, c) in command_names.iter().enumerate() {
        names.append(u32::try_from(Helper::ALL.len() + i).unwrap_or(0), c);
    }
    for (i, f) in m.defined.iter().enumerate() {
        let f = f.as_ref().expect("every reserved function is compiled");
        let index = base + u32::try_from(i).expect("function count fits u32");
        functions.function(f.type_index);
        code.function(&f.body);
        if let Some(e) = &f.export {
            exports.export(e, ExportKind::Func, index);
        }
        names.append(index, &f.name);
        marks.push(FunctionMarks {
            func_index: index,
            name: f.name.clone(),
            file: f.file,
            marks: f.marks.clone(),
        });
        if !f.name.starts_with("go_async@") && !f.name.starts_with("main@") && f.name != "main" {
            fn_names.push(f.name.clone());
        }
    }

    let mut types = TypeSection::new();
    for (p, r) in m.types() {
        types.ty().function(p.iter().copied(), r.iter().copied());
    }

    let mut memory = MemorySection::new();
    memory.memory(MemoryType {
        minimum: memory_bytes,
        maximum: Some(memory_bytes),
        memory64: false,
        shared: false,
        page_size_log2: Some(0),
    });
    exports.export(abi::EXPORT_MEMORY, ExportKind::Memory, 0);

    let mut globals = GlobalSection::new();
    globals.global(
        GlobalType {
            val_type: ValType::I64,
            mutable: true,
            shared: false,
        },
        &ConstExpr::i64_const(0),
    );
    let table_addr_i32 = i32::try_from(table_addr).expect("address fits i32");
    globals.global(
        GlobalType {
            val_type: ValType::I32,
            mutable: false,
            shared: false,
        },
        &ConstExpr::i32_const(table_addr_i32),
    );
    globals.global(
        GlobalType {
            val_type: ValType::I32,
            mutable: false,
            shared: false,
        },
        &ConstExpr::i32_const(i32::try_from(m.global_count()).expect("global count fits i32")),
    );
    globals.global(
        GlobalType {
            val_type: ValType::I32,
            mutable: true,
            shared: false,
        },
        &ConstExpr::i32_const(0),
    );
    exports.export(abi::EXPORT_STACK_LEFT, ExportKind::Global, STACK_LEFT_GLOBAL);
    exports.export(abi::EXPORT_CONSTS, ExportKind::Global, 1);
    exports.export(abi::EXPORT_GLOBAL_COUNT, ExportKind::Global, 2);
    exports.export(abi::EXPORT_GC_COUNTDOWN, ExportKind::Global, GC_COUNTDOWN_GLOBAL);

    let mut data = DataSection::new();
    table.extend_from_slice(&blob);
    data.active(0, &ConstExpr::i32_const(table_addr_i32), table);

    let mut name_section = NameSection::new();
    name_section.functions(&names);

    let mut module = wasm_encoder::Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&functions)
        .section(&memory)
        .section(&globals)
        .section(&exports)
        .section(&code)
        .section(&data)
        .section(&name_section);

    let commands = m
        .commands
        .values()
        .map(|(_, sig, line)| ImportedCommand {
            name: sig.name,
            capability: sig.capability,
            line: *line,
        })
        .collect();
    LoweredModule {
        wasm: module.finish(),
        commands,
        endpoints,
        functions: fn_names,
        marks,
        oversize: std::mem::take(&mut m.oversize),
        versioned_bytes: m.versioned_bytes,
    }
}

/// The commands a program that checked without errors imports, in
/// first-use order, each with its capability class and first line: what
/// its artifact's `avap.meta` lists (and `avap audit` shows), found
/// without lowering.
pub fn imported_commands(checked: &CheckedProgram) -> Vec<ImportedCommand> {
    collect_commands(checked)
        .values()
        .map(|(_, sig, line)| ImportedCommand {
            name: sig.name,
            capability: sig.capability,
            line: *line,
        })
        .collect()
}

/// Every command the program calls, in first-use order, with its import
/// index and first line.
fn collect_commands(checked: &CheckedProgram) -> IndexMap<&'static str, (u32, &'static CommandSig, u32)> {
    let mut used: IndexMap<&'static str, (u32, &'static CommandSig, u32)> = IndexMap::new();
    for (file, program) in checked.programs.iter().enumerate() {
        let src = checked.sources.get(file);
        each_call(&program.body, &mut |call| {
            // A method call (`conn.query(sql)`) goes through `ormDirect`.
            let method = matches!(call.callee.kind, ExprKind::Attribute { .. });
            let sig = if method {
                lookup_command("ormDirect")
            } else {
                call.name().and_then(|n| lookup_command(&n.name))
            };
            if let Some(sig) = sig {
                let n = u32::try_from(Helper::ALL.len() + used.len()).expect("import count fits u32");
                let line = src.line_col(call.span.start as usize).line;
                used.entry(sig.name).or_insert((n, sig, line));
            }
        });
    }
    used
}

/// `registerEndpoint` calls: handler → output variable, and the routes
/// whose path and method are written as literals.
fn collect_endpoints(checked: &CheckedProgram, m: &mut ModuleCtx<'_>) -> Vec<StaticEndpoint> {
    let mut out = Vec::new();
    for program in &checked.programs {
        each_call(&program.body, &mut |call| {
            if call.name().is_none_or(|n| n.name != "registerEndpoint") || call.args.len() != 6 {
                return;
            }
            let handler = variable_name(&call.args[4]);
            if let (Some(h), Some(o)) = (&handler, variable_name(&call.args[5])) {
                m.outputs.insert(h.clone(), o);
            }
            let text = |a: &Arg| match a.value.as_ref().map(|e| &e.kind) {
                Some(ExprKind::Str { value, .. }) => Some(value.clone()),
                _ => None,
            };
            if let (Some(path), Some(method), Some(h)) = (text(&call.args[0]), text(&call.args[1]), handler) {
                out.push(StaticEndpoint {
                    method: method.to_ascii_uppercase(),
                    path,
                    handler: h,
                    description: text(&call.args[3]).unwrap_or_default(),
                    middleware: static_middleware(&call.args[2]),
                });
            }
        });
    }
    out
}

/// The middleware argument of `registerEndpoint` when it is written out:
/// a list of bare or quoted names, or a text (a JSON array or names
/// separated by commas, as the runtime reads it). Anything computed at run
/// time gives no names.
fn static_middleware(arg: &Arg) -> Vec<String> {
    let names: Option<Vec<String>> = match arg.value.as_ref().map(|e| &e.kind) {
        Some(ExprKind::List(items)) => items
            .iter()
            .map(|item| match &item.kind {
                ExprKind::Name(id) => Some(id.name.clone()),
                ExprKind::Str { value, .. } => Some(value.trim().to_owned()),
                _ => None,
            })
            .collect(),
        Some(ExprKind::Str { value, .. }) => match serde_json::from_str::<serde_json::Value>(value) {
            Ok(serde_json::Value::Array(items)) => items.iter().map(|i| i.as_str().map(str::to_owned)).collect(),
            Ok(_) => None,
            Err(_) => Some(value.split(',').map(|n| n.trim().to_owned()).collect()),
        },
        _ => None,
    };
    let mut names = names.unwrap_or_default();
    names.retain(|n| !n.is_empty());
    names
}

/// Visit every call in statements and their expressions.
pub(crate) fn each_call<'a>(body: &'a [Stmt], f: &mut dyn FnMut(&'a Call)) {
    walk_stmts(body, &mut |s| {
        if let StmtKind::Call { call } = &s.kind {
            f(call);
        }
        walk_stmt_exprs(s, &mut |e| {
            if let ExprKind::Call(c) = &e.kind {
                f(c);
            }
        });
    });
}
