//! The Wafer runner: the wasmtime engine and nothing about HTTP routing or tenants.
//!
//! A module is compiled once when it is uploaded ([`Runner::compile`]); its compiled code is
//! stored content-addressed by module digest and engine fingerprint, loaded (memory-mapped)
//! after a restart, and kept hot as a pre-linked instance ([`Prepared`]) in a bounded cache.
//! Every invocation gets a fresh store from the pooling allocator, with fuel, an epoch
//! deadline, memory/table limits, a bounded wasm stack and capped output.
//!
//! Layout:
//! - [`engine`]: the wasmtime `Engine` (pooling allocator, proposals, epoch thread) and its
//!   fingerprint.
//! - [`compile`]: header and ABI detection, the pre-compile screen, what one instance needs,
//!   and compilation in an isolated, confined `wafer __compile` child.
//! - `runner`: [`Runner`], the hot cache of pre-linked code, `prepare` and `invoke`.
//! - [`abi`]: one module per ABI (HTTP components, commands), linked with all of WASI and
//!   granting nothing; [`limits`] (fuel, memory, tables, deadline) and [`output`] (capped
//!   stdio) applied to every store; [`pool`]: the low-priority runtime guests run on.
//! - [`error`]: compile and invocation errors, each naming its precise cause.

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
