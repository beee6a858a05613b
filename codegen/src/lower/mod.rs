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
use crate::diag::FileId;

/// Index of the `stack_left` global.
pub(crate) const STACK_LEFT_GLOBAL: u32 = 0;
const PAGE: u32 = 65_536;

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

    // main
    {
        let mut cx = FuncCtx::new(&mut m, 0, FuncKind::Main, 0);
        let mut names = scope::top_level_names(&checked.programs[0].body);
        for fixed in abi::FIXED_GLOBALS {
            names.insert(fixed.to_owned());
        }
        cx.cache_globals(names);
        cx.block(wasm_encoder::BlockType::Empty, true);
        cx.stmts(&checked.programs[0].body);
        cx.flush_main();
        cx.ins().i32_const(0).return_();
        cx.close();
        cx.ins().i32_const(1).end();
        let (body, marks) = cx.finish();
        let type_index = m.type_index(&[], &[ValType::I32]);
        m.set_function(
            main_index,
            DefinedFn {
                type_index,
                body,
                marks,
                name: "main".into(),
                file: 0,
                export: Some(abi::EXPORT_MAIN.into()),
            },
        );
    }

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
        let (body, marks) = cx.finish();
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
        let (body, marks) = cx.finish();
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
                export: None,
            },
        );
    }

    assemble(m, endpoints)
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
    let pages = u64::from(end.div_ceil(PAGE).max(1));

    let mut functions = FunctionSection::new();
    let mut code = wasm_encoder::CodeSection::new();
    let mut exports = ExportSection::new();
    let mut names = NameMap::new();
    let mut marks = Vec::new();
    let mut fn_names = Vec::new();
    let base = m.import_count();
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
        if !f.name.starts_with("go_async@") && f.name != "main" {
            fn_names.push(f.name.clone());
        }
    }

    let mut types = TypeSection::new();
    for (p, r) in m.types() {
        types.ty().function(p.iter().copied(), r.iter().copied());
    }

    let mut memory = MemorySection::new();
    memory.memory(MemoryType {
        minimum: pages,
        maximum: Some(pages),
        memory64: false,
        shared: false,
        page_size_log2: None,
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
    exports.export(abi::EXPORT_STACK_LEFT, ExportKind::Global, STACK_LEFT_GLOBAL);
    exports.export(abi::EXPORT_CONSTS, ExportKind::Global, 1);
    exports.export(abi::EXPORT_GLOBAL_COUNT, ExportKind::Global, 2);

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
    }
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
                });
            }
        });
    }
    out
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
