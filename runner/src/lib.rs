//! The Wafer runner: the wasmtime engine and nothing about HTTP routing or tenants.
//!
//! A module is compiled once when it is uploaded ([`Runner::compile`]); its compiled code is
//! stored content-addressed by module digest and engine fingerprint, loaded (memory-mapped)
//! after a restart, and kept hot as a pre-linked instance ([`Prepared`]) in a bounded cache.
//! Every invocation gets a fresh store from the pooling allocator, with fuel, an epoch
//! deadline, memory/table limits, a bounded wasm stack and capped output.

pub mod abi;
pub mod compile;
pub mod engine;
pub mod error;
pub mod limits;
pub mod output;
pub mod pool;
mod runner;

pub use abi::{Input, Output};
pub use compile::CompileMode;
pub use compile::requirements::Requirements;
pub use compile::worker::compile_worker_main;
pub use engine::EngineConfig;
pub use error::{CompileError, InvokeError, TrapKind};
pub use limits::Limits;
pub use runner::{Compiled, Invocation, Outcome, Prepared, Runner, RunnerConfig};
