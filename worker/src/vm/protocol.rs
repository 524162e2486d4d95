//! What the host and the guest agent say to each other: JSON lines on the virtio-serial port
//! [`PORT_NAME`]. The agent first writes [`Ready`], then answers each [`Request`] with
//! [`Answer`]s: a run is answered `started` once the module is compiled and the job starts
//! (the host then gives the guest the job's timeout and a short grace, no more), then `end`.
//! Both sides read and write these types, so the two halves cannot drift.

use crate::order::WorkOrder;
use serde::{Deserialize, Serialize};
use wafer_core::JobEnd;
use wafer_runner::EngineConfig;

/// The name the host gives the agent's virtio-serial port (`virtserialport,name=wafer.0`).
pub const PORT_NAME: &str = "wafer.0";

/// The agent's first line: it is ready for requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    /// Always `ready`.
    pub agent: String,
    /// The guest kernel's release.
    pub kernel: String,
    /// Time since the guest kernel started, ms.
    pub boot_ms: u64,
}

/// A request of the host's.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Run a job.
    Run(Box<RunRequest>),
    /// Say `pong`.
    Ping,
    /// Power the VM off.
    Poweroff,
}

/// A job to run: the order, the module (the guest compiles it: its CPU, qemu's, need not have
/// the host's features) and the input.
#[derive(Serialize, Deserialize)]
pub struct RunRequest {
    /// The work order.
    pub order: WorkOrder,
    /// The module's bytes, base64.
    pub module_base64: String,
    /// The input, base64.
    #[serde(default)]
    pub input_base64: String,
    /// The server's engine settings (memory ceiling, stack...); the defaults otherwise.
    #[serde(default)]
    pub engine: Option<EngineConfig>,
    /// The module's compiled code from the host, used when it was compiled for this guest's
    /// engine and CPU (the same fingerprint); otherwise the guest compiles.
    #[serde(default)]
    pub compiled: Option<Precompiled>,
}

/// Compiled code offered by the host.
#[derive(Serialize, Deserialize)]
pub struct Precompiled {
    /// The fingerprint of the engine (and CPU) it was compiled for.
    pub fingerprint: String,
    /// The code, base64.
    pub code_base64: String,
}

/// An answer of the agent's.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Answer {
    /// The module is compiled and the job started.
    Started {
        /// Time the compilation took, ms.
        compile_ms: u64,
    },
    /// The job ended.
    End(Box<Ended>),
    /// The answer to a ping.
    Pong {
        /// Time since the guest kernel started, ms.
        uptime_ms: u64,
    },
    /// The request was refused.
    Error {
        /// Why.
        error: String,
    },
}

/// How a job in the guest ended, run with the same runner, limits and outcome mapping as
/// `wafer worker`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ended {
    /// The job's end.
    pub end: JobEnd,
    /// Its output, base64.
    pub output_base64: String,
    /// Time the compilation took, ms.
    pub compile_ms: u64,
    /// Time the run took, ms.
    pub run_ms: u64,
    /// The guest engine's fingerprint (engine and CPU).
    pub fingerprint: String,
    /// The fingerprint of the compiled code the host offered, if any.
    pub offered_fingerprint: Option<String>,
    /// Whether the host's compiled code was used.
    pub precompiled: bool,
}
