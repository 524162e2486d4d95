//! The Wafer runner: the wasmtime engine and nothing about HTTP routing or tenants.
//!
//! A module is compiled once when it is uploaded ([`Runner::compile`]); its compiled code is
//! stored content-addressed by module digest and engine fingerprint, loaded (memory-mapped)
//! after a restart, and kept hot as a pre-linked instance ([`Prepared`]) in a bounded cache.
//! Every invocation gets a fresh store from the pooling allocator, with fuel, an epoch
//! deadline, memory/table limits, a bounded wasm stack and capped output.

pub mod abi;
pub mod artifact;
pub mod compiler;
pub mod engine;
pub mod error;
pub mod limits;
pub mod output;
pub mod pool;
pub mod requirements;
mod runner;
pub mod sandbox;
pub mod screen;

pub use abi::{Input, Output};
pub use artifact::{CompileMode, compile_worker_main};
pub use engine::EngineConfig;
pub use error::{CompileError, InvokeError, TrapKind};
pub use limits::Limits;
pub use requirements::Requirements;
pub use runner::{Compiled, Invocation, Outcome, Prepared, Runner, RunnerConfig};
