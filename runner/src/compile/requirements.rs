//! What instantiating a module or component takes, read from its binary before compiling:
//! core instances, linear memories and tables, and their initial sizes. An upload that needs
//! more than an instance slot holds, or more memory at start than any function may have, is
//! refused at upload instead of failing on every call; a version whose memory limit is below
//! what its module needs at start is refused when it is created.
//!
//! Components are walked with their index spaces: instantiating a component costs what each of
//! its core-instance and component-instance definitions costs, recursively. Anything the walk
//! cannot resolve (imported modules or components, an index it did not track) makes the whole
//! count unknown, and unknown is never a reason to refuse.

use crate::limits::TABLE_ELEMENT_BYTES;
use serde::{Deserialize, Serialize};
use wasmparser::{
    ComponentAlias, ComponentExternalKind, ComponentOuterAliasKind, ComponentTypeRef, Instance,
    Parser, Payload,
};

/// What one instantiation takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// Core instances created.
    pub core_instances: u64,
    /// Linear memories defined (imported ones are another instance's).
    pub memories: u64,
    /// Tables defined.
    pub tables: u64,
    /// Bytes of memory and table the instance holds before running any code: the least a
    /// version's memory limit must allow.
    pub initial_bytes: u64,
}

impl Requirements {
    fn add(self, o: Requirements) -> Requirements {
        Requirements {
            core_instances: self.core_instances.saturating_add(o.core_instances),
            memories: self.memories.saturating_add(o.memories),
            tables: self.tables.saturating_add(o.tables),
            initial_bytes: self.initial_bytes.saturating_add(o.initial_bytes),
        }
    }
}

/// Bytes of a memory's initial size.
fn memory_bytes(m: &wasmparser::MemoryType) -> u64 {
    m.initial
        .saturating_mul(1u64 << m.page_size_log2.unwrap_or(16).min(32))
}

/// One item being walked: a core module or a component.
struct Frame {
    /// A core module (else a component).
    is_module: bool,
    /// What instantiating this item takes (None: unknown).
    cost: Option<Requirements>,
    /// Core module index space: the cost of instantiating each (components only).
    modules: Vec<Option<Requirements>>,
    /// Component index space: the cost of instantiating each.
    components: Vec<Option<Requirements>>,
}

impl Frame {
    fn new(is_module: bool) -> Self {
        Self {
            is_module,
            cost: Some(Requirements {
                core_instances: u64::from(is_module),
                ..Requirements::default()
            }),
            modules: Vec::new(),
            components: Vec::new(),
        }
    }

    fn add(&mut self, cost: Option<Requirements>) {
        self.cost = match (self.cost, cost) {
            (Some(a), Some(b)) => Some(a.add(b)),
            _ => None,
        };
    }
}

fn lookup(space: &[Option<Requirements>], index: u32) -> Option<Requirements> {
    space.get(index as usize).copied().flatten()
}

