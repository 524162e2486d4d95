//! Modules and components built in the test itself, for shapes no toolchain emits on request
//! (several memories in one component, instance counts past a limit).

use wasm_encoder::{
    CanonicalFunctionSection, CodeSection, Component, ComponentAliasSection, ComponentExportKind,
    ComponentExportSection, ComponentInstanceSection, ComponentTypeSection, ComponentValType,
    ExportKind, ExportSection, Function, FunctionSection, ImportSection, InstanceSection,
    Instruction as I, MemArg, MemorySection, MemoryType, Module, ModuleArg, ModuleSection,
    TypeSection, ValType,
};

/// A core module with one empty memory and `fill(pages) -> i32`: grows the memory by `pages`
/// and writes a byte into every 4 KiB of it, so the memory is really resident.
fn memory_holder() -> Module {
    let mut m = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    m.section(&types);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    m.section(&funcs);
    let mut mems = MemorySection::new();
    mems.memory(MemoryType {
        minimum: 0,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    m.section(&mems);
    let mut exports = ExportSection::new();
    exports.export("fill", ExportKind::Func, 0);
    m.section(&exports);
    // Locals: 1 = address, 2 = end.
    let mut f = Function::new([(2, ValType::I32)]);
    let store = MemArg {
        offset: 0,
        align: 0,
        memory_index: 0,
    };
    f.instructions()
        .local_get(0)
        .memory_grow(0)
        .drop()
        .local_get(0)
        .i32_const(16)
        .i32_shl()
        .local_set(2)
        .block(wasm_encoder::BlockType::Empty)
        .loop_(wasm_encoder::BlockType::Empty)
        .local_get(1)
        .local_get(2)
        .i32_ge_u()
        .br_if(1)
        .local_get(1)
        .i32_const(1)
        .i32_store8(store)
        .local_get(1)
        .i32_const(4096)
        .i32_add()
        .local_set(1)
        .br(0)
        .end()
        .end()
        .i32_const(0)
        .end();
    let mut code = CodeSection::new();
    code.function(&f);
    m.section(&code);
    m
}

/// A core module importing `m.f0 … m.f{n-1}` and exporting `run() -> i32`, which calls each
/// with `pages`, then spins forever when `spin` (to hold its memory until the deadline).
fn driver(n: u32, pages: i32, spin: bool) -> Module {
    let mut m = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    types.ty().function([], [ValType::I32]);
    m.section(&types);
    let mut imports = ImportSection::new();
    for i in 0..n {
        imports.import("m", &format!("f{i}"), wasm_encoder::EntityType::Function(0));
    }
    m.section(&imports);
    let mut funcs = FunctionSection::new();
    funcs.function(1);
    m.section(&funcs);
    let mut exports = ExportSection::new();
    exports.export("run", ExportKind::Func, n);
    m.section(&exports);
    let mut f = Function::new([]);
    for i in 0..n {
        f.instruction(&I::I32Const(pages))
            .instruction(&I::Call(i))
            .instruction(&I::Drop);
    }
    if spin {
        f.instruction(&I::Loop(wasm_encoder::BlockType::Empty))
            .instruction(&I::Br(0))
            .instruction(&I::End);
    }
    f.instruction(&I::I32Const(0)).instruction(&I::End);
    let mut code = CodeSection::new();
    code.function(&f);
    m.section(&code);
    m
}

/// A WASI command component (it exports `wasi:cli/run@0.2.0`) that instantiates a memory
/// holder `memories` times, fills each with `pages` 64 KiB pages and then returns success, or
/// spins when `spin`. It imports nothing.
pub fn memory_component(memories: u32, pages: i32, spin: bool) -> Vec<u8> {
    let mut c = Component::new();
    c.section(&ModuleSection(&memory_holder()));
    c.section(&ModuleSection(&driver(memories, pages, spin)));
    // Core instances 0..memories: the holders.
    let mut inst = InstanceSection::new();
    for _ in 0..memories {
        inst.instantiate(0, Vec::<(&str, ModuleArg)>::new());
    }
    c.section(&inst);
    // Core funcs 0..memories: each holder's `fill`.
    let mut aliases = ComponentAliasSection::new();
    for i in 0..memories {
        aliases.alias(wasm_encoder::Alias::CoreInstanceExport {
            instance: i,
            kind: ExportKind::Func,
            name: "fill",
        });
    }
    c.section(&aliases);
    // Core instance `memories`: the fills bundled as `m`; `memories + 1`: the driver.
    let names: Vec<String> = (0..memories).map(|i| format!("f{i}")).collect();
    let mut inst = InstanceSection::new();
    inst.export_items(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), ExportKind::Func, i as u32)),
    );
    inst.instantiate(1, [("m", ModuleArg::Instance(memories))]);
    c.section(&inst);
    // Core func `memories`: the driver's `run`.
    let mut aliases = ComponentAliasSection::new();
    aliases.alias(wasm_encoder::Alias::CoreInstanceExport {
        instance: memories + 1,
        kind: ExportKind::Func,
        name: "run",
    });
    c.section(&aliases);
    // Type 0: result; type 1: func() -> result.
    let mut types = ComponentTypeSection::new();
    types.defined_type().result(None, None);
    types
        .function()
        .params(Vec::<(&str, ComponentValType)>::new())
        .result(Some(ComponentValType::Type(0)));
    c.section(&types);
    let mut canon = CanonicalFunctionSection::new();
    canon.lift(memories, 1, []);
    c.section(&canon);
    let mut inst = ComponentInstanceSection::new();
    inst.export_items([("run", ComponentExportKind::Func, 0)]);
    c.section(&inst);
    let mut exports = ComponentExportSection::new();
    exports.export("wasi:cli/run@0.2.0", ComponentExportKind::Instance, 0, None);
    c.section(&exports);
    c.finish()
}

