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