/// What instantiating `bytes` takes, or None when it cannot be told (or the binary does not
/// parse: validation reports that precisely elsewhere).
pub fn of(bytes: &[u8]) -> Option<Requirements> {
    let mut stack: Vec<Frame> = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.ok()?;
        match payload {
            Payload::Version { encoding, .. } if stack.is_empty() => {
                stack.push(Frame::new(matches!(encoding, wasmparser::Encoding::Module)));
            }
            Payload::ModuleSection { .. } => stack.push(Frame::new(true)),
            Payload::ComponentSection { .. } => stack.push(Frame::new(false)),
            Payload::End(_) => {
                let done = stack.pop()?;
                let Some(parent) = stack.last_mut() else {
                    return done.cost;
                };
                if done.is_module {
                    parent.modules.push(done.cost);
                } else {
                    parent.components.push(done.cost);
                }
            }
            Payload::MemorySection(reader) => {
                let frame = stack.last_mut()?;
                for memory in reader {
                    let bytes = memory_bytes(&memory.ok()?);
                    frame.add(Some(Requirements {
                        memories: 1,
                        initial_bytes: bytes,
                        ..Requirements::default()
                    }));
                }
            }
            Payload::TableSection(reader) => {
                let frame = stack.last_mut()?;
                for table in reader {
                    let elements = table.ok()?.ty.initial;
                    frame.add(Some(Requirements {
                        tables: 1,
                        initial_bytes: elements.saturating_mul(TABLE_ELEMENT_BYTES as u64),
                        ..Requirements::default()
                    }));
                }
            }
            Payload::InstanceSection(reader) => {
                let frame = stack.last_mut()?;
                for instance in reader {
                    if let Instance::Instantiate { module_index, .. } = instance.ok()? {
                        let cost = lookup(&frame.modules, module_index);
                        frame.add(cost);
                    }
                }
            }
            Payload::ComponentInstanceSection(reader) => {
                let frame = stack.last_mut()?;
                for instance in reader {
                    if let wasmparser::ComponentInstance::Instantiate {
                        component_index, ..
                    } = instance.ok()?
                    {
                        let cost = lookup(&frame.components, component_index);
                        frame.add(cost);
                    }
                }
            }
            Payload::ComponentImportSection(reader) => {
                let frame = stack.last_mut()?;
                for import in reader {
                    match import.ok()?.ty {
                        ComponentTypeRef::Module(_) => frame.modules.push(None),
                        ComponentTypeRef::Component(_) => frame.components.push(None),
                        _ => {}
                    }
                }
            }
            Payload::ComponentAliasSection(reader) => {
                for alias in reader {
                    let (is_module, cost) = match alias.ok()? {
                        ComponentAlias::InstanceExport { kind, .. } => match kind {
                            ComponentExternalKind::Module => (true, None),
                            ComponentExternalKind::Component => (false, None),
                            _ => continue,
                        },
                        ComponentAlias::Outer { kind, count, index } => {
                            let outer = stack.len().checked_sub(1 + count as usize)?;
                            match kind {
                                ComponentOuterAliasKind::CoreModule => {
                                    (true, lookup(&stack[outer].modules, index))
                                }
                                ComponentOuterAliasKind::Component => {
                                    (false, lookup(&stack[outer].components, index))
                                }
                                _ => continue,
                            }
                        }
                        ComponentAlias::CoreInstanceExport { .. } => continue,
                    };
                    let frame = stack.last_mut()?;
                    if is_module {
                        frame.modules.push(cost);
                    } else {
                        frame.components.push(cost);
                    }
                }
            }
            Payload::ComponentExportSection(reader) => {
                let frame = stack.last_mut()?;
                for export in reader {
                    let export = export.ok()?;
                    // An export binds a new index to the exported item.
                    match export.kind {
                        ComponentExternalKind::Module => {
                            let cost = lookup(&frame.modules, export.index);
                            frame.modules.push(cost);
                        }
                        ComponentExternalKind::Component => {
                            let cost = lookup(&frame.components, export.index);
                            frame.components.push(cost);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(module)` instantiated `n` times inside a component.
    fn component_instantiating(n: usize) -> Vec<u8> {
        let mut c = wasm_encoder::Component::new();
        c.section(&wasm_encoder::ModuleSection(&wasm_encoder::Module::new()));
        let mut instances = wasm_encoder::InstanceSection::new();
        for _ in 0..n {
            instances.instantiate(0, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
        }
        c.section(&instances);
        c.finish()
    }

    fn core_instances(bytes: &[u8]) -> Option<u64> {
        of(bytes).map(|r| r.core_instances)
    }

    /// A module with one memory of `pages` pages and one table of `elements` elements.
    fn module_with(pages: u64, elements: u64) -> wasm_encoder::Module {
        let mut m = wasm_encoder::Module::new();
        let mut tables = wasm_encoder::TableSection::new();
        tables.table(wasm_encoder::TableType {
            element_type: wasm_encoder::RefType::FUNCREF,
            table64: false,
            minimum: elements,
            maximum: None,
            shared: false,
        });
        m.section(&tables);
        let mut memories = wasm_encoder::MemorySection::new();
        memories.memory(wasm_encoder::MemoryType {
            minimum: pages,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        m.section(&memories);
        m
    }

    #[test]
    fn a_core_module_is_one_instance_with_its_memories_and_tables() {
        assert_eq!(
            core_instances(&wasm_encoder::Module::new().finish()),
            Some(1)
        );
        let r = of(&module_with(3, 100).finish()).unwrap();
        assert_eq!(
            r,
            Requirements {
                core_instances: 1,
                memories: 1,
                tables: 1,
                initial_bytes: 3 * 65536 + 100 * TABLE_ELEMENT_BYTES as u64,
            }
        );
    }

    #[test]
    fn components_count_each_instantiation() {
        assert_eq!(core_instances(&component_instantiating(0)), Some(0));
        assert_eq!(core_instances(&component_instantiating(8)), Some(8));
        let mut c = wasm_encoder::Component::new();
        c.section(&wasm_encoder::ModuleSection(&module_with(2, 0)));
        let mut instances = wasm_encoder::InstanceSection::new();
        for _ in 0..5 {
            instances.instantiate(0, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
        }
        c.section(&instances);
        let r = of(&c.finish()).unwrap();
        assert_eq!((r.core_instances, r.memories, r.tables), (5, 5, 5));
        assert_eq!(r.initial_bytes, 5 * 2 * 65536);
    }

    #[test]
    fn an_imported_module_makes_the_count_unknown() {
        let mut c = wasm_encoder::Component::new();
        let mut types = wasm_encoder::CoreTypeSection::new();
        types.ty().module(&wasm_encoder::ModuleType::new());
        c.section(&types);
        let mut imports = wasm_encoder::ComponentImportSection::new();
        imports.import("m", wasm_encoder::ComponentTypeRef::Module(0));
        c.section(&imports);
        let mut instances = wasm_encoder::InstanceSection::new();
        instances.instantiate(0, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
        c.section(&instances);
        assert_eq!(of(&c.finish()), None);
    }

    #[test]
    fn nested_components_count_once_per_instantiation() {
        let mut inner = wasm_encoder::Component::new();
        inner.section(&wasm_encoder::ModuleSection(&wasm_encoder::Module::new()));
        let mut three = wasm_encoder::InstanceSection::new();
        for _ in 0..3 {
            three.instantiate(0, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
        }
        inner.section(&three);
        let mut outer = wasm_encoder::Component::new();
        outer.section(&wasm_encoder::NestedComponentSection(&inner));
        let mut instances = wasm_encoder::ComponentInstanceSection::new();
        instances.instantiate(
            0,
            Vec::<(&str, wasm_encoder::ComponentExportKind, u32)>::new(),
        );
        instances.instantiate(
            0,
            Vec::<(&str, wasm_encoder::ComponentExportKind, u32)>::new(),
        );
        outer.section(&instances);
        assert_eq!(core_instances(&outer.finish()), Some(6));
    }

    #[test]
    fn garbage_is_unknown() {
        assert_eq!(core_instances(b"\0asm\x0d\0\x01\0\x99"), None);
    }
}