/// A command component that exports `wasi:cli/run@0.2.0` as an instance whose only function,
/// `run: func() -> result`, is named `name` (anything but `run` is the wrong shape). It does
/// nothing and succeeds.
pub fn command_component_exporting(name: &str) -> Vec<u8> {
    let mut m = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]);
    m.section(&types);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    m.section(&funcs);
    let mut exports = ExportSection::new();
    exports.export("run", ExportKind::Func, 0);
    m.section(&exports);
    let mut code = CodeSection::new();
    let mut f = Function::new([]);
    f.instruction(&I::I32Const(0)).instruction(&I::End);
    code.function(&f);
    m.section(&code);

    let mut c = Component::new();
    c.section(&ModuleSection(&m));
    let mut inst = InstanceSection::new();
    inst.instantiate(0, Vec::<(&str, ModuleArg)>::new());
    c.section(&inst);
    let mut aliases = ComponentAliasSection::new();
    aliases.alias(wasm_encoder::Alias::CoreInstanceExport {
        instance: 0,
        kind: ExportKind::Func,
        name: "run",
    });
    c.section(&aliases);
    let mut types = ComponentTypeSection::new();
    types.defined_type().result(None, None);
    types
        .function()
        .params(Vec::<(&str, ComponentValType)>::new())
        .result(Some(ComponentValType::Type(0)));
    c.section(&types);
    let mut canon = CanonicalFunctionSection::new();
    canon.lift(0, 1, []);
    c.section(&canon);
    let mut inst = ComponentInstanceSection::new();
    inst.export_items([(name, ComponentExportKind::Func, 0)]);
    c.section(&inst);
    let mut exports = ComponentExportSection::new();
    exports.export("wasi:cli/run@0.2.0", ComponentExportKind::Instance, 0, None);
    c.section(&exports);
    c.finish()
}

/// A command module whose `_start` body is `body`, with `locals` i64 locals.
pub fn start_module(locals: u32, body: impl FnOnce(&mut Function)) -> Vec<u8> {
    command_module(None, None, locals, body)
}

