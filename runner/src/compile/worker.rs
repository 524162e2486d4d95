//! The body of the compile worker process (`wafer __compile`): confine itself, build the
//! engine, warm up, take one job, compile it and report.

use super::sandbox::{self, Confinement};
use crate::engine::EngineConfig;
use crate::error::CompileError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use wafer_core::Abi;
use wasmtime::Module;

/// The environment variable through which the compile worker receives the engine settings.
pub const ENGINE_CONFIG_ENV: &str = "WAFER_COMPILE_ENGINE_CONFIG";

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
        let (abi, code) = super::compile(&engine, &bytes)?;
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
}
