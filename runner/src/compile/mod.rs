//! The compile side of the runner: format and ABI detection and ahead-of-time compilation
//! (this file), what a module needs before it is compiled (`requirements`, `screen`), and the
//! isolated worker that bounds a hostile module's compile time, memory and reach (`isolated`
//! on the server side, `worker` inside the worker process, `sandbox` for its confinement).

pub mod isolated;
pub mod requirements;
pub mod sandbox;
pub mod screen;
pub mod worker;

use crate::error::CompileError;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;
use wafer_core::Abi;
use wasmtime::component::Component;
use wasmtime::{Engine, ExternType, Module};

const MAGIC: &[u8; 4] = b"\0asm";
const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0, 1, 0];

/// What kind of binary an upload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    /// A core WebAssembly module (WASI preview 1).
    Module,
    /// A component (WASI preview 2).
    Component,
}

/// Looks at the header only: empty, not wasm, or which binary kind.
pub fn detect(bytes: &[u8]) -> Result<BinaryKind, CompileError> {
    if bytes.is_empty() {
        return Err(CompileError::Empty);
    }
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(if bytes.len() < 8 && MAGIC.starts_with(bytes) {
            CompileError::Invalid("truncated header".into())
        } else {
            CompileError::NotWasm
        });
    }
    let version: [u8; 4] = bytes[4..8].try_into().expect("4 bytes");
    match version {
        CORE_VERSION => Ok(BinaryKind::Module),
        COMPONENT_VERSION => Ok(BinaryKind::Component),
        v => Err(CompileError::UnsupportedVersion(u32::from_le_bytes(v))),
    }
}

fn invalid(e: wasmtime::Error) -> CompileError {
    // The full chain carries the validator's message and offset.
    CompileError::Invalid(format!("{e:#}"))
}

/// Compiles `bytes` for `engine`, detects its ABI and returns the serialized code.
pub fn compile(engine: &Engine, bytes: &[u8]) -> Result<(Abi, Vec<u8>), CompileError> {
    match detect(bytes)? {
        BinaryKind::Module => {
            let module = Module::new(engine, bytes).map_err(invalid)?;
            for import in module.imports() {
                if import.module() != "wasi_snapshot_preview1" {
                    return Err(CompileError::UnsupportedImport(format!(
                        "{}::{} (a core module may only import wasi_snapshot_preview1)",
                        import.module(),
                        import.name()
                    )));
                }
            }
            check_command_exports(&module)?;
            let code = module
                .serialize()
                .map_err(|e| CompileError::Internal(e.to_string()))?;
            Ok((Abi::Command, code))
        }
        BinaryKind::Component => {
            let component = Component::new(engine, bytes).map_err(invalid)?;
            let abi = component_abi(engine, &component)?;
            let code = component
                .serialize()
                .map_err(|e| CompileError::Internal(e.to_string()))?;
            Ok((abi, code))
        }
    }
}

/// A WASI command exports `_start: func()` and, if it exports `memory`, a memory: checked by
/// kind and type, not by name alone.
fn check_command_exports(module: &Module) -> Result<(), CompileError> {
    let kind = |t: &ExternType| match t {
        ExternType::Func(_) => "a function of another type",
        ExternType::Global(_) => "a global",
        ExternType::Table(_) => "a table",
        ExternType::Memory(_) => "a memory",
        ExternType::Tag(_) => "a tag",
    };
    match module.get_export("_start") {
        None => {
            return Err(CompileError::UnsupportedAbi(
                "the module exports no `_start` function: build it as a WASI command \
                 (e.g. a Rust `bin` for wasm32-wasip1)"
                    .into(),
            ));
        }
        Some(ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0 => {}
        Some(other) => {
            return Err(CompileError::UnsupportedAbi(format!(
                "`_start` must be a function taking and returning nothing; the module exports \
                 it as {}",
                kind(&other)
            )));
        }
    }
    match module.get_export("memory") {
        None | Some(ExternType::Memory(_)) => Ok(()),
        Some(other) => Err(CompileError::UnsupportedAbi(format!(
            "`memory` must be a memory; the module exports it as {}",
            kind(&other)
        ))),
    }
}

/// An HTTP handler wins over a command entry point when a component exports both.
fn component_abi(engine: &Engine, component: &Component) -> Result<Abi, CompileError> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
    if has("wasi:http/incoming-handler@0.2") {
        Ok(Abi::Http)
    } else if has("wasi:cli/run@0.2") {
        Ok(Abi::Command)
    } else {
        Err(CompileError::UnsupportedAbi(format!(
            "the component exports neither `wasi:http/incoming-handler@0.2.x` nor \
             `wasi:cli/run@0.2.x` (it exports: {})",
            if names.is_empty() {
                "nothing".to_string()
            } else {
                names.join(", ")
            }
        )))
    }
}

/// Where compilation happens.
#[derive(Debug, Clone)]
pub enum CompileMode {
    /// In this process, on a blocking thread. For tests and tools; a hostile module can take
    /// as long and as much memory as it likes here.
    InProcess,
    /// In a child process (`program args… <module> <output>`) killed at the time limit and
    /// run under an address-space limit, so no upload can stall or exhaust the server.
    Worker {
        program: PathBuf,
        args: Vec<OsString>,
        timeout: Duration,
        memory_bytes: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_headers() {
        assert_eq!(detect(b""), Err(CompileError::Empty));
        assert_eq!(detect(b"hello world"), Err(CompileError::NotWasm));
        assert!(matches!(detect(b"\0as"), Err(CompileError::Invalid(_))));
        assert_eq!(detect(b"\0asm\x01\0\0\0").unwrap(), BinaryKind::Module);
        assert_eq!(detect(b"\0asm\x0d\0\x01\0").unwrap(), BinaryKind::Component);
        assert!(matches!(
            detect(b"\0asm\x02\0\0\0"),
            Err(CompileError::UnsupportedVersion(2))
        ));
    }
}