/// A command module with, optionally, one memory of `pages` pages and one funcref table of
/// `elements` elements, whose `_start` body is `body` with `locals` i64 locals.
pub fn command_module(
    pages: Option<u64>,
    elements: Option<u64>,
    locals: u32,
    body: impl FnOnce(&mut Function),
) -> Vec<u8> {
    let mut m = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([], []);
    m.section(&types);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    m.section(&funcs);
    if let Some(minimum) = elements {
        let mut tables = wasm_encoder::TableSection::new();
        tables.table(wasm_encoder::TableType {
            element_type: wasm_encoder::RefType::FUNCREF,
            table64: false,
            minimum,
            maximum: None,
            shared: false,
        });
        m.section(&tables);
    }
    if let Some(minimum) = pages {
        let mut mems = MemorySection::new();
        mems.memory(MemoryType {
            minimum,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        m.section(&mems);
    }
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 0);
    m.section(&exports);
    let mut f = Function::new([(locals, ValType::I64)]);
    body(&mut f);
    f.instruction(&I::End);
    let mut code = CodeSection::new();
    code.function(&f);
    m.section(&code);
    m.finish()
}

/// Compile bombs: small modules that are expensive to compile, by shape.
pub mod bombs {
    use super::*;

    /// Many locals, each read and written in a long chain: register-allocation pressure.
    pub fn live_locals(locals: u32, rounds: u32) -> Vec<u8> {
        start_module(locals, |f| {
            for r in 0..rounds {
                for i in 0..locals - 1 {
                    let (a, b) = ((i + r) % locals, (i * 7 + r + 1) % locals);
                    f.instruction(&I::LocalGet(a))
                        .instruction(&I::LocalGet(b))
                        .instruction(&I::I64Add)
                        .instruction(&I::LocalSet(a));
                }
            }
        })
    }

    /// `values` constants left on the operand stack, then added together: all of them are
    /// live at once.
    pub fn deep_stack(values: u32) -> Vec<u8> {
        start_module(1, |f| {
            for i in 0..values {
                f.instruction(&I::I64Const(i64::from(i)));
            }
            for _ in 1..values {
                f.instruction(&I::I64Add);
            }
            f.instruction(&I::LocalSet(0));
        })
    }

    /// `branches` if/else diamonds, each reading two of `locals` locals and writing a third,
    /// so many values stay live across many blocks.
    pub fn diamonds(locals: u32, branches: u32) -> Vec<u8> {
        start_module(locals, |f| {
            for b in 0..branches {
                let (x, y, z) = (b % locals, (b * 7 + 3) % locals, (b * 13 + 5) % locals);
                f.instruction(&I::LocalGet(x))
                    .instruction(&I::I64Eqz)
                    .instruction(&I::If(wasm_encoder::BlockType::Result(ValType::I64)))
                    .instruction(&I::LocalGet(y))
                    .instruction(&I::Else)
                    .instruction(&I::LocalGet(z))
                    .instruction(&I::End)
                    .instruction(&I::LocalGet(x))
                    .instruction(&I::I64Add)
                    .instruction(&I::LocalSet(z));
            }
        })
    }

    /// Blocks nested `depth` deep.
    pub fn nested_blocks(depth: u32) -> Vec<u8> {
        start_module(0, |f| {
            for _ in 0..depth {
                f.instruction(&I::Block(wasm_encoder::BlockType::Empty));
            }
            for _ in 0..depth {
                f.instruction(&I::End);
            }
        })
    }

    /// `count` br_tables of `targets` entries inside `depth` blocks.
    pub fn br_tables(depth: u32, targets: u32, count: u32) -> Vec<u8> {
        start_module(0, |f| {
            for _ in 0..depth {
                f.instruction(&I::Block(wasm_encoder::BlockType::Empty));
            }
            let labels: Vec<u32> = (0..targets).map(|i| i % depth).collect();
            for _ in 0..count {
                // Reachable each time: the table sits in a block of its own.
                f.instruction(&I::Block(wasm_encoder::BlockType::Empty))
                    .instruction(&I::I32Const(0))
                    .instruction(&I::BrTable(labels.iter().map(|l| l + 1).collect(), 0))
                    .instruction(&I::End);
            }
            for _ in 0..depth {
                f.instruction(&I::End);
            }
        })
    }
}
