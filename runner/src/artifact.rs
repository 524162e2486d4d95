//! Compiling modules: format detection, ABI detection, ahead-of-time compilation, and the
//! isolated compile worker that bounds a hostile module's compile time and memory.

use crate::engine::EngineConfig;
use crate::error::CompileError;
use crate::sandbox::{self, Confinement};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wafer_core::Abi;
use wasmtime::component::Component;
use wasmtime::{Engine, ExternType, Module};

const MAGIC: &[u8; 4] = b"\0asm";
const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0, 1, 0];

/// The environment variable through which the compile worker receives the engine settings.
pub const ENGINE_CONFIG_ENV: &str = "WAFER_COMPILE_ENGINE_CONFIG";

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

/// What the compile worker prints on stdout.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerReport {
    /// Compiled; the code is in the output file.
    Compiled {
        /// The ABI detected.
        abi: Abi,
        /// How far the worker confined itself.
        confinement: Option<Confinement>,
    },
    /// Refused.
    Refused(CompileError),
}

/// A tiny valid module compiled once when a worker starts, so the compiler's code is paged
/// in and its thread pool running before the real job arrives:
/// `(module (func (export "f") (param i32) (result i32) local.get 0 i32.const 1 i32.add))`.
const WARM_UP: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x06, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f,
    0x03, 0x02, 0x01, 0x00, 0x07, 0x05, 0x01, 0x01, 0x66, 0x00, 0x00, 0x0a, 0x09, 0x01, 0x07, 0x00,
    0x20, 0x00, 0x41, 0x01, 0x6a, 0x0b,
];

/// The body of the compile worker process (`wafer __compile`). With `confine`, it first
/// confines itself to that directory ([`sandbox::confine`]). With paths, compiles `input` into
/// `output`; without, warms up and then reads one job (two lines: input path, output path)
/// from stdin, exiting quietly on end of input. Engine settings come from
/// [`ENGINE_CONFIG_ENV`]. Prints a [`WorkerReport`] as JSON; returns the exit code.
pub fn compile_worker_main(paths: Option<(&Path, &Path)>, confine: Option<&Path>) -> i32 {
    // A kernel or container that refuses Landlock leaves the worker unconfined but still
    // bounded (no privileges, no descriptors, no environment, address-space and time limits).
    let confinement = confine.map(|dir| sandbox::confine(dir).unwrap_or(Confinement::None));
    let engine = (|| {
        let cfg: EngineConfig = match std::env::var(ENGINE_CONFIG_ENV) {
            Ok(s) => serde_json::from_str(&s).map_err(|e| CompileError::Internal(e.to_string()))?,
            Err(_) => EngineConfig::default(),
        };
        cfg.build(false)
            .map_err(|e| CompileError::Internal(e.to_string()))
    })();
    let job = match paths {
        Some((i, o)) => (i.to_path_buf(), o.to_path_buf()),
        None => {
            if let Ok(engine) = &engine {
                let _ = Module::new(engine, WARM_UP);
            }
            let mut lines = std::io::stdin().lines();
            match (lines.next(), lines.next()) {
                (Some(Ok(i)), Some(Ok(o))) => (PathBuf::from(i), PathBuf::from(o)),
                _ => return 0,
            }
        }
    };
    let report = engine.and_then(|engine| {
        let bytes = std::fs::read(&job.0).map_err(|e| CompileError::Internal(e.to_string()))?;
        let (abi, code) = compile(&engine, &bytes)?;
        std::fs::write(&job.1, code).map_err(|e| CompileError::Internal(e.to_string()))?;
        Ok(abi)
    });
    let (code, report) = match report {
        Ok(abi) => (0, WorkerReport::Compiled { abi, confinement }),
        Err(e) => (3, WorkerReport::Refused(e)),
    };
    println!(
        "{}",
        serde_json::to_string(&report).expect("report serializes")
    );
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warm_up_module_is_valid() {
        let engine = EngineConfig::default().build(false).unwrap();
        Module::new(&engine, WARM_UP).unwrap();
    }

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
