//! The runner's errors: what went wrong compiling a module or running an invocation, with
//! what a user needs to fix it (the limit that was hit, the export that is missing).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Why an uploaded module was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CompileError {
    /// The upload had no bytes.
    #[error("the module is empty")]
    Empty,
    /// The bytes do not start with the WebAssembly magic number.
    #[error("not a WebAssembly module: the file does not start with \"\\0asm\"")]
    NotWasm,
    /// A binary format version Wafer does not run.
    #[error("unsupported WebAssembly binary version {0:#x}")]
    UnsupportedVersion(u32),
    /// The module failed validation (truncated, malformed, or uses unsupported features).
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    /// Neither an HTTP handler nor a command entry point is exported.
    #[error("{0}")]
    UnsupportedAbi(String),
    /// The module imports something the runner does not provide.
    #[error("unsupported import: {0}")]
    UnsupportedImport(String),
    /// Instantiating it would take more than an instance slot holds or any function may have.
    #[error("the module exceeds the instance limits: {0}")]
    Limits(String),
    /// A shape known to take minutes or gigabytes to compile, refused before compiling.
    #[error("the module is too costly to compile: {0}")]
    TooComplex(String),
    /// Compilation took longer than allowed.
    #[error("compilation exceeded the time limit of {0} ms")]
    Timeout(u64),
    /// Compilation used more memory than allowed (or was killed).
    #[error("compilation exceeded its resource limits ({0})")]
    Resources(String),
    /// Something failed on the host side.
    #[error("internal compile failure: {0}")]
    Internal(String),
}

/// The kind of trap a guest hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The fuel budget ran out.
    FuelExhausted,
    /// An `unreachable` instruction ran (Rust panics and aborts end here).
    Unreachable,
    /// The wasm stack exceeded its bound.
    StackOverflow,
    /// An out-of-bounds memory access.
    MemoryOutOfBounds,
    /// Integer division by zero or overflow, bad float conversion.
    Arithmetic,
    /// Any other trap.
    Other,
}

impl TrapKind {
    /// A stable slug for problem types and metric labels.
    pub fn slug(self) -> &'static str {
        match self {
            TrapKind::FuelExhausted => "fuel-exhausted",
            TrapKind::Unreachable => "unreachable",
            TrapKind::StackOverflow => "stack-overflow",
            TrapKind::MemoryOutOfBounds => "memory-out-of-bounds",
            TrapKind::Arithmetic => "arithmetic",
            TrapKind::Other => "trap",
        }
    }
}

/// Why an invocation did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The guest trapped.
    #[error("the function trapped: {message}")]
    Trap { kind: TrapKind, message: String },
    /// The wall-clock deadline passed.
    #[error("the function did not finish within its timeout of {} ms", .0.as_millis())]
    Timeout(Duration),
    /// A memory grew past the function's memory limit.
    #[error(
        "the function exceeded its memory limit of {limit} bytes for all its memories and tables together (they would have reached {desired})"
    )]
    MemoryLimit { limit: usize, desired: usize },
    /// A table grew past its limit.
    #[error("the function exceeded its table limit of {limit} elements (tried {desired})")]
    TableLimit { limit: usize, desired: usize },
    /// The guest wrote more output than allowed.
    #[error("the function's {stream} exceeded the limit of {limit} bytes")]
    OutputLimit { stream: &'static str, limit: usize },
    /// A command exited with a non-zero status.
    #[error("the function exited with status {code}")]
    Exit { code: i32, stderr: String },
    /// An HTTP function returned without setting a response.
    #[error("the function returned no HTTP response")]
    NoResponse,
    /// An HTTP function answered with an error code of its own.
    #[error("the function failed its response: {0}")]
    GuestHttpError(String),
    /// All instance slots are busy.
    #[error("no free instance slot; try again shortly")]
    Capacity,
    /// The compiled code is missing or cannot be used.
    #[error("compiled artifact unavailable: {0}")]
    Artifact(String),
    /// Something failed on the host side.
    #[error("internal error: {0}")]
    Internal(String),
    /// A failure of a guest that had written to stderr first (a trap, a limit, the
    /// timeout): the failure and the tail of what it wrote, which is its owner's to read.
    #[error("{error}")]
    Logged {
        error: Box<InvokeError>,
        stderr: String,
    },
}

impl InvokeError {
    /// `self`, carrying the tail of what the guest wrote to `stderr` when there is any.
    pub fn with_log(self, stderr: &[u8]) -> Self {
        if stderr.is_empty() || matches!(self, InvokeError::Exit { .. }) {
            return self;
        }
        InvokeError::Logged {
            error: Box::new(self),
            stderr: String::from_utf8_lossy(stderr).into_owned(),
        }
    }

    /// What the guest wrote to stderr before it failed ("" when nothing, or not kept).
    pub fn stderr(&self) -> &str {
        match self {
            InvokeError::Exit { stderr, .. } | InvokeError::Logged { stderr, .. } => stderr,
            _ => "",
        }
    }

    /// Takes what the guest wrote to stderr out of the error, for a caller who may not see
    /// it.
    pub fn take_stderr(&mut self) -> String {
        match self {
            InvokeError::Exit { stderr, .. } | InvokeError::Logged { stderr, .. } => {
                std::mem::take(stderr)
            }
            _ => String::new(),
        }
    }

    /// The failure itself, without the log it may carry.
    pub fn cause(&self) -> &InvokeError {
        match self {
            InvokeError::Logged { error, .. } => error.cause(),
            e => e,
        }
    }
}
